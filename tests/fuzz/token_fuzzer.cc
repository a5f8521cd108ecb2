// Reversible-mode tokens, binary (core::ParseToken, Cipher::Decrypt) and as the API carries them
// (base64, daemon::DecodeTokens). Input: a 41-byte token followed by one ciphertext vector of
// float32le. Invariants: ParseToken accepts exactly the 41-byte version-1 and version-2 strings and
// SerializeToken gives the same bytes back; Decrypt accepts nothing but the one genuine
// (token, ciphertext) pair made at start-up, and returns its plaintext; base64 decoding is
// canonical (encode(decode(t)) == t) and DecodeTokens accepts exactly base64 of 41 bytes.
#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "vecseal/core/cipher.h"
#include "vecseal/core/deriver.h"
#include "vecseal/daemon/vector_codec.h"

namespace {

using vecseal::core::kTokenSize;

constexpr std::array<float, 4> kPlaintext = {0.6f, 0.8f, 0.0f, 0.0f};
constexpr uint32_t kKeyVersion = 3;

class FixedNonce final : public vecseal::core::NonceSource {
 public:
  vecseal::Status Next(vecseal::core::Nonce& nonce) override {
    for (size_t i = 0; i < nonce.size(); ++i) nonce[i] = static_cast<uint8_t>(0xa0 + i);
    return vecseal::Status::Ok();
  }
};

struct State {
  std::shared_ptr<vecseal::core::Cipher> cipher;
  std::vector<uint8_t> genuine;  // token ‖ ciphertext
};

State* g_state = nullptr;

void WriteSeeds(const std::string& dir) {
  const std::vector<uint8_t>& genuine = g_state->genuine;
  const auto put = [&](const std::string& name, std::vector<uint8_t> bytes) {
    FILE* file = std::fopen((dir + "/" + name).c_str(), "wb");
    VECSEAL_FUZZ_CHECK(file != nullptr, "cannot write seed %s", name.c_str());
    std::fwrite(bytes.data(), 1, bytes.size(), file);
    std::fclose(file);
  };
  put("genuine", genuine);
  std::vector<uint8_t> bad_tag = genuine;
  bad_tag[kTokenSize - 1] ^= 1;
  put("tag_flipped", bad_tag);
  std::vector<uint8_t> bad_version = genuine;
  bad_version[0] = 2;
  put("format_version_2", bad_version);
  std::vector<uint8_t> other_key_version = genuine;
  other_key_version[1] = 4;
  put("key_version_4", other_key_version);
  std::vector<uint8_t> moved = genuine;
  moved[kTokenSize] ^= 0x40;
  put("ciphertext_changed", moved);
  put("token_only", std::vector<uint8_t>(genuine.begin(), genuine.begin() + kTokenSize));
  const std::string text = vecseal::daemon::Base64Encode(
      std::span<const uint8_t>(genuine.data(), kTokenSize));
  put("token_base64", std::vector<uint8_t>(text.begin(), text.end()));
  put("base64_noncanonical", {'Q', 'R', '=', '='});
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::array<uint8_t, 32> key{};
  for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<uint8_t>(i * 7 + 1);
  auto deriver = vecseal::core::SoftwareDeriver::Create(key);
  VECSEAL_FUZZ_CHECK(deriver.ok(), "SoftwareDeriver: %s", deriver.status().ToString().c_str());
  vecseal::core::SchemeParams params{.approximation_factor = 2.5,
                                     .transform = vecseal::core::TransformKind::kPermute,
                                     .key_version = kKeyVersion};
  auto cipher = vecseal::core::Cipher::Create(std::move(deriver).value(), params);
  VECSEAL_FUZZ_CHECK(cipher.ok(), "Cipher: %s", cipher.status().ToString().c_str());

  g_state = new State{.cipher = std::move(cipher).value(), .genuine = {}};
  FixedNonce nonces;
  std::array<float, kPlaintext.size()> ciphertext{};
  std::array<vecseal::core::Token, 1> tokens{};
  const vecseal::Status encrypted = g_state->cipher->Encrypt(
      kPlaintext, ciphertext, kPlaintext.size(),
      vecseal::core::EncryptOptions{.reversible = true, .group_size = 1, .nonces = &nonces},
      tokens);
  VECSEAL_FUZZ_CHECK(encrypted.ok(), "Encrypt: %s", encrypted.ToString().c_str());
  g_state->genuine.assign(tokens[0].begin(), tokens[0].end());
  const auto* bytes = reinterpret_cast<const uint8_t*>(ciphertext.data());
  g_state->genuine.insert(g_state->genuine.end(), bytes, bytes + sizeof(ciphertext));
  if (const char* dir = std::getenv("VECSEAL_FUZZ_WRITE_SEEDS")) WriteSeeds(dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using vecseal::fuzz::CheckTypedError;
  const std::span<const uint8_t> input(data, size);

  // The binary token alone.
  const auto head = input.first(std::min(size, kTokenSize + 1));
  auto parsed = vecseal::core::ParseToken(head.first(std::min(head.size(), kTokenSize)));
  const bool parseable = size >= kTokenSize && (data[0] == vecseal::core::kTokenVersion ||
                                                data[0] == vecseal::core::kTokenVersionV2);
  VECSEAL_FUZZ_CHECK(parsed.ok() == parseable, "ParseToken verdict %d for size %zu",
                     parsed.ok(), size);
  if (parsed.ok()) {
    const vecseal::core::Token again = vecseal::core::SerializeToken(*parsed);
    VECSEAL_FUZZ_CHECK(std::memcmp(again.data(), data, kTokenSize) == 0,
                       "SerializeToken(ParseToken(t)) != t");
  } else {
    CheckTypedError(parsed.status(), {"invalid_token"});
  }
  auto too_long = vecseal::core::ParseToken(head);
  VECSEAL_FUZZ_CHECK(!too_long.ok() || head.size() == kTokenSize, "accepted %zu bytes",
                     head.size());

  // Token plus one ciphertext vector: only the genuine pair decrypts.
  if (size > kTokenSize && (size - kTokenSize) % sizeof(float) == 0 &&
      (size - kTokenSize) / sizeof(float) <= 512) {
    const size_t dimension = (size - kTokenSize) / sizeof(float);
    std::array<vecseal::core::Token, 1> token{};
    std::memcpy(token[0].data(), data, kTokenSize);
    std::vector<float> ciphertext(dimension);
    std::memcpy(ciphertext.data(), data + kTokenSize, dimension * sizeof(float));
    std::vector<float> plaintext(dimension);
    const vecseal::Status decrypted =
        g_state->cipher->Decrypt(ciphertext, plaintext, dimension, token);
    const bool genuine = size == g_state->genuine.size() &&
                         std::memcmp(data, g_state->genuine.data(), size) == 0;
    VECSEAL_FUZZ_CHECK(decrypted.ok() == genuine, "Decrypt verdict %d for a %s pair (%s)",
                       decrypted.ok(), genuine ? "genuine" : "forged",
                       decrypted.ToString().c_str());
    if (decrypted.ok()) {
      for (size_t i = 0; i < dimension; ++i) {
        VECSEAL_FUZZ_CHECK(std::fabs(plaintext[i] - kPlaintext[i]) < 1e-4f,
                           "decrypted component %zu is %g, not %g", i, plaintext[i],
                           kPlaintext[i]);
      }
    } else {
      CheckTypedError(decrypted, {"invalid_token", "token_authentication_failed",
                                  "token_key_version_mismatch", "non_finite_value"});
    }
  }

  // The same bytes as the API's base64 text.
  const std::string text(reinterpret_cast<const char*>(data), size);
  const auto decoded = vecseal::daemon::Base64Decode(text);
  if (decoded) {
    VECSEAL_FUZZ_CHECK(vecseal::daemon::Base64Encode(*decoded) == text,
                       "base64 decoding is not canonical");
  }
  const std::vector<std::string> texts = {text};
  auto tokens = vecseal::daemon::DecodeTokens(texts);
  VECSEAL_FUZZ_CHECK(tokens.ok() == (decoded && decoded->size() == kTokenSize),
                     "DecodeTokens verdict %d", tokens.ok());
  if (tokens.ok()) {
    VECSEAL_FUZZ_CHECK(std::memcmp((*tokens)[0].data(), decoded->data(), kTokenSize) == 0,
                       "DecodeTokens changed the bytes");
  } else {
    CheckTypedError(tokens.status(), {"invalid_token"});
    VECSEAL_FUZZ_CHECK(tokens.status().vector_index() == 0u, "invalid_token without its index");
  }
  return 0;
}
