// The Scale-And-Perturb (SAP) DCPE scheme, formats v1 and v2 (docs/format.md):
//   c = T(m) + r·u/‖u‖,  u ~ N(0, I_d),  r = (β/4)·x'^(1/d),  x' ~ U(0,1)
// with T a key-derived permutation or Haar rotation, and u, x' drawn from a ChaCha20 stream
// keyed by a seed that the Deriver computes from a fresh nonce. The key's format (its Deriver's)
// decides how seeds are derived: v1 with one HMAC per nonce group, v2 with one AES block pair
// per vector, all of a call's in one operation.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string_view>

#include "vecseal/core/deriver.h"
#include "vecseal/core/status.h"

namespace vecseal::core {

inline constexpr size_t kMaxDimension = 65536;
// A rotation is a d×d matrix derived by QR; beyond this it costs too much memory and time.
inline constexpr size_t kMaxRotateDimension = 4096;

// A Cipher caches the transforms it derives, per dimension, and evicts the least recently used
// beyond either bound. A deployment uses one or two dimensions per key; the bound stops a caller
// that cycles through dimensions from making the process hold one derived transform (up to
// 128 MiB for a rotation at d = 4096) per dimension.
inline constexpr size_t kMaxCachedTransforms = 8;
inline constexpr size_t kMaxCachedTransformBytes = size_t{512} << 20;

// Domain-separation prefixes for every HMAC under a format v1 model key (docs/format.md §2).
inline constexpr std::string_view kDomainTransform = "vecseal/v1/transform";
inline constexpr std::string_view kDomainNoise = "vecseal/v1/noise";
inline constexpr std::string_view kDomainTokenKey = "vecseal/v1/token-key";
inline constexpr std::string_view kDomainParams = "vecseal/v1/params";
inline constexpr std::string_view kDomainParamsV2 = "vecseal/v2/params";

// Format v2: byte 0 of every block under the key, so that no two purposes share a block.
enum class BlockDomain : uint8_t { kTransform = 1, kTokenKey = 2, kParamsKey = 3, kNoise = 4 };
inline constexpr size_t kBlockInputSize = 12;
using BlockInput = std::array<uint8_t, kBlockInputSize>;
// The two blocks whose encryptions are the 32-byte secret of (domain, input): 32 bytes.
void SecretBlocks(BlockDomain domain, std::span<const uint8_t, kBlockInputSize> input,
                  uint8_t* blocks);
// One 32-byte secret of a v2 key, e.g. the parameters key of the PKCS#11 layer.
Status DeriveSecretV2(Deriver& deriver, BlockDomain domain, const BlockInput& input, Seed& out);

enum class TransformKind : uint8_t { kPermute = 1, kRotate = 2 };
std::string_view TransformName(TransformKind kind);  // "permute" | "rotate"
Result<TransformKind> ParseTransform(std::string_view name);

struct SchemeParams {
  double approximation_factor = 0;  // β: finite and > 0
  TransformKind transform = TransformKind::kRotate;
  uint32_t key_version = 1;
};
Status ValidateParams(const SchemeParams& params);

// 0 < d <= kMaxDimension (kMaxRotateDimension for rotate).
Status ValidateDimension(size_t dimension, TransformKind transform);
// `data` holds n×d row-major floats: its size must be a multiple of d and every value finite.
// Errors name the offending vector index.
Status ValidateVectors(std::span<const float> data, size_t dimension);
// Every value of a call's result must be finite: an input near float32's limit can overflow
// once rotated or perturbed. kInvalidArgument "non_finite_value" naming the vector.
Status ValidateResults(std::span<const float> data, size_t dimension);
// For row-by-row input (JSON): all rows must have the length of row 0; names the first that
// does not.
Result<size_t> CommonDimension(std::span<const size_t> row_lengths);

// Reversible-mode tokens are 41 bytes in both formats, so that every wire format carries either:
//   v1: version 1 ‖ key_version(u32le) ‖ nonce(16) ‖ index(u32le) ‖ tag(16)
//   v2: version 2 ‖ key_version(u32le) ‖ nonce(12) ‖ tag(24)
// The version byte is the key format's number.
inline constexpr size_t kNonceSize = 16;
inline constexpr size_t kNonceSizeV2 = 12;
inline constexpr size_t kTagSize = 16;
inline constexpr size_t kTagSizeV2 = 24;
inline constexpr size_t kTokenSize = 41;
inline constexpr uint8_t kTokenVersion = 1;
inline constexpr uint8_t kTokenVersionV2 = 2;
// A v2 vector's nonce is the first kNonceSizeV2 bytes of one Nonce.
using Nonce = std::array<uint8_t, kNonceSize>;
using Token = std::array<uint8_t, kTokenSize>;

struct TokenFields {
  uint8_t version = kTokenVersion;
  uint32_t key_version = 0;
  Nonce nonce{};                          // v2: the first 12 bytes, the rest zero
  uint32_t index = 0;                     // v1 only
  std::array<uint8_t, kTagSizeV2> tag{};  // v1: the first 16 bytes, the rest zero
};
// Either version; kInvalidArgument "invalid_token" for any other length or version byte.
Result<TokenFields> ParseToken(std::span<const uint8_t> bytes);
Token SerializeToken(const TokenFields& fields);

// Where nonces come from: the OS CSPRNG by default; tests inject fixed ones for known answers.
class NonceSource {
 public:
  virtual ~NonceSource() = default;
  virtual Status Next(Nonce& nonce) = 0;
  // Every nonce of one call (one per group in v1, one per vector in v2, which uses the first 12
  // bytes of each); by default one Next each. The OS source overrides it with a single
  // request, because each request to the OpenSSL DRBG has a fixed cost (about 0.7 µs here) that
  // would otherwise dominate encryption at group size 1.
  virtual Status Fill(std::span<Nonce> nonces);
};
NonceSource& SystemNonceSource();

struct EncryptOptions {
  bool reversible = false;
  // Format v1: vectors sharing one nonce, and so one derivation; 1 means one derivation per
  // vector. A v2 key derives every vector's own seed and refuses any other value than 1.
  uint32_t group_size = 1;
  NonceSource* nonces = nullptr;  // null: SystemNonceSource()
};

// One model key version. Thread-safe; derives T once per dimension (concurrent first users wait
// for one derivation) and caches it in secure memory within the bounds above.
class Cipher {
 public:
  static Result<std::shared_ptr<Cipher>> Create(std::shared_ptr<Deriver> deriver,
                                                SchemeParams params);
  ~Cipher();

  const SchemeParams& params() const { return params_; }
  KeyFormat format() const { return deriver_->format(); }

  // Encrypts n = in.size()/d vectors into `out`, which may be `in` itself but must not otherwise
  // overlap it. `tokens` holds n entries
  // when options.reversible, else is empty. On error, `out` and `tokens` are wiped.
  Status Encrypt(std::span<const float> in, std::span<float> out, size_t dimension,
                 const EncryptOptions& options, std::span<Token> tokens) const;

  // Checks every token's tag before recomputing anything, then removes the noise and inverts T.
  // tokens.size() == n, and every token must carry this key's version and format.
  Status Decrypt(std::span<const float> in, std::span<float> out, size_t dimension,
                 std::span<const Token> tokens) const;

  // True when T for `dimension` is cached or being derived: a call at it derives nothing new.
  bool HasTransform(size_t dimension) const;

  // T(m) alone, without noise: for tests and for calibration's attacks.
  Status ApplyTransform(std::span<const float> in, std::span<float> out, size_t dimension) const;

 private:
  struct Transform;
  struct TokenKey;
  class TransformCache;
  Cipher(std::shared_ptr<Deriver> deriver, SchemeParams params);
  Result<std::shared_ptr<const Transform>> TransformFor(size_t dimension) const;
  Result<std::shared_ptr<const Transform>> DeriveTransform(size_t dimension) const;
  // TK of docs/format.md §1, derived on first use so that one-way use never asks for it.
  Result<std::shared_ptr<const TokenKey>> TokenKeyFor() const;

  std::shared_ptr<Deriver> deriver_;
  SchemeParams params_;
  const std::unique_ptr<TransformCache> transforms_;
  mutable std::mutex token_key_mutex_;
  mutable std::shared_ptr<const TokenKey> token_key_;
};

}  // namespace vecseal::core
