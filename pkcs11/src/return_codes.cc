// Cryptoki's return values as names and sentences for people, which of them recovery may cure,
// and the names of the counted calls.
#include <cassert>
#include <cstdio>
#include <string>

#include "vecseal/pkcs11/cryptoki.h"

namespace vecseal::pkcs11 {
namespace {

struct CkrEntry {
  CK_RV rv;
  std::string_view name;
  std::string_view sentence;
};

// PKCS#11 v3.0 return values; 0x201-0x203 are v3.0 additions that p11-kit's header lacks.
constexpr CkrEntry kCkrTable[] = {
    {CKR_OK, "CKR_OK", "the call succeeded"},
    {CKR_CANCEL, "CKR_CANCEL", "the application cancelled the call"},
    {CKR_HOST_MEMORY, "CKR_HOST_MEMORY", "the module ran out of host memory"},
    {CKR_SLOT_ID_INVALID, "CKR_SLOT_ID_INVALID", "the slot does not exist"},
    {CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR", "the module hit an unrecoverable error"},
    {CKR_FUNCTION_FAILED, "CKR_FUNCTION_FAILED", "the module could not perform the function"},
    {CKR_ARGUMENTS_BAD, "CKR_ARGUMENTS_BAD", "the module rejected the arguments of the call"},
    {CKR_NO_EVENT, "CKR_NO_EVENT", "no slot event is pending"},
    {CKR_NEED_TO_CREATE_THREADS, "CKR_NEED_TO_CREATE_THREADS",
     "the module needs to create threads but was told not to"},
    {CKR_CANT_LOCK, "CKR_CANT_LOCK", "the module cannot provide the requested locking"},
    {CKR_ATTRIBUTE_READ_ONLY, "CKR_ATTRIBUTE_READ_ONLY", "an attribute cannot be set or changed"},
    {CKR_ATTRIBUTE_SENSITIVE, "CKR_ATTRIBUTE_SENSITIVE",
     "the attribute is sensitive and cannot be read"},
    {CKR_ATTRIBUTE_TYPE_INVALID, "CKR_ATTRIBUTE_TYPE_INVALID",
     "an attribute type is not valid for this object"},
    {CKR_ATTRIBUTE_VALUE_INVALID, "CKR_ATTRIBUTE_VALUE_INVALID", "an attribute value is invalid"},
    {CKR_ACTION_PROHIBITED, "CKR_ACTION_PROHIBITED",
     "the object's attributes prohibit this action"},
    {CKR_DATA_INVALID, "CKR_DATA_INVALID", "the input data is invalid for this mechanism"},
    {CKR_DATA_LEN_RANGE, "CKR_DATA_LEN_RANGE", "the input data has the wrong length"},
    {CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR", "the device reported an error"},
    {CKR_DEVICE_MEMORY, "CKR_DEVICE_MEMORY", "the device ran out of memory"},
    {CKR_DEVICE_REMOVED, "CKR_DEVICE_REMOVED", "the device was removed"},
    {CKR_ENCRYPTED_DATA_INVALID, "CKR_ENCRYPTED_DATA_INVALID", "the ciphertext is invalid"},
    {CKR_ENCRYPTED_DATA_LEN_RANGE, "CKR_ENCRYPTED_DATA_LEN_RANGE",
     "the ciphertext has the wrong length"},
    {CKR_FUNCTION_CANCELED, "CKR_FUNCTION_CANCELED", "the function was cancelled"},
    {CKR_FUNCTION_NOT_PARALLEL, "CKR_FUNCTION_NOT_PARALLEL",
     "no function is running in parallel"},
    {CKR_FUNCTION_NOT_SUPPORTED, "CKR_FUNCTION_NOT_SUPPORTED",
     "the module does not support this function"},
    {CKR_KEY_HANDLE_INVALID, "CKR_KEY_HANDLE_INVALID", "the key handle is not valid"},
    {CKR_KEY_SIZE_RANGE, "CKR_KEY_SIZE_RANGE", "the key size is outside the supported range"},
    {CKR_KEY_TYPE_INCONSISTENT, "CKR_KEY_TYPE_INCONSISTENT",
     "the key type does not fit the mechanism"},
    {CKR_KEY_NOT_NEEDED, "CKR_KEY_NOT_NEEDED", "a key was given where none is needed"},
    {CKR_KEY_CHANGED, "CKR_KEY_CHANGED", "the key differs from the one used before"},
    {CKR_KEY_NEEDED, "CKR_KEY_NEEDED", "the operation needs a key that was not given"},
    {CKR_KEY_INDIGESTIBLE, "CKR_KEY_INDIGESTIBLE", "the key cannot be digested"},
    {CKR_KEY_FUNCTION_NOT_PERMITTED, "CKR_KEY_FUNCTION_NOT_PERMITTED",
     "the key's attributes do not permit this operation"},
    {CKR_KEY_NOT_WRAPPABLE, "CKR_KEY_NOT_WRAPPABLE", "the key cannot be wrapped"},
    {CKR_KEY_UNEXTRACTABLE, "CKR_KEY_UNEXTRACTABLE", "the key is not extractable"},
    {CKR_MECHANISM_INVALID, "CKR_MECHANISM_INVALID",
     "the token does not support this mechanism"},
    {CKR_MECHANISM_PARAM_INVALID, "CKR_MECHANISM_PARAM_INVALID",
     "the mechanism parameters are invalid"},
    {CKR_OBJECT_HANDLE_INVALID, "CKR_OBJECT_HANDLE_INVALID", "the object handle is not valid"},
    {CKR_OPERATION_ACTIVE, "CKR_OPERATION_ACTIVE", "another operation is active on the session"},
    {CKR_OPERATION_NOT_INITIALIZED, "CKR_OPERATION_NOT_INITIALIZED",
     "no operation of this kind was initialised"},
    {CKR_PIN_INCORRECT, "CKR_PIN_INCORRECT", "the PIN is wrong"},
    {CKR_PIN_INVALID, "CKR_PIN_INVALID", "the PIN contains invalid characters"},
    {CKR_PIN_LEN_RANGE, "CKR_PIN_LEN_RANGE", "the PIN is too long or too short"},
    {CKR_PIN_EXPIRED, "CKR_PIN_EXPIRED", "the PIN has expired"},
    {CKR_PIN_LOCKED, "CKR_PIN_LOCKED", "the PIN is locked after too many wrong attempts"},
    {CKR_SESSION_CLOSED, "CKR_SESSION_CLOSED", "the session was closed during the call"},
    {CKR_SESSION_COUNT, "CKR_SESSION_COUNT", "the token has too many open sessions"},
    {CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID", "the session handle is not valid"},
    {CKR_SESSION_PARALLEL_NOT_SUPPORTED, "CKR_SESSION_PARALLEL_NOT_SUPPORTED",
     "the module does not support parallel sessions"},
    {CKR_SESSION_READ_ONLY, "CKR_SESSION_READ_ONLY", "the session is read-only"},
    {CKR_SESSION_EXISTS, "CKR_SESSION_EXISTS", "a session is already open with the token"},
    {CKR_SESSION_READ_ONLY_EXISTS, "CKR_SESSION_READ_ONLY_EXISTS",
     "a read-only session exists, so the security officer cannot log in"},
    {CKR_SESSION_READ_WRITE_SO_EXISTS, "CKR_SESSION_READ_WRITE_SO_EXISTS",
     "a read-write security-officer session exists"},
    {CKR_SIGNATURE_INVALID, "CKR_SIGNATURE_INVALID", "the signature is invalid"},
    {CKR_SIGNATURE_LEN_RANGE, "CKR_SIGNATURE_LEN_RANGE", "the signature has the wrong length"},
    {CKR_TEMPLATE_INCOMPLETE, "CKR_TEMPLATE_INCOMPLETE",
     "the object template lacks a required attribute"},
    {CKR_TEMPLATE_INCONSISTENT, "CKR_TEMPLATE_INCONSISTENT",
     "the object template has conflicting attributes"},
    {CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT", "the token is not present in its slot"},
    {CKR_TOKEN_NOT_RECOGNIZED, "CKR_TOKEN_NOT_RECOGNIZED",
     "the module does not recognise the token"},
    {CKR_TOKEN_WRITE_PROTECTED, "CKR_TOKEN_WRITE_PROTECTED", "the token is write-protected"},
    {CKR_UNWRAPPING_KEY_HANDLE_INVALID, "CKR_UNWRAPPING_KEY_HANDLE_INVALID",
     "the unwrapping key handle is not valid"},
    {CKR_UNWRAPPING_KEY_SIZE_RANGE, "CKR_UNWRAPPING_KEY_SIZE_RANGE",
     "the unwrapping key has an unsupported size"},
    {CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT, "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT",
     "the unwrapping key type does not fit the mechanism"},
    {CKR_USER_ALREADY_LOGGED_IN, "CKR_USER_ALREADY_LOGGED_IN", "the user is already logged in"},
    {CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN", "the user is not logged in"},
    {CKR_USER_PIN_NOT_INITIALIZED, "CKR_USER_PIN_NOT_INITIALIZED",
     "the token has no user PIN yet"},
    {CKR_USER_TYPE_INVALID, "CKR_USER_TYPE_INVALID", "the user type is not valid"},
    {CKR_USER_ANOTHER_ALREADY_LOGGED_IN, "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
     "another user is already logged in"},
    {CKR_USER_TOO_MANY_TYPES, "CKR_USER_TOO_MANY_TYPES",
     "too many distinct users are logged in"},
    {CKR_WRAPPED_KEY_INVALID, "CKR_WRAPPED_KEY_INVALID", "the wrapped key is invalid"},
    {CKR_WRAPPED_KEY_LEN_RANGE, "CKR_WRAPPED_KEY_LEN_RANGE",
     "the wrapped key has the wrong length"},
    {CKR_WRAPPING_KEY_HANDLE_INVALID, "CKR_WRAPPING_KEY_HANDLE_INVALID",
     "the wrapping key handle is not valid"},
    {CKR_WRAPPING_KEY_SIZE_RANGE, "CKR_WRAPPING_KEY_SIZE_RANGE",
     "the wrapping key has an unsupported size"},
    {CKR_WRAPPING_KEY_TYPE_INCONSISTENT, "CKR_WRAPPING_KEY_TYPE_INCONSISTENT",
     "the wrapping key type does not fit the mechanism"},
    {CKR_RANDOM_SEED_NOT_SUPPORTED, "CKR_RANDOM_SEED_NOT_SUPPORTED",
     "the token's random generator cannot be seeded"},
    {CKR_RANDOM_NO_RNG, "CKR_RANDOM_NO_RNG", "the token has no random generator"},
    {CKR_DOMAIN_PARAMS_INVALID, "CKR_DOMAIN_PARAMS_INVALID", "the domain parameters are invalid"},
    {CKR_CURVE_NOT_SUPPORTED, "CKR_CURVE_NOT_SUPPORTED", "the token does not support this curve"},
    {CKR_BUFFER_TOO_SMALL, "CKR_BUFFER_TOO_SMALL", "the output buffer is too small"},
    {CKR_SAVED_STATE_INVALID, "CKR_SAVED_STATE_INVALID", "the saved state is invalid"},
    {CKR_INFORMATION_SENSITIVE, "CKR_INFORMATION_SENSITIVE", "the information is sensitive"},
    {CKR_STATE_UNSAVEABLE, "CKR_STATE_UNSAVEABLE", "the operation state cannot be saved"},
    {CKR_CRYPTOKI_NOT_INITIALIZED, "CKR_CRYPTOKI_NOT_INITIALIZED",
     "the module has not been initialised"},
    {CKR_CRYPTOKI_ALREADY_INITIALIZED, "CKR_CRYPTOKI_ALREADY_INITIALIZED",
     "the module was already initialised by another component of this process"},
    {CKR_MUTEX_BAD, "CKR_MUTEX_BAD", "a mutex object is bad"},
    {CKR_MUTEX_NOT_LOCKED, "CKR_MUTEX_NOT_LOCKED", "a mutex was not locked"},
    {CKR_NEW_PIN_MODE, "CKR_NEW_PIN_MODE", "the token expects a new PIN"},
    {CKR_NEXT_OTP, "CKR_NEXT_OTP", "the token expects the next one-time password"},
    {CKR_EXCEEDED_MAX_ITERATIONS, "CKR_EXCEEDED_MAX_ITERATIONS",
     "the operation exceeded its maximum iterations"},
    {CKR_FIPS_SELF_TEST_FAILED, "CKR_FIPS_SELF_TEST_FAILED", "a FIPS self-test failed"},
    {CKR_LIBRARY_LOAD_FAILED, "CKR_LIBRARY_LOAD_FAILED", "the module could not load a library"},
    {CKR_PIN_TOO_WEAK, "CKR_PIN_TOO_WEAK", "the PIN is too weak"},
    {CKR_PUBLIC_KEY_INVALID, "CKR_PUBLIC_KEY_INVALID", "the public key is invalid"},
    {CKR_FUNCTION_REJECTED, "CKR_FUNCTION_REJECTED", "the token rejected the function"},
    {0x201UL, "CKR_TOKEN_RESOURCE_EXCEEDED", "the token ran out of a resource"},
    {0x202UL, "CKR_OPERATION_CANCEL_FAILED", "the operation could not be cancelled"},
    {0x203UL, "CKR_KEY_EXHAUSTED", "the key has reached its usage limit"},
};

const CkrEntry* FindCkr(CK_RV rv) {
  for (const auto& entry : kCkrTable) {
    if (entry.rv == rv) return &entry;
  }
  return nullptr;
}

}  // namespace

std::string_view CkrName(CK_RV rv) {
  if (const CkrEntry* entry = FindCkr(rv)) return entry->name;
  return rv >= CKR_VENDOR_DEFINED ? "CKR_VENDOR_DEFINED" : "CKR_UNKNOWN";
}

std::string CkrSentence(CK_RV rv) {
  if (const CkrEntry* entry = FindCkr(rv)) return std::string(entry->sentence);
  char hex[32];
  std::snprintf(hex, sizeof hex, "0x%lx", static_cast<unsigned long>(rv));
  return (rv >= CKR_VENDOR_DEFINED ? "the module returned vendor-defined code "
                                   : "the module returned unknown code ") +
         std::string(hex);
}

bool IsRecoverable(CK_RV rv) {
  switch (rv) {
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_REMOVED:
    case CKR_DEVICE_MEMORY:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_USER_NOT_LOGGED_IN:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
    case CKR_SESSION_COUNT:
    // A slot that went away with its token or its server (p11-kit-client.so renumbers slots
    // when it reconnects): the token is found again by its label.
    case CKR_SLOT_ID_INVALID:
      return true;
    default:
      return false;
  }
}

bool IsDeviceAbsent(CK_RV rv) {
  return rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_REMOVED || rv == CKR_DEVICE_MEMORY ||
         rv == CKR_TOKEN_NOT_PRESENT;
}

Status CkrStatus(std::string_view function, CK_RV rv) {
  assert(rv != CKR_OK);
  std::string message = std::string(function) + " failed: " + std::string(CkrName(rv)) + " (" +
                        CkrSentence(rv) + ")";
  return Status(Code::kUnavailable, IsRecoverable(rv) ? "hsm_unavailable" : "hsm_error",
                std::move(message));
}

std::string_view HsmCallName(HsmCall call) {
  switch (call) {
    case HsmCall::kOpenSession: return "C_OpenSession";
    case HsmCall::kLogin: return "C_Login";
    case HsmCall::kFindObjectsInit: return "C_FindObjectsInit";
    case HsmCall::kSignInit: return "C_SignInit";
    case HsmCall::kSign: return "C_Sign";
    case HsmCall::kEncryptInit: return "C_EncryptInit";
    case HsmCall::kEncrypt: return "C_Encrypt";
    case HsmCall::kEncryptUpdate: return "C_EncryptUpdate";
    case HsmCall::kEncryptFinal: return "C_EncryptFinal";
    case HsmCall::kGenerateKey: return "C_GenerateKey";
    case HsmCall::kGenerateKeyPair: return "C_GenerateKeyPair";
    case HsmCall::kCount: break;
  }
  return "unknown";
}

}  // namespace vecseal::pkcs11
