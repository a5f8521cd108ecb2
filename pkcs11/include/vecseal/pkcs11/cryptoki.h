// A thin, 1:1 layer over Cryptoki: a loaded module, a session and an object handle, each
// move-only and released by its destructor. Nothing here retries, caches or logs; policy
// (token choice, login, recovery, key layout) lives in hsm.h.
#pragma once

#include <p11-kit/pkcs11.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vecseal/core/status.h"

namespace vecseal::pkcs11 {

// "CKR_PIN_INCORRECT" for CKR_PIN_INCORRECT; "CKR_VENDOR_DEFINED" or "CKR_UNKNOWN" for codes
// outside PKCS#11 v3.0 (CkrSentence then gives the number).
std::string_view CkrName(CK_RV rv);
// A plain sentence for people, e.g. "the user PIN is wrong".
std::string CkrSentence(CK_RV rv);

// True for the codes after which reopening the session (and logging in again) may succeed:
// CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED, CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED,
// CKR_TOKEN_NOT_PRESENT, CKR_USER_NOT_LOGGED_IN (and CKR_DEVICE_MEMORY,
// CKR_CRYPTOKI_NOT_INITIALIZED, CKR_SESSION_COUNT, CKR_SLOT_ID_INVALID).
bool IsRecoverable(CK_RV rv);

// True for the codes that say the device itself is missing or failing (CKR_DEVICE_ERROR,
// CKR_DEVICE_REMOVED, CKR_DEVICE_MEMORY, CKR_TOKEN_NOT_PRESENT): a C_Initialize failing with one
// of them may succeed later, unlike one failing for the module's own configuration.
bool IsDeviceAbsent(CK_RV rv);

// A Status for a failed Cryptoki call: kUnavailable/"hsm_unavailable" for recoverable codes,
// kUnavailable/"hsm_error" otherwise. The message names the function and the code, e.g.
// "C_Sign failed: CKR_DEVICE_ERROR (the device reported an error)". rv must not be CKR_OK.
Status CkrStatus(std::string_view function, CK_RV rv);

// The Cryptoki calls that cost the HSM work or a round trip, counted per module for /metrics, so
// that what a request costs the HSM can be measured rather than assumed.
enum class HsmCall : uint8_t {
  kOpenSession,
  kLogin,
  kFindObjectsInit,
  kSignInit,
  kSign,
  kEncryptInit,
  kEncrypt,
  kEncryptUpdate,
  kEncryptFinal,
  kGenerateKey,
  kGenerateKeyPair,
  kCount
};
std::string_view HsmCallName(HsmCall call);  // the Cryptoki function's name, e.g. "C_EncryptInit"

class HsmCallCounts {
 public:
  void Add(HsmCall call) { counts_[Index(call)].fetch_add(1, std::memory_order_relaxed); }
  uint64_t Get(HsmCall call) const { return counts_[Index(call)].load(std::memory_order_relaxed); }

 private:
  static size_t Index(HsmCall call) { return static_cast<size_t>(call); }
  std::array<std::atomic<uint64_t>, static_cast<size_t>(HsmCall::kCount)> counts_{};
};

// One dlopen()ed PKCS#11 module, initialised by us with CKF_OS_LOCKING_OK and finalised and
// unloaded when the last owner lets go. Sessions hold the function list, not the Module, so the
// Module must outlive every Session made from it (Hsm guarantees that).
class Module {
 public:
  // Loads `path` (an absolute path to a .so), calls C_GetFunctionList and C_Initialize.
  // A module that another component of this process already initialised
  // (CKR_CRYPTOKI_ALREADY_INITIALIZED) is refused: we would not own its lifetime. Errors are
  // kUnavailable "hsm_module_unloadable", except a C_Initialize that fails with a device code
  // (IsDeviceAbsent): kUnavailable "hsm_unavailable", since the module may work once the device
  // is back.
  static Result<Module> Load(const std::string& path);

  Module() = default;
  ~Module();
  Module(Module&& other) noexcept;
  Module& operator=(Module&& other) noexcept;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  CK_FUNCTION_LIST_PTR functions() const { return functions_; }
  const std::string& path() const { return path_; }
  // Shared with every Session opened from this module; stable across moves.
  HsmCallCounts* calls() const { return calls_.get(); }

  // C_Finalize and C_Initialize again, for a module whose state broke for good: p11-kit-client.so
  // never reconnects after its server went away. Only when no other Module shares this
  // initialisation and the module survives it (not opencryptoki): else kFailedPrecondition.
  // Every session and object handle of the old initialisation is void afterwards; forget them
  // (Session::Forget, Object::Release), never close them: the numbers may be reused.
  Status Reinitialize();

  // The slot whose token carries `label` (compared after trimming the blank padding).
  // kNotFound "token_not_found" when none does; kFailedPrecondition "token_label_ambiguous" when
  // several do.
  Result<CK_SLOT_ID> FindTokenSlot(std::string_view label) const;
  // Labels of every token present, trimmed; for error messages and `vecseal hsm status`.
  Result<std::vector<std::string>> TokenLabels() const;
  // Every slot, with or without a token (C_GetSlotList with tokenPresent false).
  Result<std::vector<CK_SLOT_ID>> AllSlots() const;
  // C_GetTokenInfo; fails for a slot without a token.
  Result<CK_TOKEN_INFO> TokenInfo(CK_SLOT_ID slot) const;
  // C_InitToken: (re)initialises the token in `slot` with `so_pin` and `label` (at most 32
  // bytes, padded with blanks here).
  Status InitToken(CK_SLOT_ID slot, std::span<const uint8_t> so_pin, std::string_view label) const;

 private:
  void Release();
  // C_GetSlotList, asked for the count first.
  Result<std::vector<CK_SLOT_ID>> SlotList(CK_BBOOL token_present) const;
  // What to check when the module shows no initialised token at all.
  std::string NoTokensHint() const;

  void* library_ = nullptr;
  CK_FUNCTION_LIST_PTR functions_ = nullptr;
  std::string path_;
  std::shared_ptr<HsmCallCounts> calls_ = std::make_shared<HsmCallCounts>();
};

// An attribute read back from an object: its type and raw value bytes.
struct Attribute {
  CK_ATTRIBUTE_TYPE type = 0;
  std::vector<uint8_t> value;
};

class Session;

// A handle to an object seen through one session. Owning handles (session objects such as the
// per-session key copies) destroy the object when released; non-owning handles (token objects)
// leave it on the token. Valid only while its session is open.
class Object {
 public:
  Object() = default;
  Object(CK_FUNCTION_LIST_PTR functions, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE handle,
         bool owned)
      : functions_(functions), session_(session), handle_(handle), owned_(owned) {}
  ~Object();
  Object(Object&& other) noexcept;
  Object& operator=(Object&& other) noexcept;
  Object(const Object&) = delete;
  Object& operator=(const Object&) = delete;

  CK_OBJECT_HANDLE handle() const { return handle_; }
  bool valid() const { return handle_ != CK_INVALID_HANDLE; }

  // Reads one attribute. CKR_ATTRIBUTE_SENSITIVE (e.g. CKA_VALUE of a model key) comes back
  // as kPermissionDenied "attribute_sensitive".
  Result<std::vector<uint8_t>> GetAttribute(CK_ATTRIBUTE_TYPE type) const;
  Result<bool> GetBool(CK_ATTRIBUTE_TYPE type) const;
  // Destroys the object on the token or in the session, whatever `owned`.
  Status Destroy();
  // Forgets the handle without destroying anything.
  CK_OBJECT_HANDLE Release();

 private:
  CK_FUNCTION_LIST_PTR functions_ = nullptr;
  CK_SESSION_HANDLE session_ = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE handle_ = CK_INVALID_HANDLE;
  bool owned_ = false;
};

// One Cryptoki session. Not thread-safe (Cryptoki sessions are not): callers serialise.
class Session {
 public:
  // Opens a serial session, read-write when `read_write`.
  static Result<Session> Open(const Module& module, CK_SLOT_ID slot, bool read_write);

  Session() = default;
  ~Session();
  Session(Session&& other) noexcept;
  Session& operator=(Session&& other) noexcept;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  CK_SESSION_HANDLE handle() const { return handle_; }
  CK_FUNCTION_LIST_PTR functions() const { return functions_; }
  bool valid() const { return handle_ != CK_INVALID_HANDLE; }

  // C_Login as CKU_USER. CKR_USER_ALREADY_LOGGED_IN counts as success (login state is shared by
  // every session of the application). The caller owns and wipes `pin`. Exactly one attempt:
  // CKR_PIN_INCORRECT is returned, never retried.
  Status Login(std::span<const uint8_t> pin);
  // The same, as the raw CK_RV (CKR_OK for an existing login), for callers that tell PIN errors
  // apart. A CKR_USER_ALREADY_LOGGED_IN for a session that is not logged in (a module's stale
  // login state) is answered with C_Logout and one more C_Login.
  CK_RV LoginRaw(std::span<const uint8_t> pin) const;
  Status Logout();
  // C_Login as CKU_SO, exactly once.
  Status LoginSecurityOfficer(std::span<const uint8_t> so_pin);
  // C_InitPIN: sets the user PIN; the session must be logged in as the SO.
  Status InitPin(std::span<const uint8_t> pin);
  // C_GetSessionInfo: cheap, and fails with a recoverable code when the token is gone.
  Result<CK_SESSION_INFO> Info() const;

  // Handles of every object matching `match` (C_FindObjectsInit/C_FindObjects/Final), as
  // non-owning Objects.
  Result<std::vector<Object>> Find(std::span<const CK_ATTRIBUTE> match) const;
  Result<Object> Create(std::span<const CK_ATTRIBUTE> attributes);
  Result<Object> GenerateKey(CK_MECHANISM_TYPE mechanism, std::span<const CK_ATTRIBUTE> attributes);
  // Returns {public, private}.
  Result<std::pair<Object, Object>> GenerateKeyPair(
      CK_MECHANISM_TYPE mechanism, std::span<const CK_ATTRIBUTE> public_attributes,
      std::span<const CK_ATTRIBUTE> private_attributes);
  // C_CopyObject; the copy is owned (destroyed with the Object) when `owned`.
  Result<Object> Copy(CK_OBJECT_HANDLE source, std::span<const CK_ATTRIBUTE> changes, bool owned);

  // C_SignInit + C_Sign. `signature` must be large enough; returns the length written. The
  // CK_MECHANISM form carries parameters (CKM_RSA_PKCS_PSS).
  Result<size_t> Sign(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE key,
                      std::span<const uint8_t> data, std::span<uint8_t> signature) const;
  Result<size_t> Sign(const CK_MECHANISM& mechanism, CK_OBJECT_HANDLE key,
                      std::span<const uint8_t> data, std::span<uint8_t> signature) const;
  // The raw CK_RV of C_SignInit + C_Sign, for the hot path that must not build a Status.
  CK_RV SignRaw(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE key, std::span<const uint8_t> data,
                std::span<uint8_t> signature, CK_ULONG* length) const;
  CK_RV SignRaw(const CK_MECHANISM& mechanism, CK_OBJECT_HANDLE key,
                std::span<const uint8_t> data, std::span<uint8_t> signature,
                CK_ULONG* length) const;
  // One encryption operation with a mechanism whose output is as long as its input (CKM_AES_ECB):
  // C_EncryptInit, then C_Encrypt when `data` is at most `max_part` bytes, else C_EncryptUpdate
  // per part of at most `max_part` bytes and C_EncryptFinal. out.size() == data.size(), and
  // max_part is a whole number of blocks. The raw CK_RV, as SignRaw; a wrong output length is
  // CKR_FUNCTION_FAILED.
  CK_RV EncryptRaw(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE key,
                   std::span<const uint8_t> data, std::span<uint8_t> out, size_t max_part) const;
  // The parts of EncryptRaw, for an operation kept open across calls: C_EncryptInit; one
  // C_EncryptUpdate per part of at most `max_part` bytes, each returning exactly its input's
  // length (else CKR_FUNCTION_FAILED); and C_EncryptFinal, which must return nothing.
  CK_RV EncryptInit(CK_MECHANISM_TYPE mechanism, CK_OBJECT_HANDLE key) const;
  CK_RV EncryptUpdate(std::span<const uint8_t> data, std::span<uint8_t> out,
                      size_t max_part) const;
  CK_RV EncryptFinal() const;

  // Closes now (the destructor does it otherwise); errors are ignored because the handle may
  // already be gone with the device.
  void Close();
  // Drops the handle without closing it: after Module::Reinitialize it may name another session.
  void Forget() { handle_ = CK_INVALID_HANDLE; }

 private:
  Session(CK_FUNCTION_LIST_PTR functions, HsmCallCounts* calls, CK_SESSION_HANDLE handle)
      : functions_(functions), calls_(calls), handle_(handle) {}
  void Count(HsmCall call) const {
    if (calls_ != nullptr) calls_->Add(call);
  }

  CK_FUNCTION_LIST_PTR functions_ = nullptr;
  HsmCallCounts* calls_ = nullptr;
  CK_SESSION_HANDLE handle_ = CK_INVALID_HANDLE;
};

}  // namespace vecseal::pkcs11
