// The anchor session, the pool of derivation sessions, and recovery: reconnecting and logging
// in again after the module lost its sessions or the device, with backoff.
#include <chrono>
#include <thread>

#include "hsm_state.h"

namespace vecseal::pkcs11 {

// Private objects are invisible until login, so a session that lost its login state (another
// session logged out, the token was reset) must recover rather than report keys as missing.
Status RequireLogin(const Session& session) {
  auto info = session.Info();
  if (!info.ok()) return std::move(info).TakeStatus();
  if (info->state != CKS_RO_USER_FUNCTIONS && info->state != CKS_RW_USER_FUNCTIONS) {
    return CkrStatus("C_GetSessionInfo", CKR_USER_NOT_LOGGED_IN);
  }
  return Status::Ok();
}

// Model keys and the audit key may share a label on a foreign token; the class tells them apart.
std::string CacheKey(const std::string& label, CK_OBJECT_CLASS klass) {
  return std::to_string(klass) + ":" + label;
}

Status Hsm::State::ConnectLocked() {
  auto slot_id = module.FindTokenSlot(config.token_label);
  if (!slot_id.ok()) return std::move(slot_id).TakeStatus();
  auto session = Session::Open(module, *slot_id, true);
  if (!session.ok()) return std::move(session).TakeStatus();
  auto pin_path = PinPath(config.pin);
  if (!pin_path.ok()) return std::move(pin_path).TakeStatus();
  const std::optional<PinFileStamp> stamp = StampPinFile(*pin_path);
  if (refused_pin_file && stamp == refused_pin_file) return refused_login;
  auto pin = ReadPin(config.pin);
  if (!pin.ok()) return std::move(pin).TakeStatus();
  CK_RV rv = session->LoginRaw(std::span<const uint8_t>(pin->data(), pin->size()));
  pin = core::SecureBuffer();  // wiped now, not at scope end
  if (rv != CKR_OK) {
    if (!IsPinError(rv)) return CkrStatus("C_Login", rv);
    refused_pin_file = stamp;
    refused_login = LoginFailed(config, rv);
    return refused_login;
  }
  refused_pin_file.reset();
  anchor = std::move(session).value();
  slot = *slot_id;
  generation.fetch_add(1);
  return Status::Ok();
}

void Hsm::State::RetireAnchorLocked() {
  if (!anchor.valid()) return;
  CK_SESSION_INFO info{};
  const CK_RV rv = anchor.functions()->C_GetSessionInfo(anchor.handle(), &info);
  // The anchor is this Hsm's only read-write session: a read-only one under its number is a
  // pooled session opened since, on a number the module reused.
  const bool gone = rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
                    (rv == CKR_OK && (info.flags & CKF_RW_SESSION) == 0);
  if (!gone) {
    anchor.Close();
    return;
  }
  anchor.Forget();
  initialisation.fetch_add(1);
}

Status Hsm::State::Recover(uint64_t observed_generation) {
  uint64_t failures_seen = recovery_failures.load();
  std::lock_guard lock(admin_mutex);
  if (generation.load() != observed_generation) return Status::Ok();  // someone else did it
  if (recovery_failures.load() != failures_seen) {
    // A recovery failed while we waited for the lock; do not stack another backoff on it.
    return Status(Code::kUnavailable, "hsm_unavailable",
                  "the HSM (token \"" + config.token_label +
                      "\") is unavailable; a reconnection attempt just failed");
  }
  RetireAnchorLocked();
  std::chrono::milliseconds backoff = config.initial_backoff;
  Status last;
  for (size_t attempt = 0; attempt < config.recovery_attempts; ++attempt) {
    if (attempt > 0) {
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, config.max_backoff);
    }
    last = ConnectLocked();
    if (last.ok()) return last;
    if (last.reason() == "hsm_login_failed" || last.reason() == "pin_source_invalid" ||
        last.reason() == "pin_file_permissions") {
      break;  // retrying a wrong PIN could lock the token
    }
    // Last, initialise the module afresh: p11-kit-client.so does not reconnect by itself after
    // its server went away and came back.
    if (attempt + 1 == config.recovery_attempts) {
      anchor.Forget();
      if (module.Reinitialize().ok()) {
        initialisation.fetch_add(1);
        last = ConnectLocked();
        if (last.ok()) return last;
      }
    }
  }
  recovery_failures.fetch_add(1);
  if (last.reason() == "hsm_login_failed") return last;
  return Status(Code::kUnavailable, "hsm_unavailable",
                "the HSM (token \"" + config.token_label + "\" in " + config.module_path +
                    ") is unavailable after " + std::to_string(config.recovery_attempts) +
                    " reconnection attempts; last error: " + last.message());
}

PoolSlot& Hsm::State::Acquire(std::unique_lock<std::mutex>& lock) {
  size_t start = next_slot.fetch_add(1, std::memory_order_relaxed);
  for (size_t i = 0; i < pool.size(); ++i) {
    PoolSlot& candidate = *pool[(start + i) % pool.size()];
    std::unique_lock attempt(candidate.mutex, std::try_to_lock);
    if (attempt.owns_lock()) {
      lock = std::move(attempt);
      return candidate;
    }
  }
  PoolSlot& slot_ref = *pool[start % pool.size()];
  lock = std::unique_lock(slot_ref.mutex);
  return slot_ref;
}

Status Hsm::State::EnsureOpen(PoolSlot& pool_slot) {
  uint64_t current = generation.load();
  const uint64_t epoch = key_epoch.load();
  if (pool_slot.generation == current && pool_slot.session.valid()) {
    if (pool_slot.key_epoch != epoch) {
      EndEncryption(pool_slot);
      pool_slot.keys.clear();
      pool_slot.key_epoch = epoch;
    }
    return Status::Ok();
  }
  if (pool_slot.initialisation != initialisation.load()) {
    for (auto& [unused, key] : pool_slot.keys) key.Release();
    pool_slot.session.Forget();
  }
  pool_slot.keys.clear();  // session copies die with their session; drop them first
  pool_slot.open_encryption.clear();
  pool_slot.session.Close();
  auto session = Session::Open(module, slot.load(), false);
  if (!session.ok()) return std::move(session).TakeStatus();
  pool_slot.session = std::move(session).value();
  pool_slot.generation = current;
  pool_slot.initialisation = initialisation.load();
  pool_slot.key_epoch = epoch;
  return Status::Ok();
}

void Hsm::State::EndEncryption(PoolSlot& pool_slot) {
  if (pool_slot.open_encryption.empty()) return;
  pool_slot.open_encryption.clear();
  (void)pool_slot.session.EncryptFinal();
}

Result<CK_OBJECT_HANDLE> Hsm::State::KeyHandle(PoolSlot& pool_slot, const std::string& label,
                                               CK_OBJECT_CLASS klass) {
  const std::string cache_key = CacheKey(label, klass);
  if (auto it = pool_slot.keys.find(cache_key); it != pool_slot.keys.end()) {
    return it->second.handle();
  }
  // Logged out (the token drops the login when its last session closes, as after a lost
  // connection), the keys are invisible and Find answers "none": so the login is checked first,
  // and its absence is hsm_unavailable, which recovers. Checked after an empty answer instead,
  // it raced with another thread's recovery logging in between the two calls, and a session
  // loss became key_not_found (HsmFaultTest.SessionLossAndTransientErrorsMidLoadAreInvisible,
  // under ASan). vecseal never logs out, so a login lost after this check means every session
  // closed, this one too, and Find then fails instead of answering "none".
  VECSEAL_RETURN_IF_ERROR(RequireLogin(pool_slot.session));
  EndEncryption(pool_slot);
  // Token objects only: session copies made by other pooled sessions carry the same label.
  CK_ATTRIBUTE match[] = {Attr(CKA_CLASS, klass), Attr(CKA_TOKEN, kTrue), Attr(CKA_LABEL, label)};
  auto found = FindKeys(pool_slot.session, match);
  if (!found.ok()) return std::move(found).TakeStatus();
  if (found->size() != 1) {
    return Status(Code::kNotFound, "key_not_found",
                  found->empty() ? "the token no longer holds " + label
                                 : "the token holds several objects labelled " + label);
  }
  Object key = std::move(found->front());
  if (klass == CKO_SECRET_KEY && config.session_key_copies) {
    auto copyable = key.GetBool(CKA_COPYABLE);
    if (copyable.ok() && *copyable) {
      CK_ATTRIBUTE changes[] = {Attr(CKA_TOKEN, kFalse)};
      std::unique_lock copying(key_copy_mutex);
      auto copy = pool_slot.session.Copy(key.handle(), changes, true);
      copying.unlock();
      if (copy.ok()) key = std::move(copy).value();
      // A refused copy only costs speed: fall through and use the token object.
    }
  }
  CK_OBJECT_HANDLE handle = key.handle();
  pool_slot.keys.emplace(cache_key, std::move(key));
  return handle;
}
}  // namespace vecseal::pkcs11
