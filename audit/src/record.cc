#include "record.h"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <charconv>
#include <chrono>
#include <ctime>
#include <fstream>
#include <memory>

#include "vecseal/wire/base64.h"

namespace vecseal::audit::internal {
namespace {

// Length of the valid UTF-8 sequence starting at s[i], or 0 if it is not one.
size_t Utf8SequenceLength(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t lead = byte(i);
  size_t length = 0;
  uint32_t min = 0;
  uint32_t code = 0;
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) {
    length = 2, min = 0x80, code = lead & 0x1F;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3, min = 0x800, code = lead & 0x0F;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4, min = 0x10000, code = lead & 0x07;
  } else {
    return 0;
  }
  if (i + length > s.size()) return 0;
  for (size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    code = (code << 6) | (byte(i + k) & 0x3F);
  }
  if (code < min || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return 0;
  return length;
}

void AppendUint(std::string* out, uint64_t value) {
  char buffer[24];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, value);
  out->append(buffer, end);
}

}  // namespace

bool IsReservedEvent(std::string_view event) {
  return event == "file_start" || event == "seal" || event == "suspended" ||
         event == "resumed" || event == "space_low" || event == "unclean_stop";
}

void AppendString(std::string* out, std::string_view value) {
  static constexpr char kHexDigits[] = "0123456789abcdef";
  out->push_back('"');
  for (size_t i = 0; i < value.size();) {
    const auto c = static_cast<unsigned char>(value[i]);
    if (c == '"' || c == '\\') {
      out->push_back('\\');
      out->push_back(static_cast<char>(c));
      ++i;
    } else if (c < 0x20 || c == 0x7F) {
      out->append("\\u00");
      out->push_back(kHexDigits[c >> 4]);
      out->push_back(kHexDigits[c & 0xF]);
      ++i;
    } else {
      const size_t length = Utf8SequenceLength(value, i);
      if (length == 0) {
        out->append("\\ufffd");
        ++i;
      } else {
        out->append(value.substr(i, length));
        i += length;
      }
    }
  }
  out->push_back('"');
}

void AppendKey(std::string* out, std::string_view key) {
  out->push_back(',');
  AppendString(out, key);
  out->push_back(':');
}

void AppendStringField(std::string* out, std::string_view key, std::string_view value) {
  AppendKey(out, key);
  AppendString(out, value);
}

void AppendUintField(std::string* out, std::string_view key, uint64_t value) {
  AppendKey(out, key);
  AppendUint(out, value);
}

void AppendIntField(std::string* out, std::string_view key, int64_t value) {
  AppendKey(out, key);
  char buffer[24];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, value);
  out->append(buffer, end);
}

void AppendBoolField(std::string* out, std::string_view key, bool value) {
  AppendKey(out, key);
  out->append(value ? "true" : "false");
}

namespace {

bool IsForbiddenName(std::string_view name) {
  for (std::string_view forbidden :
       {"vector", "vectors", "values", "token", "tokens", "pin", "secret", "key_bytes"}) {
    if (name == forbidden) return true;
  }
  return false;
}

bool HasForbiddenField(const nlohmann::json& value) {
  if (value.is_object()) {
    for (const auto& [name, child] : value.items()) {
      if (IsForbiddenName(name) || HasForbiddenField(child)) return true;
    }
  } else if (value.is_array()) {
    for (const auto& child : value) {
      if (HasForbiddenField(child)) return true;
    }
  }
  return false;
}

void AppendOptionalString(std::string* out, std::string_view key, std::string_view value) {
  if (!value.empty()) AppendStringField(out, key, value);
}

}  // namespace

Result<std::string> SerializeEventBody(const Event& event) {
  if (event.event.empty()) {
    return Status(Code::kInvalidArgument, "audit_bad_event", "an audit event needs a name");
  }
  if (IsReservedEvent(event.event)) {
    return Status(Code::kInvalidArgument, "audit_reserved_event",
                  "event \"" + event.event + "\" is written only by the audit log itself");
  }
  if (!event.extra.is_null() && !event.extra.is_object()) {
    return Status(Code::kInvalidArgument, "audit_bad_event",
                  "the extra fields of an audit event must be a JSON object");
  }
  if (HasForbiddenField(event.extra)) {
    return Status(Code::kInvalidArgument, "audit_forbidden_field",
                  "audit records never hold vectors, tokens, key bytes or the PIN");
  }
  std::string out;
  out.reserve(384);
  AppendStringField(&out, "event", event.event);
  AppendOptionalString(&out, "request_id", event.request_id);
  if (event.caller) {
    const Caller& caller = *event.caller;
    AppendKey(&out, "caller");
    std::string inner;
    AppendIntField(&inner, "pid", caller.pid);
    AppendIntField(&inner, "uid", caller.uid);
    AppendOptionalString(&inner, "user", caller.user);
    AppendIntField(&inner, "gid", caller.gid);
    AppendOptionalString(&inner, "exe", caller.exe);
    AppendOptionalString(&inner, "exe_sha256", caller.exe_sha256);
    AppendOptionalString(&inner, "exe_sha256_unknown", caller.exe_sha256_unknown);
    AppendOptionalString(&inner, "unit", caller.unit);
    AppendOptionalString(&inner, "script", caller.script);
    inner[0] = '{';  // the first field's leading comma
    out.append(inner);
    out.push_back('}');
  }
  AppendOptionalString(&out, "key", event.key);
  if (event.key_version) AppendUintField(&out, "key_version", *event.key_version);
  AppendOptionalString(&out, "operation", event.operation);
  if (event.vectors) AppendUintField(&out, "vectors", *event.vectors);
  if (event.dimension) AppendUintField(&out, "dimension", *event.dimension);
  if (event.reversible) AppendBoolField(&out, "reversible", *event.reversible);
  AppendOptionalString(&out, "decision", event.decision);
  AppendOptionalString(&out, "rule_id", event.rule_id);
  AppendOptionalString(&out, "error_code", event.error_code);
  if (event.extra.is_object() && !event.extra.empty()) {
    AppendKey(&out, "extra");
    // nlohmann orders object keys, so the dump is canonical.
    out.append(event.extra.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  }
  if (out.size() + 200 > kMaxRecordBytes) {
    return Status(Code::kInvalidArgument, "audit_record_too_large",
                  "an audit record is limited to " + std::to_string(kMaxRecordBytes) + " bytes");
  }
  return out;
}

std::string ComposeRecord(uint64_t seq, std::string_view time, std::string_view prev,
                          std::string_view body) {
  std::string line;
  line.reserve(body.size() + 140);
  line.append("{\"seq\":");
  AppendUint(&line, seq);
  line.append(",\"time\":\"");
  line.append(time);
  line.append("\",\"prev\":\"");
  line.append(prev);
  line.push_back('"');
  line.append(body);
  line.push_back('}');
  return line;
}

int64_t NowMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string FormatTimeMicros(int64_t unix_micros) {
  // gmtime_r and strftime once per second per thread: they are a visible part of an append.
  thread_local int64_t cached_second = -1;
  thread_local std::string cached_prefix;
  const int64_t second = unix_micros / 1000000;
  if (second != cached_second) {
    const auto seconds = static_cast<time_t>(second);
    struct tm utc {};
    gmtime_r(&seconds, &utc);
    char buffer[40];
    cached_prefix.assign(buffer, strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%S.", &utc));
    cached_second = second;
  }
  std::string out = cached_prefix;
  auto micros = static_cast<uint32_t>(unix_micros % 1000000);
  char digits[7] = "000000";
  for (int i = 5; i >= 0; --i, micros /= 10) digits[i] = static_cast<char>('0' + micros % 10);
  out.append(digits, 6);
  out.push_back('Z');
  return out;
}

Digest Sha256(std::string_view data) {
  // SHA256() looks the algorithm up on every call in OpenSSL 3; fetch it once, reuse a context.
  static EVP_MD* const sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  thread_local std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(),
                                                                           &EVP_MD_CTX_free);
  Digest digest;
  unsigned int length = 0;
  const bool ok = sha256 != nullptr && ctx && EVP_DigestInit_ex2(ctx.get(), sha256, nullptr) == 1 &&
                  EVP_DigestUpdate(ctx.get(), data.data(), data.size()) == 1 &&
                  EVP_DigestFinal_ex(ctx.get(), digest.data(), &length) == 1;
  if (!ok) {
    SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest.data());
  }
  return digest;
}

std::string Hex(std::span<const uint8_t> bytes) {
  static constexpr char kHexDigits[] = "0123456789abcdef";
  std::string out(bytes.size() * 2, '0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kHexDigits[bytes[i] >> 4];
    out[2 * i + 1] = kHexDigits[bytes[i] & 0xF];
  }
  return out;
}

bool ParseHex(std::string_view hex, std::span<uint8_t> out) {
  if (hex.size() != out.size() * 2) return false;
  const auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;  // upper case is not canonical
  };
  for (size_t i = 0; i < out.size(); ++i) {
    const int high = nibble(hex[2 * i]);
    const int low = nibble(hex[2 * i + 1]);
    if (high < 0 || low < 0) return false;
    out[i] = static_cast<uint8_t>(high << 4 | low);
  }
  return true;
}

Digest SealDigest(std::span<const uint8_t, 16> file_id, uint64_t seq, const Digest& head) {
  std::string message(kSealDomain);
  message.push_back('\0');
  message.append(reinterpret_cast<const char*>(file_id.data()), file_id.size());
  for (int i = 0; i < 8; ++i) message.push_back(static_cast<char>((seq >> (8 * i)) & 0xFF));
  message.append(reinterpret_cast<const char*>(head.data()), head.size());
  return Sha256(message);
}

std::string Base64(std::span<const uint8_t> bytes) { return wire::Base64Encode(bytes); }

bool ParseBase64(std::string_view text, std::vector<uint8_t>* out) {
  if (text.empty() || text.size() > 4096) return false;  // a seal's signature, not any text
  auto bytes = wire::Base64Decode(text);
  if (!bytes) return false;
  *out = std::move(*bytes);
  return true;
}

bool ReadWholeFile(const std::string& path, std::string* content) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  content->clear();
  char buffer[1 << 16];
  while (in.read(buffer, sizeof buffer) || in.gcount() > 0) {
    content->append(buffer, static_cast<size_t>(in.gcount()));
  }
  return !in.bad();
}

Result<std::vector<uint8_t>> PublicKey::NormalizeSignature(std::vector<uint8_t> signature) const {
  if (rsa_) {
    if (signature.size() != static_cast<size_t>(EVP_PKEY_get_size(static_cast<EVP_PKEY*>(pkey_)))) {
      return Status(Code::kInternal, "audit_bad_signature",
                    "the audit signer returned an RSA-PSS signature of the wrong length");
    }
    return signature;
  }
  if (signature.size() != 64) {
    const unsigned char* p = signature.data();
    ECDSA_SIG* parsed = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(signature.size()));
    const bool valid = parsed != nullptr && p == signature.data() + signature.size();
    ECDSA_SIG_free(parsed);
    if (!valid) {
      return Status(Code::kInternal, "audit_bad_signature",
                    "the audit signer returned neither DER nor raw r||s");
    }
    return signature;
  }
  ECDSA_SIG* sig = ECDSA_SIG_new();
  BIGNUM* r = BN_bin2bn(signature.data(), 32, nullptr);
  BIGNUM* s = BN_bin2bn(signature.data() + 32, 32, nullptr);
  if (sig == nullptr || r == nullptr || s == nullptr || ECDSA_SIG_set0(sig, r, s) != 1) {
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(sig);
    return Status(Code::kInternal, "audit_bad_signature", "cannot encode the seal signature");
  }
  unsigned char* der = nullptr;
  const int n = i2d_ECDSA_SIG(sig, &der);
  ECDSA_SIG_free(sig);
  if (n <= 0) return Status(Code::kInternal, "audit_bad_signature", "cannot encode signature");
  std::vector<uint8_t> out(der, der + n);
  OPENSSL_free(der);
  return out;
}

Result<PublicKey> PublicKey::FromPem(const std::string& pem) {
  const auto bad = [](std::string why) {
    return Status(Code::kInvalidArgument, "audit_bad_public_key", std::move(why));
  };
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(pem.data(),
                                                                static_cast<int>(pem.size())),
                                                &BIO_free);
  if (!bio) return bad("cannot read the public key");
  EVP_PKEY* pkey = PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr);
  if (pkey == nullptr) return bad("the audit public key is not a PEM \"PUBLIC KEY\" block");
  char group[64] = {};
  size_t group_length = 0;
  const bool rsa = EVP_PKEY_get_base_id(pkey) == EVP_PKEY_RSA;
  const bool p256 = EVP_PKEY_get_base_id(pkey) == EVP_PKEY_EC &&
                    EVP_PKEY_get_group_name(pkey, group, sizeof group, &group_length) == 1 &&
                    std::string_view(group, group_length) == "prime256v1";
  if (!p256 && !(rsa && EVP_PKEY_get_bits(pkey) >= 3072)) {
    EVP_PKEY_free(pkey);
    return bad("the audit public key is neither an ECDSA P-256 key nor an RSA key of at least "
               "3072 bits");
  }
  unsigned char* der = nullptr;
  const int n = i2d_PUBKEY(pkey, &der);
  if (n <= 0) {
    EVP_PKEY_free(pkey);
    return bad("cannot encode the audit public key");
  }
  PublicKey key;
  key.pkey_ = pkey;
  key.rsa_ = rsa;
  key.key_id_ = Hex(Sha256(std::string_view(reinterpret_cast<const char*>(der),
                                            static_cast<size_t>(n))));
  OPENSSL_free(der);
  return key;
}

PublicKey::PublicKey(PublicKey&& other) noexcept
    : pkey_(std::exchange(other.pkey_, nullptr)),
      key_id_(std::move(other.key_id_)),
      rsa_(other.rsa_) {}

PublicKey& PublicKey::operator=(PublicKey&& other) noexcept {
  if (this != &other) {
    EVP_PKEY_free(static_cast<EVP_PKEY*>(pkey_));
    pkey_ = std::exchange(other.pkey_, nullptr);
    key_id_ = std::move(other.key_id_);
    rsa_ = other.rsa_;
  }
  return *this;
}

PublicKey::~PublicKey() { EVP_PKEY_free(static_cast<EVP_PKEY*>(pkey_)); }

bool PublicKey::VerifyDigest(const Digest& digest, std::span<const uint8_t> signature) const {
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(
      EVP_PKEY_CTX_new(static_cast<EVP_PKEY*>(pkey_), nullptr), &EVP_PKEY_CTX_free);
  if (!ctx || EVP_PKEY_verify_init(ctx.get()) != 1) return false;
  // RSASSA-PSS exactly as CKM_RSA_PKCS_PSS with {CKM_SHA256, CKG_MGF1_SHA256, 32} signs.
  if (rsa_ && (EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PSS_PADDING) != 1 ||
               EVP_PKEY_CTX_set_signature_md(ctx.get(), EVP_sha256()) != 1 ||
               EVP_PKEY_CTX_set_rsa_mgf1_md(ctx.get(), EVP_sha256()) != 1 ||
               EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx.get(), 32) != 1)) {
    return false;
  }
  return EVP_PKEY_verify(ctx.get(), signature.data(), signature.size(), digest.data(),
                         digest.size()) == 1;
}

}  // namespace vecseal::audit::internal
