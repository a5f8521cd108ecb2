// A PKCS#11 module for tests that forwards to a real one (SoftHSM2) and fails chosen calls on
// command, so that recovery can be proven against faults a real token cannot be made to raise.
//
//   VECSEAL_FAULTY_REAL_MODULE  the module to forward to (default: SoftHSM2's)
//   VECSEAL_FAULTY_CONTROL      a file re-read whenever it changes (inode, size or mtime), one
//                               command per line:
//     C_Sign CKR_DEVICE_ERROR     every C_Sign fails with CKR_DEVICE_ERROR
//     C_Sign CKR_DEVICE_ERROR 2   the next two C_Sign calls fail
//     C_Sign CKR_DEVICE_ERROR 1 after 3   the fourth C_Sign fails (three go through first)
//     down [CKR_...]              every call fails (default CKR_DEVICE_REMOVED)
//     up                          nothing fails (also: an empty or missing file)
//     close-sessions              once, when read: closes every session in the real module
//     stale-closes PATH           appends a line to PATH for every C_CloseSession of a session
//                                 that close-sessions dropped and no C_OpenSession reissued: a
//                                 module that reuses numbers (opencryptoki) would close a new one
//     slow C_Sign 500             every C_Sign waits 500 ms, then goes through (a slow HSM)
//     delay 500                   every call waits 500 µs first: a network HSM's round trip
//     refuse-os-locking           C_Initialize with CKF_OS_LOCKING_OK fails with CKR_CANT_LOCK
//                                 (read when C_Initialize runs)
//     max-data 4096               C_Encrypt and C_EncryptUpdate of more than 4096 bytes fail
//                                 with CKR_DATA_LEN_RANGE (a module's limit per call)
//     refuse-attribute 0x171      C_GenerateKey and C_GenerateKeyPair with that attribute type
//                                 (here CKA_COPYABLE) fail with CKR_ATTRIBUTE_TYPE_INVALID
// Read by several processes at once (a test and the vecseald it runs) without coordination:
// writers replace the file with rename(2).
#include <dlfcn.h>
#include <p11-kit/pkcs11.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>

namespace {

struct Rule {
  CK_RV rv = CKR_OK;
  long remaining = -1;  // -1: forever
  long passing = 0;     // calls that go through before the failures start
};

struct Faults {
  std::mutex mutex;
  std::string control_path;
  struct stat seen {};
  bool have_seen = false;
  bool down = false;
  CK_RV down_rv = CKR_DEVICE_REMOVED;
  std::map<std::string, Rule> rules;
  std::map<std::string, long> delays_ms;
  long delay_us = 0;
  bool refuse_os_locking = false;
  unsigned long max_data = 0;  // 0: no limit
  std::set<CK_ATTRIBUTE_TYPE> refused_attributes;
  std::set<CK_SLOT_ID> slots;
  std::set<CK_SESSION_HANDLE> open_sessions;
  std::set<CK_SESSION_HANDLE> dropped_sessions;
  std::string stale_close_log;
};

CK_FUNCTION_LIST_PTR g_real = nullptr;
CK_FUNCTION_LIST g_list;
Faults g_faults;

CK_RV ParseCkr(const std::string& name) {
  static const std::map<std::string, CK_RV> kCodes = {
      {"CKR_GENERAL_ERROR", CKR_GENERAL_ERROR},
      {"CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED},
      {"CKR_DEVICE_ERROR", CKR_DEVICE_ERROR},
      {"CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY},
      {"CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED},
      {"CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT},
      {"CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID},
      {"CKR_SESSION_CLOSED", CKR_SESSION_CLOSED},
      {"CKR_SESSION_COUNT", CKR_SESSION_COUNT},
      {"CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN},
      {"CKR_PIN_INCORRECT", CKR_PIN_INCORRECT},
      {"CKR_PIN_LOCKED", CKR_PIN_LOCKED},
      {"CKR_KEY_HANDLE_INVALID", CKR_KEY_HANDLE_INVALID},
      {"CKR_HOST_MEMORY", CKR_HOST_MEMORY},
      {"CKR_MECHANISM_INVALID", CKR_MECHANISM_INVALID},
      {"CKR_OPERATION_NOT_INITIALIZED", CKR_OPERATION_NOT_INITIALIZED},
  };
  if (auto it = kCodes.find(name); it != kCodes.end()) return it->second;
  return std::strtoul(name.c_str(), nullptr, 0);  // a number, e.g. 0x80000001
}

// Re-reads the control file if it changed; called with the mutex held. Its identity and its
// text come from one open descriptor: a stat() of the path, then an open of it, could pair one
// file's identity with the next one's text when a test replaces the file twice in a row, and
// read that text a second time, restarting its counts (a second "C_Sign CKR_DEVICE_ERROR 1").
void RefreshLocked() {
  if (g_faults.control_path.empty()) return;
  struct stat now {};
  const int fd = open(g_faults.control_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || fstat(fd, &now) != 0) {
    if (fd >= 0) close(fd);
    if (g_faults.have_seen) {
      g_faults.have_seen = false;
      g_faults.down = false;
      g_faults.rules.clear();
      g_faults.delays_ms.clear();
      g_faults.delay_us = 0;
      g_faults.refuse_os_locking = false;
      g_faults.max_data = 0;
      g_faults.refused_attributes.clear();
      g_faults.stale_close_log.clear();
    }
    return;
  }
  if (g_faults.have_seen && now.st_ino == g_faults.seen.st_ino &&
      now.st_size == g_faults.seen.st_size &&
      now.st_mtim.tv_sec == g_faults.seen.st_mtim.tv_sec &&
      now.st_mtim.tv_nsec == g_faults.seen.st_mtim.tv_nsec) {
    close(fd);
    return;
  }
  std::string text;
  char buffer[4096];
  for (ssize_t n; (n = read(fd, buffer, sizeof buffer)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  g_faults.seen = now;
  g_faults.have_seen = true;
  g_faults.down = false;
  g_faults.rules.clear();
  g_faults.delays_ms.clear();
  g_faults.delay_us = 0;
  g_faults.refuse_os_locking = false;
  g_faults.max_data = 0;
  g_faults.refused_attributes.clear();
  g_faults.stale_close_log.clear();
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string command, code;
    long count = -1;
    words >> command;
    if (command.empty() || command[0] == '#' || command == "up") continue;
    if (command == "down") {
      g_faults.down = true;
      if (words >> code) g_faults.down_rv = ParseCkr(code);
      else g_faults.down_rv = CKR_DEVICE_REMOVED;
    } else if (command == "slow") {
      std::string function;
      long milliseconds = 0;
      if (words >> function >> milliseconds) g_faults.delays_ms[function] = milliseconds;
    } else if (command == "delay") {
      long microseconds = 0;
      if (words >> microseconds && microseconds > 0) g_faults.delay_us = microseconds;
    } else if (command == "refuse-os-locking") {
      g_faults.refuse_os_locking = true;
    } else if (command == "max-data") {
      words >> g_faults.max_data;
    } else if (command == "refuse-attribute") {
      std::string type;
      if (words >> type) g_faults.refused_attributes.insert(std::strtoul(type.c_str(), nullptr, 0));
    } else if (command == "stale-closes") {
      words >> g_faults.stale_close_log;
    } else if (command == "close-sessions") {
      for (CK_SLOT_ID slot : g_faults.slots) g_real->C_CloseAllSessions(slot);
      g_faults.dropped_sessions.merge(g_faults.open_sessions);
      g_faults.open_sessions.clear();
    } else if (words >> code) {
      if (!(words >> count)) count = -1;
      std::string after;
      long passing = 0;
      if (words >> after && after == "after") words >> passing;
      g_faults.rules[command] = Rule{ParseCkr(code), count, passing};
    }
  }
}

CK_RV Fault(const char* function) {
  std::unique_lock lock(g_faults.mutex);
  RefreshLocked();
  if (const long microseconds = g_faults.delay_us; microseconds > 0) {
    lock.unlock();  // round trips of concurrent sessions overlap, as on a network
    std::this_thread::sleep_for(std::chrono::microseconds(microseconds));
    lock.lock();
  }
  if (auto slow = g_faults.delays_ms.find(function); slow != g_faults.delays_ms.end()) {
    const long milliseconds = slow->second;
    lock.unlock();  // other calls are not held up by this one's wait
    std::this_thread::sleep_for(std::chrono::milliseconds(milliseconds));
    lock.lock();
  }
  if (g_faults.down) return g_faults.down_rv;
  auto it = g_faults.rules.find(function);
  if (it == g_faults.rules.end() || it->second.remaining == 0) return CKR_OK;
  if (it->second.passing > 0) {
    --it->second.passing;
    return CKR_OK;
  }
  if (it->second.remaining > 0) --it->second.remaining;
  return it->second.rv;
}

#define VECSEAL_FAULTY(name, params, args)                   \
  CK_RV Faulty_##name params {                               \
    if (CK_RV fault = Fault(#name); fault != CKR_OK) return fault; \
    return g_real->name args;                                \
  }

CK_RV Faulty_C_Initialize(CK_VOID_PTR init_args) {
  {
    std::lock_guard lock(g_faults.mutex);
    const char* control = std::getenv("VECSEAL_FAULTY_CONTROL");
    g_faults.control_path = control != nullptr ? control : "";
    g_faults.have_seen = false;
    g_faults.down = false;
    g_faults.rules.clear();
    g_faults.slots.clear();
    g_faults.open_sessions.clear();
    g_faults.dropped_sessions.clear();
  }
  if (CK_RV fault = Fault("C_Initialize"); fault != CKR_OK) return fault;
  {
    std::lock_guard lock(g_faults.mutex);
    const auto* args = static_cast<const CK_C_INITIALIZE_ARGS*>(init_args);
    if (g_faults.refuse_os_locking && args != nullptr && (args->flags & CKF_OS_LOCKING_OK) != 0) {
      return CKR_CANT_LOCK;
    }
  }
  return g_real->C_Initialize(init_args);
}

bool TooLong(CK_ULONG size) {
  std::lock_guard lock(g_faults.mutex);
  return g_faults.max_data != 0 && size > g_faults.max_data;
}

bool RefusesAttribute(const CK_ATTRIBUTE* attributes, CK_ULONG count) {
  std::lock_guard lock(g_faults.mutex);
  for (CK_ULONG i = 0; i < count; ++i) {
    if (g_faults.refused_attributes.count(attributes[i].type) != 0) return true;
  }
  return false;
}

CK_RV Faulty_C_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR application,
                           CK_NOTIFY notify, CK_SESSION_HANDLE_PTR session) {
  if (CK_RV fault = Fault("C_OpenSession"); fault != CKR_OK) return fault;
  {
    std::lock_guard lock(g_faults.mutex);
    g_faults.slots.insert(slot);
  }
  const CK_RV rv = g_real->C_OpenSession(slot, flags, application, notify, session);
  if (rv == CKR_OK) {
    std::lock_guard lock(g_faults.mutex);
    g_faults.open_sessions.insert(*session);
    g_faults.dropped_sessions.erase(*session);
  }
  return rv;
}

CK_RV Faulty_C_CloseSession(CK_SESSION_HANDLE session) {
  if (CK_RV fault = Fault("C_CloseSession"); fault != CKR_OK) return fault;
  {
    std::lock_guard lock(g_faults.mutex);
    if (g_faults.dropped_sessions.count(session) != 0 && !g_faults.stale_close_log.empty()) {
      std::ofstream(g_faults.stale_close_log, std::ios::app)
          << "C_CloseSession of dropped session " << session << "\n";
    }
    g_faults.open_sessions.erase(session);
  }
  return g_real->C_CloseSession(session);
}

VECSEAL_FAULTY(C_GetSlotList, (CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count),
               (present, list, count))
VECSEAL_FAULTY(C_GetTokenInfo, (CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info), (slot, info))
VECSEAL_FAULTY(C_GetMechanismInfo,
               (CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info),
               (slot, type, info))
VECSEAL_FAULTY(C_GetSessionInfo, (CK_SESSION_HANDLE session, CK_SESSION_INFO_PTR info),
               (session, info))
VECSEAL_FAULTY(C_Login,
               (CK_SESSION_HANDLE session, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG size),
               (session, user, pin, size))
VECSEAL_FAULTY(C_Logout, (CK_SESSION_HANDLE session), (session))
VECSEAL_FAULTY(C_CreateObject,
               (CK_SESSION_HANDLE session, CK_ATTRIBUTE_PTR attributes, CK_ULONG count,
                CK_OBJECT_HANDLE_PTR object),
               (session, attributes, count, object))
VECSEAL_FAULTY(C_CopyObject,
               (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE source, CK_ATTRIBUTE_PTR attributes,
                CK_ULONG count, CK_OBJECT_HANDLE_PTR object),
               (session, source, attributes, count, object))
VECSEAL_FAULTY(C_DestroyObject, (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object),
               (session, object))
VECSEAL_FAULTY(C_GetAttributeValue,
               (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, CK_ATTRIBUTE_PTR attributes,
                CK_ULONG count),
               (session, object, attributes, count))
VECSEAL_FAULTY(C_FindObjectsInit,
               (CK_SESSION_HANDLE session, CK_ATTRIBUTE_PTR attributes, CK_ULONG count),
               (session, attributes, count))
VECSEAL_FAULTY(C_FindObjects,
               (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE_PTR objects, CK_ULONG max,
                CK_ULONG_PTR count),
               (session, objects, max, count))
VECSEAL_FAULTY(C_FindObjectsFinal, (CK_SESSION_HANDLE session), (session))
VECSEAL_FAULTY(C_SignInit,
               (CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism, CK_OBJECT_HANDLE key),
               (session, mechanism, key))
// A failed C_Sign ends the operation (PKCS#11 §5.2), so the real one is finished and discarded.
CK_RV Faulty_C_Sign(CK_SESSION_HANDLE session, CK_BYTE_PTR data, CK_ULONG size,
                    CK_BYTE_PTR signature, CK_ULONG_PTR signature_size) {
  if (CK_RV fault = Fault("C_Sign"); fault != CKR_OK) {
    CK_BYTE scratch[1024];
    CK_ULONG scratch_size = sizeof scratch;
    g_real->C_Sign(session, data, size, scratch, &scratch_size);
    return fault;
  }
  return g_real->C_Sign(session, data, size, signature, signature_size);
}
VECSEAL_FAULTY(C_EncryptInit,
               (CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism, CK_OBJECT_HANDLE key),
               (session, mechanism, key))
// Like C_Sign, a failed C_Encrypt or C_EncryptUpdate ends the operation: the real one is ended
// too (with C_EncryptFinal, since ECB output of whole blocks never needs a buffer retry).
CK_RV EndRealEncryption(CK_SESSION_HANDLE session) {
  CK_BYTE scratch[64];
  CK_ULONG scratch_size = sizeof scratch;
  g_real->C_EncryptFinal(session, scratch, &scratch_size);
  return CKR_OK;
}
CK_RV Faulty_C_Encrypt(CK_SESSION_HANDLE session, CK_BYTE_PTR data, CK_ULONG size,
                       CK_BYTE_PTR out, CK_ULONG_PTR out_size) {
  CK_RV fault = Fault("C_Encrypt");
  if (fault == CKR_OK && TooLong(size)) fault = CKR_DATA_LEN_RANGE;
  if (fault != CKR_OK) {
    EndRealEncryption(session);
    return fault;
  }
  return g_real->C_Encrypt(session, data, size, out, out_size);
}
CK_RV Faulty_C_EncryptUpdate(CK_SESSION_HANDLE session, CK_BYTE_PTR data, CK_ULONG size,
                             CK_BYTE_PTR out, CK_ULONG_PTR out_size) {
  CK_RV fault = Fault("C_EncryptUpdate");
  if (fault == CKR_OK && TooLong(size)) fault = CKR_DATA_LEN_RANGE;
  if (fault != CKR_OK) {
    EndRealEncryption(session);
    return fault;
  }
  return g_real->C_EncryptUpdate(session, data, size, out, out_size);
}
VECSEAL_FAULTY(C_EncryptFinal, (CK_SESSION_HANDLE session, CK_BYTE_PTR out, CK_ULONG_PTR out_size),
               (session, out, out_size))
CK_RV Faulty_C_GenerateKey(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism,
                           CK_ATTRIBUTE_PTR attributes, CK_ULONG count, CK_OBJECT_HANDLE_PTR key) {
  if (CK_RV fault = Fault("C_GenerateKey"); fault != CKR_OK) return fault;
  if (RefusesAttribute(attributes, count)) return CKR_ATTRIBUTE_TYPE_INVALID;
  return g_real->C_GenerateKey(session, mechanism, attributes, count, key);
}
CK_RV Faulty_C_GenerateKeyPair(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism,
                               CK_ATTRIBUTE_PTR public_attributes, CK_ULONG public_count,
                               CK_ATTRIBUTE_PTR private_attributes, CK_ULONG private_count,
                               CK_OBJECT_HANDLE_PTR public_key, CK_OBJECT_HANDLE_PTR private_key) {
  if (CK_RV fault = Fault("C_GenerateKeyPair"); fault != CKR_OK) return fault;
  if (RefusesAttribute(public_attributes, public_count) ||
      RefusesAttribute(private_attributes, private_count)) {
    return CKR_ATTRIBUTE_TYPE_INVALID;
  }
  return g_real->C_GenerateKeyPair(session, mechanism, public_attributes, public_count,
                                   private_attributes, private_count, public_key, private_key);
}

}  // namespace

extern "C" __attribute__((visibility("default"))) CK_RV C_GetFunctionList(
    CK_FUNCTION_LIST_PTR_PTR list) {
  if (list == nullptr) return CKR_ARGUMENTS_BAD;
  static std::mutex load_mutex;
  std::lock_guard lock(load_mutex);
  if (g_real == nullptr) {
    const char* path = std::getenv("VECSEAL_FAULTY_REAL_MODULE");
    void* library = dlopen(path != nullptr ? path : "/usr/lib/softhsm/libsofthsm2.so",
                           RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr) return CKR_GENERAL_ERROR;
    auto get = reinterpret_cast<CK_C_GetFunctionList>(dlsym(library, "C_GetFunctionList"));
    if (get == nullptr || get(&g_real) != CKR_OK || g_real == nullptr) return CKR_GENERAL_ERROR;
    g_list = *g_real;
    g_list.C_Initialize = Faulty_C_Initialize;
    g_list.C_OpenSession = Faulty_C_OpenSession;
    g_list.C_GetSlotList = Faulty_C_GetSlotList;
    g_list.C_GetTokenInfo = Faulty_C_GetTokenInfo;
    g_list.C_GetMechanismInfo = Faulty_C_GetMechanismInfo;
    g_list.C_CloseSession = Faulty_C_CloseSession;
    g_list.C_GetSessionInfo = Faulty_C_GetSessionInfo;
    g_list.C_Login = Faulty_C_Login;
    g_list.C_Logout = Faulty_C_Logout;
    g_list.C_CreateObject = Faulty_C_CreateObject;
    g_list.C_CopyObject = Faulty_C_CopyObject;
    g_list.C_DestroyObject = Faulty_C_DestroyObject;
    g_list.C_GetAttributeValue = Faulty_C_GetAttributeValue;
    g_list.C_FindObjectsInit = Faulty_C_FindObjectsInit;
    g_list.C_FindObjects = Faulty_C_FindObjects;
    g_list.C_FindObjectsFinal = Faulty_C_FindObjectsFinal;
    g_list.C_SignInit = Faulty_C_SignInit;
    g_list.C_Sign = Faulty_C_Sign;
    g_list.C_EncryptInit = Faulty_C_EncryptInit;
    g_list.C_Encrypt = Faulty_C_Encrypt;
    g_list.C_EncryptUpdate = Faulty_C_EncryptUpdate;
    g_list.C_EncryptFinal = Faulty_C_EncryptFinal;
    g_list.C_GenerateKey = Faulty_C_GenerateKey;
    g_list.C_GenerateKeyPair = Faulty_C_GenerateKeyPair;
  }
  *list = &g_list;
  return CKR_OK;
}
