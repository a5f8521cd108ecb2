#include "vecseal/core/cipher.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <bit>
#include <cassert>
#include <cmath>
#include <cstring>
#include <functional>
#include <future>
#include <new>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kernels.h"
#include "keystream.h"
#include "transform.h"

namespace vecseal::core {

struct Cipher::Transform {
  TransformKind kind;
  SecureBuffer perm;     // permute: π as uint32
  SecureBuffer forward;  // rotate: Qᵀ packed for GEMM, so that C = M·Qᵀ
  SecureBuffer inverse;  // rotate: Q packed, so that M = (C − noise)·Q

  size_t bytes() const { return perm.size() + forward.size() + inverse.size(); }
};

// Transforms by dimension, within kMaxCachedTransforms and kMaxCachedTransformBytes (least
// recently used out first). A dimension is derived by the first thread that asks; the others wait
// for its result instead of deriving their own copy, which for a large rotation would multiply
// seconds of work and hundreds of MiB of peak memory by the number of concurrent requests.
class Cipher::TransformCache {
 public:
  using Entry = std::shared_ptr<const Transform>;

  // Derived, or being derived by another caller.
  bool Contains(size_t dimension) const {
    std::lock_guard lock(mutex_);
    return slots_.contains(dimension);
  }

  Result<Entry> Get(size_t dimension, const std::function<Result<Entry>()>& derive) {
    std::promise<Result<Entry>> promise;
    {
      std::unique_lock lock(mutex_);
      auto it = slots_.find(dimension);
      if (it != slots_.end()) {
        it->second.last_use = ++clock_;
        std::shared_future<Result<Entry>> ready = it->second.ready;
        lock.unlock();
        return ready.get();  // waits while another thread derives it
      }
      slots_.emplace(dimension, Slot{promise.get_future().share(), ++clock_, 0});
    }
    // Derived outside the lock: a large rotation takes seconds and must not stall other sizes.
    Result<Entry> result = [&]() -> Result<Entry> {
      try {
        return derive();
      } catch (const std::bad_alloc&) {
        // Waiters must never be left with a promise that nobody fulfils.
        return Status(
            Code::kResourceExhausted, "out_of_memory",
            "not enough memory to derive the transform for dimension " + std::to_string(dimension));
      }
    }();
    {
      std::lock_guard lock(mutex_);
      auto it = slots_.find(dimension);  // still there: in-flight slots are never evicted
      if (result.ok()) {
        it->second.bytes = (*result)->bytes();
        bytes_ += it->second.bytes;
        EvictLocked(dimension);
      } else {
        slots_.erase(it);  // a later call may retry, e.g. once the HSM is back
      }
    }
    promise.set_value(result);
    return result;
  }

 private:
  // Drops the least recently used derived transforms, never `keep` nor one still in flight, until
  // both bounds hold. Callers still holding an evicted transform keep it alive until they finish.
  void EvictLocked(size_t keep) {
    while (slots_.size() > kMaxCachedTransforms || bytes_ > kMaxCachedTransformBytes) {
      auto victim = slots_.end();
      for (auto it = slots_.begin(); it != slots_.end(); ++it) {
        if (it->first == keep || it->second.bytes == 0) continue;
        if (victim == slots_.end() || it->second.last_use < victim->second.last_use) victim = it;
      }
      if (victim == slots_.end()) return;
      bytes_ -= victim->second.bytes;
      slots_.erase(victim);
    }
  }

  struct Slot {
    std::shared_future<Result<Entry>> ready;
    uint64_t last_use = 0;
    size_t bytes = 0;  // 0 while the derivation is in flight
  };
  mutable std::mutex mutex_;
  std::unordered_map<size_t, Slot> slots_;
  uint64_t clock_ = 0;
  size_t bytes_ = 0;
};

struct Cipher::TokenKey {
  SecureBuffer key;
};

namespace {

constexpr size_t kGemmChunkRows = 48;  // rows staged per GEMM call for rotate
constexpr std::string_view kDomainToken = "vecseal/v1/token";
constexpr std::string_view kDomainTokenV2 = "vecseal/v2/token";

void PutU32(uint8_t* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}

size_t Align64(size_t n) { return (n + 63) / 64 * 64; }

// Per-thread working memory in secure pages: grows, never shrinks, so that the steady state
// allocates nothing per vector or per call.
struct Scratch {
  SecureBuffer buffer;
  detail::KeyStream stream;
  size_t used = 0;  // bytes the last call touched, wiped at its end

  Status Reserve(size_t bytes) {
    if (buffer.size() >= bytes) return Status::Ok();
    auto grown = SecureBuffer::Allocate(std::max(bytes, 2 * buffer.size()));
    if (!grown.ok()) return std::move(grown).TakeStatus();
    buffer = std::move(grown).value();
    return Status::Ok();
  }
};

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

// Where each piece of a call's scratch lives, for vectors of dimension d.
// The noise seeds live here too: a call's own secure allocation would cost five system calls.
struct ScratchLayout {
  size_t pairs, words_offset, z_offset, row_offset, seeds_offset, chunk_offset, total;
  ScratchLayout(size_t d, bool rotate, size_t seeds) {
    pairs = (d + 1) / 2;
    words_offset = 0;
    z_offset = Align64(words_offset + (2 * pairs + 1) * sizeof(uint32_t));
    row_offset = Align64(z_offset + 2 * pairs * sizeof(float));
    seeds_offset = Align64(row_offset + d * sizeof(float));
    chunk_offset = Align64(seeds_offset + seeds * sizeof(Seed));
    total = chunk_offset + (rotate ? kGemmChunkRows * d * sizeof(float) : 0);
  }
};

// Wipes the noise and staged vectors of this call on every exit path.
class ScratchUse {
 public:
  ScratchUse(Scratch& scratch, const ScratchLayout& layout) : scratch_(scratch) {
    status_ = scratch_.Reserve(layout.total);
    if (!status_.ok()) return;  // the pointers stay null; callers check status() first
    scratch_.used = layout.total;
    words = scratch_.buffer.as<uint32_t>();
    z = reinterpret_cast<float*>(scratch_.buffer.data() + layout.z_offset);
    row = reinterpret_cast<float*>(scratch_.buffer.data() + layout.row_offset);
    seeds = std::span<Seed>(reinterpret_cast<Seed*>(scratch_.buffer.data() + layout.seeds_offset),
                            (layout.chunk_offset - layout.seeds_offset) / sizeof(Seed));
    chunk = reinterpret_cast<float*>(scratch_.buffer.data() + layout.chunk_offset);
  }
  ~ScratchUse() {
    SecureWipe(scratch_.buffer.data(), scratch_.used);
    scratch_.stream.Forget();
  }
  const Status& status() const { return status_; }
  detail::KeyStream& stream() { return scratch_.stream; }

  uint32_t* words = nullptr;
  float* z = nullptr;
  float* row = nullptr;
  std::span<Seed> seeds;
  float* chunk = nullptr;

 private:
  Scratch& scratch_;
  Status status_;
};

// The per-vector noise of §6: fills z with z_0..z_{d−1} and returns r/‖z‖.
Result<float> NoiseFor(ScratchUse& scratch, const Seed& seed, uint32_t index, size_t d,
                       double beta) {
  const size_t pairs = (d + 1) / 2;
  VECSEAL_RETURN_IF_ERROR(scratch.stream().Start(seed, index));
  VECSEAL_RETURN_IF_ERROR(scratch.stream().Read(scratch.words, 2 * pairs + 1));
  detail::NormalsFromWords(scratch.words, pairs, scratch.z);
  const double norm = std::sqrt(static_cast<double>(detail::SumOfSquares(scratch.z, d)));
  const double x = detail::UniformFromWord(scratch.words[2 * pairs]);
  const double radius = beta / 4 * std::pow(x, 1.0 / static_cast<double>(d));
  if (!(norm > 0) || !std::isfinite(norm)) {
    return Status(Code::kInternal, "noise_degenerate", "the noise direction has no length");
  }
  return static_cast<float>(radius / norm);
}

// HMAC-SHA256 under TK, truncated to 16 bytes (§7). One context per call, re-initialised per
// vector with the same key, so that tags cost no allocation.
class Tagger {
 public:
  Tagger() = default;
  ~Tagger() {
    EVP_MAC_CTX_free(ctx_);
    EVP_MAC_free(mac_);
  }
  Tagger(const Tagger&) = delete;
  Tagger& operator=(const Tagger&) = delete;

  Status Init(const SecureBuffer& key) {
    mac_ = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    if (mac_ != nullptr) ctx_ = EVP_MAC_CTX_new(mac_);
    char digest[] = "SHA256";
    const OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                                 OSSL_PARAM_END};
    if (ctx_ == nullptr || EVP_MAC_init(ctx_, key.data(), key.size(), params) != 1) {
      return Failed();
    }
    return Status::Ok();
  }

  // The tag of docs/format.md: v1 over (nonce, index), 16 bytes; v2 over its 12-byte nonce, 24.
  Status Compute(KeyFormat format, uint32_t key_version, const Nonce& nonce, uint32_t index,
                 double beta, TransformKind kind, std::span<const float> c,
                 std::array<uint8_t, kTagSizeV2>& tag) {
    const bool v2 = format == KeyFormat::kV2;
    const std::string_view domain = v2 ? kDomainTokenV2 : kDomainToken;
    uint8_t header[64];
    size_t n = 0;
    std::memcpy(header, domain.data(), domain.size());
    n += domain.size();
    header[n++] = 0x00;
    header[n++] = v2 ? kTokenVersionV2 : kTokenVersion;
    PutU32(header + n, key_version);
    n += 4;
    const size_t nonce_size = v2 ? kNonceSizeV2 : kNonceSize;
    std::memcpy(header + n, nonce.data(), nonce_size);
    n += nonce_size;
    if (!v2) {
      PutU32(header + n, index);
      n += 4;
    }
    const auto beta_bits = std::bit_cast<uint64_t>(beta);
    for (int i = 0; i < 8; ++i) header[n++] = static_cast<uint8_t>(beta_bits >> (8 * i));
    header[n++] = static_cast<uint8_t>(kind);
    PutU32(header + n, static_cast<uint32_t>(c.size()));
    n += 4;
    uint8_t full[32];
    size_t out_length = 0;
    const bool ok = EVP_MAC_init(ctx_, nullptr, 0, nullptr) == 1 &&
                    EVP_MAC_update(ctx_, header, n) == 1 && UpdateFloats(c) &&
                    EVP_MAC_final(ctx_, full, &out_length, sizeof(full)) == 1 &&
                    out_length == sizeof(full);
    tag.fill(0);
    if (ok) std::memcpy(tag.data(), full, v2 ? kTagSizeV2 : kTagSize);
    SecureWipe(full, sizeof(full));  // the untruncated MAC is never published
    return ok ? Status::Ok() : Failed();
  }

 private:
  bool UpdateFloats(std::span<const float> c) {
    if constexpr (std::endian::native == std::endian::little) {
      return EVP_MAC_update(ctx_, reinterpret_cast<const uint8_t*>(c.data()),
                            c.size() * sizeof(float)) == 1;
    } else {
      for (float value : c) {
        const auto bits = std::bit_cast<uint32_t>(value);
        uint8_t le[4];
        PutU32(le, bits);
        if (EVP_MAC_update(ctx_, le, sizeof(le)) != 1) return false;
      }
      return true;
    }
  }
  static Status Failed() {
    return Status(Code::kInternal, "hmac_failed", "OpenSSL HMAC-SHA256 for a token tag failed");
  }

  EVP_MAC* mac_ = nullptr;
  EVP_MAC_CTX* ctx_ = nullptr;
};

// The nonces of one call, wiped when the call ends: in one-way mode a nonce is all a key holder
// would need to remove the noise, so no copy of it may outlive the call.
class CallNonces {
 public:
  CallNonces() = default;
  ~CallNonces() { SecureWipe(nonces_.data(), nonces_.size() * sizeof(Nonce)); }
  CallNonces(const CallNonces&) = delete;
  CallNonces& operator=(const CallNonces&) = delete;

  std::vector<Nonce>& get() { return nonces_; }

 private:
  std::vector<Nonce> nonces_;
};

// S_N for each nonce: all messages "vecseal/v1/noise" ‖ 0x00 ‖ nonce in one Derive call.
Status DeriveSeeds(Deriver& deriver, std::span<const Nonce> nonces, std::span<Seed> seeds) {
  assert(seeds.size() >= nonces.size());
  constexpr size_t kSize = kDomainNoise.size() + 1 + kNonceSize;
  std::vector<std::array<uint8_t, kSize>> messages(nonces.size());
  std::vector<std::span<const uint8_t>> spans(nonces.size());
  for (size_t g = 0; g < nonces.size(); ++g) {
    uint8_t* m = messages[g].data();
    std::memcpy(m, kDomainNoise.data(), kDomainNoise.size());
    m[kDomainNoise.size()] = 0x00;
    std::memcpy(m + kDomainNoise.size() + 1, nonces[g].data(), kNonceSize);
    spans[g] = messages[g];
  }
  Status status = deriver.Derive(spans, seeds.first(nonces.size()));
  SecureWipe(messages.data(), messages.size() * kSize);  // they hold the nonces
  return status;
}

// Format v2: S_N of every vector, from its 12-byte nonce, as one EncryptBlocks call.
Status DeriveNoiseSeedsV2(Deriver& deriver, std::span<const Nonce> nonces, std::span<Seed> seeds) {
  assert(seeds.size() >= nonces.size());
  static_assert(sizeof(Seed) == 2 * kBlockSize, "a seed is two blocks");
  std::vector<uint8_t> blocks(nonces.size() * 2 * kBlockSize);
  for (size_t k = 0; k < nonces.size(); ++k) {
    SecretBlocks(BlockDomain::kNoise, std::span<const uint8_t, kBlockInputSize>(nonces[k].data(), kBlockInputSize),
                 blocks.data() + k * 2 * kBlockSize);
  }
  Status status = deriver.EncryptBlocks(
      blocks, std::span<uint8_t>(reinterpret_cast<uint8_t*>(seeds.data()), blocks.size()));
  SecureWipe(blocks.data(), blocks.size());  // they hold the nonces
  return status;
}

Status CheckLengths(std::span<const float> in, std::span<float> out, size_t dimension) {
  if (in.size() % dimension != 0) {
    return Status(Code::kInvalidArgument, "invalid_length",
                  "the input holds " + std::to_string(in.size()) +
                      " values, which is not a whole number of vectors of dimension " +
                      std::to_string(dimension));
  }
  if (out.size() != in.size()) {
    return Status(Code::kInvalidArgument, "invalid_length",
                  "the output holds " + std::to_string(out.size()) +
                      " values but the input holds " + std::to_string(in.size()));
  }
  // In place works vector by vector; a shifted overlap would overwrite inputs not yet read.
  const std::less<const float*> before;
  if (!in.empty() && in.data() != out.data() && before(in.data(), out.data() + out.size()) &&
      before(out.data(), in.data() + in.size())) {
    return Status(Code::kInvalidArgument, "overlapping_buffers",
                  "the output overlaps the input without being the same buffer; pass the same "
                  "buffer to work in place, or two separate ones");
  }
  return Status::Ok();
}

Status TokenCountError(size_t tokens, size_t vectors) {
  return Status(
      Code::kInvalidArgument, "invalid_length",
      std::to_string(tokens) + " tokens were given for " + std::to_string(vectors) + " vectors");
}

}  // namespace

void SecretBlocks(BlockDomain domain, std::span<const uint8_t, kBlockInputSize> input,
                  uint8_t* blocks) {
  for (uint8_t half = 0; half < 2; ++half) {
    uint8_t* block = blocks + half * kBlockSize;
    block[0] = static_cast<uint8_t>(domain);
    block[1] = half;
    block[2] = 0x00;
    block[3] = 0x00;
    std::memcpy(block + 4, input.data(), kBlockInputSize);
  }
}

Status DeriveSecretV2(Deriver& deriver, BlockDomain domain, const BlockInput& input, Seed& out) {
  uint8_t blocks[2 * kBlockSize];
  SecretBlocks(domain, input, blocks);
  return deriver.EncryptBlocks(blocks, out);
}

Result<std::shared_ptr<Cipher>> Cipher::Create(std::shared_ptr<Deriver> deriver,
                                               SchemeParams params) {
  if (deriver == nullptr) {
    return Status(Code::kInvalidArgument, "invalid_deriver", "a Cipher needs a Deriver");
  }
  VECSEAL_RETURN_IF_ERROR(ValidateParams(params));
  return std::shared_ptr<Cipher>(new Cipher(std::move(deriver), params));
}

Cipher::Cipher(std::shared_ptr<Deriver> deriver, SchemeParams params)
    : deriver_(std::move(deriver)), params_(params), transforms_(new TransformCache) {}

Cipher::~Cipher() = default;

bool Cipher::HasTransform(size_t dimension) const { return transforms_->Contains(dimension); }

Result<std::shared_ptr<const Cipher::Transform>> Cipher::TransformFor(size_t dimension) const {
  return transforms_->Get(dimension, [&] { return DeriveTransform(dimension); });
}

Result<std::shared_ptr<const Cipher::Transform>> Cipher::DeriveTransform(size_t dimension) const {
  auto seed_buffer = SecureBuffer::Allocate(sizeof(Seed));
  if (!seed_buffer.ok()) return std::move(seed_buffer).TakeStatus();
  Seed& seed = *seed_buffer->as<Seed>();
  if (format() == KeyFormat::kV2) {
    BlockInput input{};
    input[0] = static_cast<uint8_t>(params_.transform);
    PutU32(input.data() + 1, static_cast<uint32_t>(dimension));
    VECSEAL_RETURN_IF_ERROR(DeriveSecretV2(*deriver_, BlockDomain::kTransform, input, seed));
  } else {
    uint8_t message[64];
    size_t n = kDomainTransform.size();
    std::memcpy(message, kDomainTransform.data(), n);
    message[n++] = 0x00;
    message[n++] = static_cast<uint8_t>(params_.transform);
    PutU32(message + n, static_cast<uint32_t>(dimension));
    n += 4;
    VECSEAL_RETURN_IF_ERROR(deriver_->DeriveOne(std::span<const uint8_t>(message, n), seed));
  }

  auto transform = std::make_shared<Transform>();
  transform->kind = params_.transform;
  const size_t d = dimension;
  if (params_.transform == TransformKind::kPermute) {
    auto perm = SecureBuffer::Allocate(d * sizeof(uint32_t));
    if (!perm.ok()) return std::move(perm).TakeStatus();
    transform->perm = std::move(perm).value();
    VECSEAL_RETURN_IF_ERROR(detail::DerivePermutation(seed, d, transform->perm.as<uint32_t>()));
  } else {
    auto q = detail::DeriveRotation(seed, d);
    if (!q.ok()) return std::move(q).TakeStatus();
    const double* qcol = q->as<const double>();  // Q[row][col] = qcol[col·d + row]
    auto staging = SecureBuffer::Allocate(d * d * sizeof(float));
    auto forward = SecureBuffer::Allocate(detail::PackedBSize(d, d) * sizeof(float));
    auto inverse = SecureBuffer::Allocate(detail::PackedBSize(d, d) * sizeof(float));
    if (!staging.ok()) return std::move(staging).TakeStatus();
    if (!forward.ok()) return std::move(forward).TakeStatus();
    if (!inverse.ok()) return std::move(inverse).TakeStatus();
    float* b = staging->as<float>();
    // Qᵀ row-major is Q column-major.
    for (size_t i = 0; i < d * d; ++i) b[i] = static_cast<float>(qcol[i]);
    detail::PackB(b, d, d, forward->as<float>());
    for (size_t row = 0; row < d; ++row) {
      for (size_t col = 0; col < d; ++col)
        b[row * d + col] = static_cast<float>(qcol[col * d + row]);
    }
    detail::PackB(b, d, d, inverse->as<float>());
    transform->forward = std::move(forward).value();
    transform->inverse = std::move(inverse).value();
  }
  return std::shared_ptr<const Transform>(std::move(transform));
}

Status Cipher::Encrypt(std::span<const float> in, std::span<float> out, size_t dimension,
                       const EncryptOptions& options, std::span<Token> tokens) const {
  Status status = [&]() -> Status {
    VECSEAL_RETURN_IF_ERROR(ValidateDimension(dimension, params_.transform));
    VECSEAL_RETURN_IF_ERROR(CheckLengths(in, out, dimension));
    const size_t d = dimension;
    const size_t n = in.size() / d;
    const bool v2 = format() == KeyFormat::kV2;
    if (options.group_size == 0) {
      return Status(Code::kInvalidArgument, "invalid_group_size",
                    "the group size must be at least 1, got 0");
    }
    if (v2 && options.group_size != 1) {
      return Status(Code::kInvalidArgument, "invalid_group_size",
                    "the group size applies to format v1 keys only; a format v2 key derives "
                    "every vector's own seed, so give 1, got " +
                        std::to_string(options.group_size));
    }
    if (tokens.size() != (options.reversible ? n : 0)) {
      if (!options.reversible) {
        return Status(Code::kInvalidArgument, "invalid_length",
                      "one-way encryption returns no tokens, but room for " +
                          std::to_string(tokens.size()) + " was given");
      }
      return TokenCountError(tokens.size(), n);
    }
    VECSEAL_RETURN_IF_ERROR(ValidateVectors(in, d));
    if (n == 0) return Status::Ok();

    auto transform = TransformFor(d);
    if (!transform.ok()) return std::move(transform).TakeStatus();
    const Transform& t = **transform;
    Tagger tagger;
    if (options.reversible) {
      auto key = TokenKeyFor();
      if (!key.ok()) return std::move(key).TakeStatus();
      VECSEAL_RETURN_IF_ERROR(tagger.Init((*key)->key));
    }

    const size_t group = options.group_size;  // 1 for v2
    const size_t groups = (n + group - 1) / group;
    CallNonces call_nonces;
    std::vector<Nonce>& nonces = call_nonces.get();
    nonces.resize(groups);
    NonceSource& source = options.nonces != nullptr ? *options.nonces : SystemNonceSource();
    VECSEAL_RETURN_IF_ERROR(source.Fill(nonces));
    const bool rotate = t.kind == TransformKind::kRotate;
    ScratchUse scratch(ThreadScratch(), ScratchLayout(d, rotate, nonces.size()));
    VECSEAL_RETURN_IF_ERROR(scratch.status());
    VECSEAL_RETURN_IF_ERROR(v2 ? DeriveNoiseSeedsV2(*deriver_, nonces, scratch.seeds)
                               : DeriveSeeds(*deriver_, nonces, scratch.seeds));
    const Seed* seed = scratch.seeds.data();
    const size_t chunk_rows = rotate ? kGemmChunkRows : 1;
    for (size_t first = 0; first < n; first += chunk_rows) {
      const size_t rows = std::min(chunk_rows, n - first);
      if (rotate) {
        // `out` may alias `in`: stage the inputs before the GEMM overwrites them.
        std::memcpy(scratch.chunk, in.data() + first * d, rows * d * sizeof(float));
        detail::GemmPackedB(scratch.chunk, d, rows, d, t.forward.as<const float>(), d,
                            out.data() + first * d, d);
      }
      for (size_t k = first; k < first + rows; ++k) {
        const auto index = static_cast<uint32_t>(k % group);
        auto scale = NoiseFor(scratch, seed[k / group], index, d, params_.approximation_factor);
        if (!scale.ok()) return std::move(scale).TakeStatus();
        float* c = out.data() + k * d;
        if (rotate) {
          detail::AddScaled(c, scratch.z, *scale, d);
        } else {
          detail::GatherAddScaled(in.data() + k * d, t.perm.as<const uint32_t>(), scratch.z, *scale,
                                  scratch.row, d);
          std::memcpy(c, scratch.row, d * sizeof(float));
        }
        if (options.reversible) {
          TokenFields fields;
          fields.version = v2 ? kTokenVersionV2 : kTokenVersion;
          fields.key_version = params_.key_version;
          fields.nonce = nonces[k / group];
          fields.index = index;
          VECSEAL_RETURN_IF_ERROR(tagger.Compute(format(), params_.key_version, fields.nonce,
                                                 index, params_.approximation_factor,
                                                 params_.transform, std::span<const float>(c, d),
                                                 fields.tag));
          tokens[k] = SerializeToken(fields);
        }
      }
    }
    return ValidateResults(out, d);
  }();
  if (!status.ok()) {
    std::fill(out.begin(), out.end(), 0.0f);
    for (auto& token : tokens) token.fill(0);
  }
  return status;
}

Status Cipher::Decrypt(std::span<const float> in, std::span<float> out, size_t dimension,
                       std::span<const Token> tokens) const {
  Status status = [&]() -> Status {
    VECSEAL_RETURN_IF_ERROR(ValidateDimension(dimension, params_.transform));
    VECSEAL_RETURN_IF_ERROR(CheckLengths(in, out, dimension));
    const size_t d = dimension;
    const size_t n = in.size() / d;
    if (tokens.size() != n) return TokenCountError(tokens.size(), n);
    VECSEAL_RETURN_IF_ERROR(ValidateVectors(in, d));
    if (n == 0) return Status::Ok();

    std::vector<TokenFields> fields(n);
    for (size_t k = 0; k < n; ++k) {
      auto parsed = ParseToken(tokens[k]);
      if (!parsed.ok()) {
        const Status& error = parsed.status();
        return Status(error.code(), error.reason(),
                      "token " + std::to_string(k) + ": " + error.message())
            .WithVectorIndex(k);
      }
      const uint8_t expected_version = format() == KeyFormat::kV2 ? kTokenVersionV2 : kTokenVersion;
      if (parsed->version != expected_version) {
        return Status(Code::kInvalidArgument, "invalid_token",
                      "token " + std::to_string(k) + " is a format v" +
                          std::to_string(parsed->version) + " token, but key version " +
                          std::to_string(params_.key_version) + " is format v" +
                          std::to_string(expected_version) + "; it was not made by this key")
            .WithVectorIndex(k);
      }
      if (parsed->key_version != params_.key_version) {
        return Status(Code::kInvalidArgument, "token_key_version_mismatch",
                      "token " + std::to_string(k) + " was made under key version " +
                          std::to_string(parsed->key_version) + ", but this key is version " +
                          std::to_string(params_.key_version))
            .WithVectorIndex(k);
      }
      fields[k] = *parsed;
    }
    // Every tag is checked before anything secret is recomputed.
    auto key = TokenKeyFor();
    if (!key.ok()) return std::move(key).TakeStatus();
    Tagger tagger;
    VECSEAL_RETURN_IF_ERROR(tagger.Init((*key)->key));
    for (size_t k = 0; k < n; ++k) {
      std::array<uint8_t, kTagSizeV2> expected;  // v1 tags are zero beyond 16 bytes
      VECSEAL_RETURN_IF_ERROR(tagger.Compute(format(), params_.key_version, fields[k].nonce,
                                             fields[k].index, params_.approximation_factor,
                                             params_.transform, in.subspan(k * d, d), expected));
      if (CRYPTO_memcmp(expected.data(), fields[k].tag.data(), expected.size()) != 0) {
        return Status(Code::kAuthenticationFailed, "token_authentication_failed",
                      "token " + std::to_string(k) +
                          " does not authenticate its vector: the vector, the token or the key "
                          "differs from the encryption")
            .WithVectorIndex(k);
      }
    }

    // Consecutive vectors of one v1 group share a nonce, so derive once per run of equal nonces.
    std::vector<Nonce> nonces;
    std::vector<size_t> seed_of(n);
    for (size_t k = 0; k < n; ++k) {
      if (nonces.empty() || nonces.back() != fields[k].nonce) nonces.push_back(fields[k].nonce);
      seed_of[k] = nonces.size() - 1;
    }
    auto transform = TransformFor(d);
    if (!transform.ok()) return std::move(transform).TakeStatus();
    const Transform& t = **transform;

    const bool rotate = t.kind == TransformKind::kRotate;
    ScratchUse scratch(ThreadScratch(), ScratchLayout(d, rotate, nonces.size()));
    VECSEAL_RETURN_IF_ERROR(scratch.status());
    VECSEAL_RETURN_IF_ERROR(format() == KeyFormat::kV2
                                ? DeriveNoiseSeedsV2(*deriver_, nonces, scratch.seeds)
                                : DeriveSeeds(*deriver_, nonces, scratch.seeds));
    const Seed* seed = scratch.seeds.data();
    const size_t chunk_rows = rotate ? kGemmChunkRows : 1;
    for (size_t first = 0; first < n; first += chunk_rows) {
      const size_t rows = std::min(chunk_rows, n - first);
      for (size_t k = first; k < first + rows; ++k) {
        auto scale =
            NoiseFor(scratch, seed[seed_of[k]], fields[k].index, d, params_.approximation_factor);
        if (!scale.ok()) return std::move(scale).TakeStatus();
        if (rotate) {
          float* staged = scratch.chunk + (k - first) * d;
          std::memcpy(staged, in.data() + k * d, d * sizeof(float));
          detail::AddScaled(staged, scratch.z, -*scale, d);
        } else {
          detail::ScatterSubScaled(in.data() + k * d, t.perm.as<const uint32_t>(), scratch.z,
                                   *scale, scratch.row, d);
          std::memcpy(out.data() + k * d, scratch.row, d * sizeof(float));
        }
      }
      if (rotate) {
        detail::GemmPackedB(scratch.chunk, d, rows, d, t.inverse.as<const float>(), d,
                            out.data() + first * d, d);
      }
    }
    return ValidateResults(out, d);
  }();
  if (!status.ok()) std::fill(out.begin(), out.end(), 0.0f);
  return status;
}

Status Cipher::ApplyTransform(std::span<const float> in, std::span<float> out,
                              size_t dimension) const {
  VECSEAL_RETURN_IF_ERROR(ValidateDimension(dimension, params_.transform));
  VECSEAL_RETURN_IF_ERROR(CheckLengths(in, out, dimension));
  VECSEAL_RETURN_IF_ERROR(ValidateVectors(in, dimension));
  const size_t d = dimension;
  const size_t n = in.size() / d;
  if (n == 0) return Status::Ok();
  auto transform = TransformFor(d);
  if (!transform.ok()) return std::move(transform).TakeStatus();
  const Transform& t = **transform;
  const bool rotate = t.kind == TransformKind::kRotate;
  ScratchUse scratch(ThreadScratch(), ScratchLayout(d, rotate, /*seeds=*/0));
  VECSEAL_RETURN_IF_ERROR(scratch.status());
  std::fill(scratch.z, scratch.z + d, 0.0f);
  for (size_t first = 0; first < n; first += kGemmChunkRows) {
    const size_t rows = std::min(kGemmChunkRows, n - first);
    if (rotate) {
      std::memcpy(scratch.chunk, in.data() + first * d, rows * d * sizeof(float));
      detail::GemmPackedB(scratch.chunk, d, rows, d, t.forward.as<const float>(), d,
                          out.data() + first * d, d);
      continue;
    }
    for (size_t k = first; k < first + rows; ++k) {
      detail::GatherAddScaled(in.data() + k * d, t.perm.as<const uint32_t>(), scratch.z, 0.0f,
                              scratch.row, d);
      std::memcpy(out.data() + k * d, scratch.row, d * sizeof(float));
    }
  }
  return Status::Ok();
}

Result<std::shared_ptr<const Cipher::TokenKey>> Cipher::TokenKeyFor() const {
  {
    std::lock_guard lock(token_key_mutex_);
    if (token_key_ != nullptr) return token_key_;
  }
  // Two first users may both derive TK; they get the same bytes and the loser's copy is wiped.
  auto key = std::make_shared<TokenKey>();
  auto buffer = SecureBuffer::Allocate(sizeof(Seed));
  if (!buffer.ok()) return std::move(buffer).TakeStatus();
  key->key = std::move(buffer).value();
  if (format() == KeyFormat::kV2) {
    VECSEAL_RETURN_IF_ERROR(
        DeriveSecretV2(*deriver_, BlockDomain::kTokenKey, BlockInput{}, *key->key.as<Seed>()));
  } else {
    uint8_t message[32];
    std::memcpy(message, kDomainTokenKey.data(), kDomainTokenKey.size());
    message[kDomainTokenKey.size()] = 0x00;
    VECSEAL_RETURN_IF_ERROR(deriver_->DeriveOne(
        std::span<const uint8_t>(message, kDomainTokenKey.size() + 1), *key->key.as<Seed>()));
  }
  std::lock_guard lock(token_key_mutex_);
  if (token_key_ == nullptr) token_key_ = std::move(key);
  return token_key_;
}

}  // namespace vecseal::core
