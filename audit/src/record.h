// The byte-level format shared by the writer and the verifier: canonical serialisation, the
// chain hash, the seal digest and signature encodings. docs/audit.md is the specification.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vecseal/audit/log.h"
#include "vecseal/core/status.h"

namespace vecseal::audit::internal {

using Digest = std::array<uint8_t, 32>;

inline constexpr std::string_view kFormatVersion = "vecseal-audit/1";
inline constexpr std::string_view kSealDomain = "vecseal/v1/audit-seal";
inline constexpr std::string_view kZeroHead =
    "0000000000000000000000000000000000000000000000000000000000000000";
inline constexpr size_t kMaxRecordBytes = 16 * 1024;

// Events only the log itself writes; Append refuses them from callers.
bool IsReservedEvent(std::string_view event);

// Appends `"key":` and a JSON string whose invalid UTF-8 bytes become U+FFFD.
void AppendKey(std::string* out, std::string_view key);
void AppendString(std::string* out, std::string_view value);
void AppendStringField(std::string* out, std::string_view key, std::string_view value);
void AppendUintField(std::string* out, std::string_view key, uint64_t value);
void AppendIntField(std::string* out, std::string_view key, int64_t value);
void AppendBoolField(std::string* out, std::string_view key, bool value);

// The fields of `event` after "prev", each preceded by a comma, in the canonical order.
Result<std::string> SerializeEventBody(const Event& event);

// {"seq":S,"time":"T","prev":"P"<body>}  (no newline)
std::string ComposeRecord(uint64_t seq, std::string_view time, std::string_view prev,
                          std::string_view body);

std::string FormatTimeMicros(int64_t unix_micros);  // 2026-11-25T03:04:31.123456Z
int64_t NowMicros();

Digest Sha256(std::string_view data);
std::string Hex(std::span<const uint8_t> bytes);
bool ParseHex(std::string_view hex, std::span<uint8_t> out);

Digest SealDigest(std::span<const uint8_t, 16> file_id, uint64_t seq, const Digest& head);

std::string Base64(std::span<const uint8_t> bytes);
bool ParseBase64(std::string_view text, std::vector<uint8_t>* out);

// The whole file; false if it cannot be opened or read. (Not istreambuf_iterator: GCC 12's
// -Wnull-dereference misfires on it.)
bool ReadWholeFile(const std::string& path, std::string* content);

// A parsed audit public key: ECDSA P-256, or RSA of at least 3072 bits for RSASSA-PSS (SHA-256,
// MGF1 with SHA-256, a 32-byte salt). Both sign the seal digest as is (docs/audit.md, "Seals").
class PublicKey {
 public:
  static Result<PublicKey> FromPem(const std::string& pem);
  PublicKey(PublicKey&&) noexcept;
  PublicKey& operator=(PublicKey&&) noexcept;
  ~PublicKey();

  const std::string& key_id() const { return key_id_; }  // hex SHA-256 of the SPKI DER
  bool rsa() const { return rsa_; }
  // A signature in the form seals carry: for ECDSA, DER as is and a 64-byte r||s converted to
  // DER; for RSA-PSS, exactly the modulus's length. Anything else an error.
  Result<std::vector<uint8_t>> NormalizeSignature(std::vector<uint8_t> signature) const;
  bool VerifyDigest(const Digest& digest, std::span<const uint8_t> signature) const;

 private:
  PublicKey() = default;
  void* pkey_ = nullptr;  // EVP_PKEY*, kept opaque to keep OpenSSL out of this header
  std::string key_id_;
  bool rsa_ = false;
};

}  // namespace vecseal::audit::internal
