// Sealing the audit log: a signed record over the chain head, by count, by time, at rotation
// and at close; and the self-test of the signer's key.
#include "log_impl.h"

namespace vecseal::audit {

using internal::Digest;

Result<internal::PublicKey> SelfTestedKey(Signer& signer) {
  Result<std::string> pem = signer.PublicKeyPem();
  if (!pem.ok()) return std::move(pem).TakeStatus();
  Result<internal::PublicKey> key = internal::PublicKey::FromPem(*pem);
  if (!key.ok()) return std::move(key).TakeStatus();
  const Digest probe = internal::Sha256("vecseal/v1/audit-signer-self-test");
  Result<std::vector<uint8_t>> signature = signer.SignDigest(probe);
  if (signature.ok()) signature = key->NormalizeSignature(std::move(*signature));
  if (!signature.ok()) return std::move(signature).TakeStatus();
  if (!key->VerifyDigest(probe, *signature)) {
    return Status(Code::kFailedPrecondition, "audit_signer_mismatch",
                  "the audit signer's signatures do not verify under its public key");
  }
  return key;
}

Status Log::Impl::SealLocked(std::string_view reason) {
  if (records_since_seal_ == 0) return Status::Ok();  // the last record is already a seal
  if (!key_) {
    Result<internal::PublicKey> key = SelfTestedKey(*signer_);
    if (!key.ok()) return SealFailedLocked(key.status());
    key_.emplace(std::move(key).value());
  }
  const Digest digest = internal::SealDigest(file_id_, next_seq_, head_);
  Result<std::vector<uint8_t>> signature = signer_->SignDigest(digest);
  if (signature.ok()) signature = key_->NormalizeSignature(std::move(*signature));
  if (!signature.ok()) return SealFailedLocked(signature.status());
  const std::string head_hex = head_hex_;
  std::string body;
  internal::AppendStringField(&body, "event", "seal");
  internal::AppendStringField(&body, "file_id", file_id_hex_);
  internal::AppendStringField(&body, "head", head_hex);
  internal::AppendStringField(&body, "key_id", key_->key_id());
  internal::AppendStringField(&body, "sig", internal::Base64(*signature));
  internal::AppendStringField(&body, "reason", reason);
  const uint64_t seal_seq = next_seq_;
  const bool sealing_a_stop = ends_with_stop_;
  Status status = WriteRecordLocked(body);
  ends_with_stop_ = sealing_a_stop;
  if (status.ok() && options_.sync == LogOptions::Sync::kInterval) status = SyncLocked();
  if (!status.ok()) {
    SuspendLocked(status);
    return status;
  }
  records_since_seal_ = 0;
  next_seal_retry_ = 0;
  if (!seal_failure_.empty()) {
    seal_failure_.clear();
    Notice("info", "audit seals resumed");
  }
  last_seal_micros_ = internal::NowMicros();
  last_seal_ = SealInfo{file_path_, seal_seq, head_hex};
  // Kept outside the files as well: an anchor against truncation of the newest file.
  Notice("info", "audit seal seq " + std::to_string(seal_seq) + " head " + head_hex + " file " +
                     Basename(file_path_));
  return Status::Ok();
}

Status Log::Impl::SealFailedLocked(const Status& cause) {
  if (cause.ToString() != seal_failure_) {
    seal_failure_ = cause.ToString();
    Notice("error", "cannot seal the audit log: " + seal_failure_);
  }
  return Status(Code::kUnavailable, "audit_seal_failed", cause.message());
}

}  // namespace vecseal::audit
