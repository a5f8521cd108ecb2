#include "vecseal/pkcs11/cryptoki.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <utility>

namespace vecseal::pkcs11 {
namespace {

// Cryptoki's initialisation state is per process, so two Module objects for the same library
// must share one C_Initialize/C_Finalize pair. Keyed by the function list, not the dlopen handle:
// p11-kit-client.so hands out a new function list, a client of its own that needs its own
// C_Initialize, on every C_GetFunctionList; SoftHSM2 and most modules hand out the same one.
struct Initialised {
  size_t users = 0;
  // Left initialised (and loaded) when the last user lets go: the module does not survive a
  // second C_Initialize in one process (KeepsInitialised).
  bool keep = false;
};
std::mutex& RegistryMutex() {
  static std::mutex mutex;
  return mutex;
}
std::map<CK_FUNCTION_LIST_PTR, Initialised>& Registry() {
  static std::map<CK_FUNCTION_LIST_PTR, Initialised> registry;
  return registry;
}

// opencryptoki 3.8 (C_GetInfo: manufacturer "IBM", "Meta PKCS11 LIBRARY") faults in a second
// C_Initialize in the same process: the TPM token library it loads for slot 0 crashes in
// Fork_Initializer. vecseal opens a module again when it retries an HSM that did not answer at
// start, so such a module stays initialised until the process exits.
bool KeepsInitialised(CK_FUNCTION_LIST_PTR functions) {
  CK_INFO info{};
  if (functions->C_GetInfo(&info) != CKR_OK) return false;
  const std::string manufacturer(reinterpret_cast<const char*>(info.manufacturerID),
                                 sizeof info.manufacturerID);
  const std::string description(reinterpret_cast<const char*>(info.libraryDescription),
                                sizeof info.libraryDescription);
  return manufacturer.starts_with("IBM") && description.starts_with("Meta PKCS11 LIBRARY");
}

// Locking callbacks for a module that refuses CKF_OS_LOCKING_OK with CKR_CANT_LOCK (PKCS#11
// §5.4: it must then use the application's mutexes).
CK_RV CreateMutex(CK_VOID_PTR_PTR mutex) {
  if (mutex == nullptr) return CKR_ARGUMENTS_BAD;
  *mutex = new (std::nothrow) std::mutex;
  return *mutex != nullptr ? CKR_OK : CKR_HOST_MEMORY;
}
CK_RV DestroyMutex(CK_VOID_PTR mutex) {
  if (mutex == nullptr) return CKR_MUTEX_BAD;
  delete static_cast<std::mutex*>(mutex);
  return CKR_OK;
}
CK_RV LockMutex(CK_VOID_PTR mutex) {
  if (mutex == nullptr) return CKR_MUTEX_BAD;
  static_cast<std::mutex*>(mutex)->lock();
  return CKR_OK;
}
CK_RV UnlockMutex(CK_VOID_PTR mutex) {
  if (mutex == nullptr) return CKR_MUTEX_BAD;
  static_cast<std::mutex*>(mutex)->unlock();
  return CKR_OK;
}

std::string TrimLabel(const CK_UTF8CHAR* label, size_t size) {
  std::string text(reinterpret_cast<const char*>(label), size);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\0')) text.pop_back();
  return text;
}

// SoftHSM2 finds its tokens through SOFTHSM2_CONF, which the service unit sets and a shell
// started by hand does not: the most common reason it fails to start or shows no token.
// Empty for other modules.
std::string SoftHsmConfigHint(const std::string& module_path) {
  if (module_path.find("softhsm") == std::string::npos) return "";
  const char* conf = std::getenv("SOFTHSM2_CONF");
  if (conf == nullptr) {
    return "; SOFTHSM2_CONF is not set, so SoftHSM2 read its default configuration: set it to "
           "the token's (the unit sets SOFTHSM2_CONF=/etc/vecseal/softhsm2.conf; see "
           "docs/operations.md, \"Without systemd\")";
  }
  return "; SoftHSM2 read SOFTHSM2_CONF=" + std::string(conf) + ": check that uid " +
         std::to_string(geteuid()) + " may read it, and read and write its directories.tokendir";
}

Status ModuleError(const std::string& path, std::string detail) {
  return Status(Code::kUnavailable, "hsm_module_unloadable",
                "cannot load the PKCS#11 module " + path + ": " + detail);
}

// C_Initialize with CKF_OS_LOCKING_OK, or with our mutexes for a module that cannot lock.
CK_RV Initialize(CK_FUNCTION_LIST_PTR functions) {
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  CK_RV rv = functions->C_Initialize(&args);
  if (rv == CKR_CANT_LOCK) {
    args = CK_C_INITIALIZE_ARGS{CreateMutex, DestroyMutex, LockMutex, UnlockMutex, 0, nullptr};
    rv = functions->C_Initialize(&args);
  }
  return rv;
}

}  // namespace

// Module

Result<Module> Module::Load(const std::string& path) {
  if (path.empty() || path.front() != '/') {
    return ModuleError(path, "the module path must be absolute, so that no search path decides "
                             "which code holds the keys");
  }
  Module module;
  module.path_ = path;
  module.library_ = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (module.library_ == nullptr) {
    const char* error = dlerror();
    return ModuleError(path, error != nullptr ? error : "dlopen failed");
  }
  auto get_function_list =
      reinterpret_cast<CK_C_GetFunctionList>(dlsym(module.library_, "C_GetFunctionList"));
  if (get_function_list == nullptr) {
    return ModuleError(path, "it does not export C_GetFunctionList");
  }
  CK_FUNCTION_LIST_PTR functions = nullptr;
  if (CK_RV rv = get_function_list(&functions); rv != CKR_OK || functions == nullptr) {
    return ModuleError(path, "C_GetFunctionList failed: " + std::string(CkrName(rv)));
  }

  std::lock_guard lock(RegistryMutex());
  Initialised& initialised = Registry()[functions];
  if (initialised.users == 0 && !initialised.keep) {
    const CK_RV rv = Initialize(functions);
    if (rv != CKR_OK) {
      Registry().erase(functions);
      if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        return ModuleError(path, "another component of this process already initialised it");
      }
      const std::string detail =
          "C_Initialize failed: " + std::string(CkrName(rv)) + " (" + CkrSentence(rv) + ")";
      // A module that reports its device missing is installed right and may work once the
      // device is back; anything else (CKR_GENERAL_ERROR for a broken softhsm2.conf) will not.
      if (IsDeviceAbsent(rv)) {
        return Status(Code::kUnavailable, "hsm_unavailable",
                      "cannot initialise the PKCS#11 module " + path + ": " + detail);
      }
      return ModuleError(path, detail + (rv == CKR_GENERAL_ERROR ? SoftHsmConfigHint(path) : ""));
    }
    initialised.keep = KeepsInitialised(functions);
  }
  ++initialised.users;
  module.functions_ = functions;
  return module;
}

Module::~Module() { Release(); }

Module::Module(Module&& other) noexcept
    : library_(std::exchange(other.library_, nullptr)),
      functions_(std::exchange(other.functions_, nullptr)),
      path_(std::move(other.path_)),
      calls_(other.calls_) {}

Module& Module::operator=(Module&& other) noexcept {
  if (this != &other) {
    Release();
    library_ = std::exchange(other.library_, nullptr);
    functions_ = std::exchange(other.functions_, nullptr);
    path_ = std::move(other.path_);
    calls_ = other.calls_;
  }
  return *this;
}

void Module::Release() {
  if (library_ == nullptr) return;
  if (functions_ != nullptr) {
    std::lock_guard lock(RegistryMutex());
    auto it = Registry().find(functions_);
    if (it != Registry().end() && --it->second.users == 0 && !it->second.keep) {
      functions_->C_Finalize(nullptr);
      Registry().erase(it);
    } else if (it != Registry().end() && it->second.keep) {
      library_ = nullptr;  // stays loaded for the next Load: no dlclose
      functions_ = nullptr;
      return;
    }
  }
  dlclose(library_);
  library_ = nullptr;
  functions_ = nullptr;
}

Status Module::Reinitialize() {
  if (functions_ == nullptr) return ModuleError(path_, "not loaded");
  std::lock_guard lock(RegistryMutex());
  auto it = Registry().find(functions_);
  if (it == Registry().end() || it->second.users != 1 || it->second.keep) {
    return Status(Code::kFailedPrecondition, "hsm_error",
                  "the PKCS#11 module " + path_ + " cannot be initialised again here");
  }
  functions_->C_Finalize(nullptr);
  const CK_RV rv = Initialize(functions_);
  return rv == CKR_OK ? Status::Ok() : CkrStatus("C_Initialize", rv);
}

Result<std::vector<std::string>> Module::TokenLabels() const {
  auto slots = SlotList(CK_TRUE);
  if (!slots.ok()) return std::move(slots).TakeStatus();
  std::vector<std::string> labels;
  for (CK_SLOT_ID slot : *slots) {
    CK_TOKEN_INFO info{};
    if (functions_->C_GetTokenInfo(slot, &info) != CKR_OK) continue;  // removed meanwhile
    if ((info.flags & CKF_TOKEN_INITIALIZED) == 0) continue;
    labels.push_back(TrimLabel(info.label, sizeof info.label));
  }
  return labels;
}

std::string Module::NoTokensHint() const {
  const std::string softhsm = SoftHsmConfigHint(path_);
  if (!softhsm.empty()) return softhsm;
  return "; the module shows uid " + std::to_string(geteuid()) +
         " no initialised token: check its configuration and that user's access to it";
}

Result<CK_SLOT_ID> Module::FindTokenSlot(std::string_view label) const {
  auto slots = SlotList(CK_TRUE);
  if (!slots.ok()) return std::move(slots).TakeStatus();
  std::vector<CK_SLOT_ID> matches;
  std::string present;
  for (CK_SLOT_ID slot : *slots) {
    CK_TOKEN_INFO info{};
    if (functions_->C_GetTokenInfo(slot, &info) != CKR_OK) continue;
    if ((info.flags & CKF_TOKEN_INITIALIZED) == 0) continue;
    std::string token_label = TrimLabel(info.label, sizeof info.label);
    if (token_label == label) matches.push_back(slot);
    present += (present.empty() ? "\"" : ", \"") + token_label + "\"";
  }
  if (matches.size() > 1) {
    return Status(Code::kFailedPrecondition, "token_label_ambiguous",
                  std::to_string(matches.size()) + " tokens carry the label \"" +
                      std::string(label) + "\"; give each token a unique label");
  }
  if (matches.empty()) {
    return Status(Code::kNotFound, "token_not_found",
                  "no token labelled \"" + std::string(label) + "\" in " + path_ +
                      " (tokens present: " + (present.empty() ? "none" : present) + ")" +
                      (present.empty() ? NoTokensHint() : ""));
  }
  return matches.front();
}

Result<std::vector<CK_SLOT_ID>> Module::SlotList(CK_BBOOL token_present) const {
  CK_ULONG count = 0;
  if (CK_RV rv = functions_->C_GetSlotList(token_present, nullptr, &count); rv != CKR_OK) {
    return CkrStatus("C_GetSlotList", rv);
  }
  std::vector<CK_SLOT_ID> slots(count);
  if (CK_RV rv = functions_->C_GetSlotList(token_present, slots.data(), &count); rv != CKR_OK) {
    return CkrStatus("C_GetSlotList", rv);
  }
  slots.resize(count);
  return slots;
}

Result<std::vector<CK_SLOT_ID>> Module::AllSlots() const { return SlotList(CK_FALSE); }

Result<CK_TOKEN_INFO> Module::TokenInfo(CK_SLOT_ID slot) const {
  CK_TOKEN_INFO info{};
  if (CK_RV rv = functions_->C_GetTokenInfo(slot, &info); rv != CKR_OK) {
    return CkrStatus("C_GetTokenInfo", rv);
  }
  return info;
}

Status Module::InitToken(CK_SLOT_ID slot, std::span<const uint8_t> so_pin,
                         std::string_view label) const {
  std::array<CK_UTF8CHAR, 32> padded{};
  if (label.size() > padded.size()) {
    return Status(Code::kInvalidArgument, "invalid_token_label",
                  "a token label is at most 32 bytes");
  }
  padded.fill(' ');
  std::memcpy(padded.data(), label.data(), label.size());
  // Cryptoki takes a non-const pointer but does not write through it.
  auto pin_data = const_cast<CK_UTF8CHAR_PTR>(so_pin.data());
  CK_RV rv = functions_->C_InitToken(slot, pin_data, so_pin.size(), padded.data());
  return rv == CKR_OK ? Status::Ok() : CkrStatus("C_InitToken", rv);
}

// Object

Object::~Object() {
  if (owned_ && handle_ != CK_INVALID_HANDLE) functions_->C_DestroyObject(session_, handle_);
}

Object::Object(Object&& other) noexcept
    : functions_(other.functions_),
      session_(other.session_),
      handle_(std::exchange(other.handle_, CK_INVALID_HANDLE)),
      owned_(std::exchange(other.owned_, false)) {}

Object& Object::operator=(Object&& other) noexcept {
  if (this != &other) {
    if (owned_ && handle_ != CK_INVALID_HANDLE) functions_->C_DestroyObject(session_, handle_);
    functions_ = other.functions_;
    session_ = other.session_;
    handle_ = std::exchange(other.handle_, CK_INVALID_HANDLE);
    owned_ = std::exchange(other.owned_, false);
  }
  return *this;
}

Result<std::vector<uint8_t>> Object::GetAttribute(CK_ATTRIBUTE_TYPE type) const {
  CK_ATTRIBUTE attribute{type, nullptr, 0};
  CK_RV rv = functions_->C_GetAttributeValue(session_, handle_, &attribute, 1);
  if (rv == CKR_ATTRIBUTE_SENSITIVE ||
      (rv == CKR_OK && attribute.ulValueLen == CK_UNAVAILABLE_INFORMATION)) {
    return Status(Code::kPermissionDenied, "attribute_sensitive",
                  "the token refuses to reveal this attribute (CKR_ATTRIBUTE_SENSITIVE)");
  }
  if (rv != CKR_OK) return CkrStatus("C_GetAttributeValue", rv);
  std::vector<uint8_t> value(attribute.ulValueLen);
  attribute.pValue = value.data();
  rv = functions_->C_GetAttributeValue(session_, handle_, &attribute, 1);
  if (rv != CKR_OK) return CkrStatus("C_GetAttributeValue", rv);
  value.resize(attribute.ulValueLen);
  return value;
}

Result<bool> Object::GetBool(CK_ATTRIBUTE_TYPE type) const {
  auto value = GetAttribute(type);
  if (!value.ok()) return std::move(value).TakeStatus();
  if (value->size() != sizeof(CK_BBOOL)) {
    return Status(Code::kInternal, "hsm_error", "a boolean attribute has the wrong size");
  }
  return value->front() != CK_FALSE;
}

Status Object::Destroy() {
  CK_RV rv = functions_->C_DestroyObject(session_, handle_);
  handle_ = CK_INVALID_HANDLE;
  owned_ = false;
  return rv == CKR_OK ? Status::Ok() : CkrStatus("C_DestroyObject", rv);
}

CK_OBJECT_HANDLE Object::Release() {
  owned_ = false;
  return std::exchange(handle_, CK_INVALID_HANDLE);
}

// Session

Result<Session> Session::Open(const Module& module, CK_SLOT_ID slot, bool read_write) {
  CK_FLAGS flags = CKF_SERIAL_SESSION | (read_write ? CKF_RW_SESSION : 0);
  CK_SESSION_HANDLE handle = CK_INVALID_HANDLE;
  module.calls()->Add(HsmCall::kOpenSession);
  CK_RV rv = module.functions()->C_OpenSession(slot, flags, nullptr, nullptr, &handle);
  if (rv != CKR_OK) return CkrStatus("C_OpenSession", rv);
  return Session(module.functions(), module.calls(), handle);
}

Session::~Session() { Close(); }

Session::Session(Session&& other) noexcept
    : functions_(other.functions_),
      calls_(other.calls_),
      handle_(std::exchange(other.handle_, CK_INVALID_HANDLE)) {}

Session& Session::operator=(Session&& other) noexcept {
  if (this != &other) {
    Close();
    functions_ = other.functions_;
    calls_ = other.calls_;
    handle_ = std::exchange(other.handle_, CK_INVALID_HANDLE);
  }
  return *this;
}

void Session::Close() {
  if (handle_ != CK_INVALID_HANDLE) functions_->C_CloseSession(handle_);
  handle_ = CK_INVALID_HANDLE;
}

CK_RV Session::LoginRaw(std::span<const uint8_t> pin) const {
  // Cryptoki takes a non-const pointer but does not write through it.
  auto pin_data = const_cast<CK_UTF8CHAR_PTR>(pin.data());
  Count(HsmCall::kLogin);
  CK_RV rv = functions_->C_Login(handle_, CKU_USER, pin_data, pin.size());
  if (rv == CKR_USER_ALREADY_LOGGED_IN) {
    // Login state is per application, but a module may keep a stale one: opencryptoki 3.8,
    // after every session was closed (C_CloseAllSessions), answers CKR_USER_ALREADY_LOGGED_IN
    // while the new session is public. Trust the session's state; when they disagree, log out
    // and in once.
    CK_SESSION_INFO info{};
    if (functions_->C_GetSessionInfo(handle_, &info) == CKR_OK &&
        info.state != CKS_RO_USER_FUNCTIONS && info.state != CKS_RW_USER_FUNCTIONS) {
      functions_->C_Logout(handle_);
      Count(HsmCall::kLogin);
      rv = functions_->C_Login(handle_, CKU_USER, pin_data, pin.size());
    }
  }
  return rv == CKR_USER_ALREADY_LOGGED_IN ? CKR_OK : rv;
}

Status Session::Login(std::span<const uint8_t> pin) {
  const CK_RV rv = LoginRaw(pin);
  return rv == CKR_OK ? Status::Ok() : CkrStatus("C_Login", rv);
}

Status Session::Logout() {
  CK_RV rv = functions_->C_Logout(handle_);
  return rv == CKR_OK || rv == CKR_USER_NOT_LOGGED_IN ? Status::Ok() : CkrStatus("C_Logout", rv);
}

Status Session::LoginSecurityOfficer(std::span<const uint8_t> so_pin) {
  auto pin_data = const_cast<CK_UTF8CHAR_PTR>(so_pin.data());
  Count(HsmCall::kLogin);
  CK_RV rv = functions_->C_Login(handle_, CKU_SO, pin_data, so_pin.size());
  return rv == CKR_OK ? Status::Ok() : CkrStatus("C_Login", rv);
}

Status Session::InitPin(std::span<const uint8_t> pin) {
  auto pin_data = const_cast<CK_UTF8CHAR_PTR>(pin.data());
  CK_RV rv = functions_->C_InitPIN(handle_, pin_data, pin.size());
  return rv == CKR_OK ? Status::Ok() : CkrStatus("C_InitPIN", rv);
}

Result<CK_SESSION_INFO> Session::Info() const {
  CK_SESSION_INFO info{};
  if (CK_RV rv = functions_->C_GetSessionInfo(handle_, &info); rv != CKR_OK) {
    return CkrStatus("C_GetSessionInfo", rv);
  }
  return info;
}

Result<std::vector<Object>> Session::Find(std::span<const CK_ATTRIBUTE> match) const {
  Count(HsmCall::kFindObjectsInit);
  CK_RV rv = functions_->C_FindObjectsInit(handle_, const_cast<CK_ATTRIBUTE_PTR>(match.data()),
                                           match.size());
  if (rv != CKR_OK) return CkrStatus("C_FindObjectsInit", rv);
  std::vector<Object> objects;
  std::array<CK_OBJECT_HANDLE, 64> batch{};
  for (;;) {
    CK_ULONG found = 0;
    rv = functions_->C_FindObjects(handle_, batch.data(), batch.size(), &found);
    if (rv != CKR_OK) {
      functions_->C_FindObjectsFinal(handle_);
      return CkrStatus("C_FindObjects", rv);
    }
    // A module that claims more than the buffer holds is not believed past the buffer.
    found = std::min<CK_ULONG>(found, batch.size());
    for (CK_ULONG i = 0; i < found; ++i) objects.emplace_back(functions_, handle_, batch[i], false);
    if (found < batch.size()) break;
  }
  rv = functions_->C_FindObjectsFinal(handle_);
  if (rv != CKR_OK) return CkrStatus("C_FindObjectsFinal", rv);
  return objects;
}

Result<Object> Session::Create(std::span<const CK_ATTRIBUTE> attributes) {
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  CK_RV rv = functions_->C_CreateObject(
      handle_, const_cast<CK_ATTRIBUTE_PTR>(attributes.data()), attributes.size(), &handle);
  if (rv != CKR_OK) return CkrStatus("C_CreateObject", rv);
  return Object(functions_, handle_, handle, false);
}

Result<Object> Session::GenerateKey(CK_MECHANISM_TYPE mechanism,
                                    std::span<const CK_ATTRIBUTE> attributes) {
  CK_MECHANISM mech{mechanism, nullptr, 0};
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  Count(HsmCall::kGenerateKey);
  CK_RV rv = functions_->C_GenerateKey(
      handle_, &mech, const_cast<CK_ATTRIBUTE_PTR>(attributes.data()), attributes.size(), &handle);
  if (rv != CKR_OK) return CkrStatus("C_GenerateKey", rv);
  return Object(functions_, handle_, handle, false);
}

Result<std::pair<Object, Object>> Session::GenerateKeyPair(
    CK_MECHANISM_TYPE mechanism, std::span<const CK_ATTRIBUTE> public_attributes,
    std::span<const CK_ATTRIBUTE> private_attributes) {
  CK_MECHANISM mech{mechanism, nullptr, 0};
  CK_OBJECT_HANDLE public_key = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE private_key = CK_INVALID_HANDLE;
  Count(HsmCall::kGenerateKeyPair);
  CK_RV rv = functions_->C_GenerateKeyPair(
      handle_, &mech, const_cast<CK_ATTRIBUTE_PTR>(public_attributes.data()),
      public_attributes.size(), const_cast<CK_ATTRIBUTE_PTR>(private_attributes.data()),
      private_attributes.size(), &public_key, &private_key);
  if (rv != CKR_OK) return CkrStatus("C_GenerateKeyPair", rv);
  return std::pair(Object(functions_, handle_, public_key, false),
                   Object(functions_, handle_, private_key, false));
}

Result<Object> Session::Copy(CK_OBJECT_HANDLE source, std::span<const CK_ATTRIBUTE> changes,
                             bool owned) {
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  CK_RV rv = functions_->C_CopyObject(
      handle_, source, const_cast<CK_ATTRIBUTE_PTR>(changes.data()), changes.size(), &handle);
  if (rv != CKR_OK) return CkrStatus("C_CopyObject", rv);
  return Object(functions_, handle_, handle, owned);
}

CK_RV Session::SignRaw(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE key,
                       std::span<const uint8_t> data, std::span<uint8_t> signature,
                       CK_ULONG* length) const {
  const CK_MECHANISM mech{mechanism, nullptr, 0};
  return SignRaw(mech, key, data, signature, length);
}

CK_RV Session::SignRaw(const CK_MECHANISM& mechanism, CK_OBJECT_HANDLE key,
                       std::span<const uint8_t> data, std::span<uint8_t> signature,
                       CK_ULONG* length) const {
  Count(HsmCall::kSignInit);
  CK_RV rv = functions_->C_SignInit(handle_, const_cast<CK_MECHANISM_PTR>(&mechanism), key);
  if (rv != CKR_OK) return rv;
  *length = signature.size();
  Count(HsmCall::kSign);
  return functions_->C_Sign(handle_, const_cast<CK_BYTE_PTR>(data.data()), data.size(),
                            signature.data(), length);
}

CK_RV Session::EncryptRaw(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE key,
                          std::span<const uint8_t> data, std::span<uint8_t> out,
                          size_t max_part) const {
  if (out.size() != data.size() || max_part == 0) return CKR_ARGUMENTS_BAD;
  CK_RV rv = EncryptInit(mechanism, key);
  if (rv != CKR_OK) return rv;
  if (data.size() <= max_part) {
    CK_ULONG length = out.size();
    Count(HsmCall::kEncrypt);
    rv = functions_->C_Encrypt(handle_, const_cast<CK_BYTE_PTR>(data.data()), data.size(),
                               out.data(), &length);
    if (rv == CKR_OK && length != out.size()) rv = CKR_FUNCTION_FAILED;
  } else {
    rv = EncryptUpdate(data, out, max_part);
    if (rv == CKR_OK) return EncryptFinal();
  }
  // A session that is not thrown away after a failure (the Hsm's anchor) must not keep an
  // operation active, or its next operation fails with CKR_OPERATION_ACTIVE.
  if (rv != CKR_OK) (void)EncryptFinal();
  return rv;
}

CK_RV Session::EncryptInit(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE key) const {
  CK_MECHANISM mech{mechanism, nullptr, 0};
  Count(HsmCall::kEncryptInit);
  return functions_->C_EncryptInit(handle_, &mech, key);
}

CK_RV Session::EncryptUpdate(std::span<const uint8_t> data, std::span<uint8_t> out,
                             size_t max_part) const {
  if (out.size() != data.size() || max_part == 0) return CKR_ARGUMENTS_BAD;
  auto* input = const_cast<CK_BYTE_PTR>(data.data());
  for (size_t done = 0; done < data.size(); done += max_part) {
    const size_t part = std::min(max_part, data.size() - done);
    CK_ULONG length = part;
    Count(HsmCall::kEncryptUpdate);
    const CK_RV rv =
        functions_->C_EncryptUpdate(handle_, input + done, part, out.data() + done, &length);
    if (rv != CKR_OK) return rv;  // the module has ended the operation
    // A module that held back ECB blocks would shift every later seed. The operation is left
    // open; callers discard a session after any failure.
    if (length != part) return CKR_FUNCTION_FAILED;
  }
  return CKR_OK;
}

CK_RV Session::EncryptFinal() const {
  uint8_t tail[16];
  CK_ULONG length = sizeof(tail);
  Count(HsmCall::kEncryptFinal);
  const CK_RV rv = functions_->C_EncryptFinal(handle_, tail, &length);
  return rv == CKR_OK && length != 0 ? CKR_FUNCTION_FAILED : rv;
}

Result<size_t> Session::Sign(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE key,
                             std::span<const uint8_t> data, std::span<uint8_t> signature) const {
  const CK_MECHANISM mech{mechanism, nullptr, 0};
  return Sign(mech, key, data, signature);
}

Result<size_t> Session::Sign(const CK_MECHANISM& mechanism, CK_OBJECT_HANDLE key,
                             std::span<const uint8_t> data, std::span<uint8_t> signature) const {
  CK_ULONG length = 0;
  CK_RV rv = SignRaw(mechanism, key, data, signature, &length);
  if (rv != CKR_OK) return CkrStatus("C_Sign", rv);
  return static_cast<size_t>(length);
}

}  // namespace vecseal::pkcs11
