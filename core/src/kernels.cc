#include "kernels.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <numbers>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define VECSEAL_X86 1
#define VECSEAL_AVX2 __attribute__((target("avx2,fma")))
#define VECSEAL_AVX512 __attribute__((target("avx2,fma,avx512f,avx512vl,avx512dq,avx512bw")))
#else
#define VECSEAL_X86 0
#endif

#define VECSEAL_INLINE inline __attribute__((always_inline))

namespace vecseal::core::detail {
namespace {

// The bodies below are branch-free loops written so that the compiler vectorises them; each is
// compiled three times, for AVX-512, for AVX2+FMA and for the baseline ISA.

// mask ? a : b for mask all-ones or zero, in integer operations so that loops stay
// branch-free and vectorise.
VECSEAL_INLINE float Select(uint32_t mask, float a, float b) {
  return std::bit_cast<float>((std::bit_cast<uint32_t>(a) & mask) |
                              (std::bit_cast<uint32_t>(b) & ~mask));
}

VECSEAL_INLINE uint32_t MaskIf(bool condition) { return 0u - static_cast<uint32_t>(condition); }

// ln(a) for a = U(w), to float precision even as a → 1, where a itself is not representable:
// a = 2^e·m with m ∈ [√½, √2), and when e = 0 the offset m − 1 = −(1 − a) is formed from the
// integer ~w exactly instead of from the rounded a.
VECSEAL_INLINE float LogUniform(uint32_t w) {
  const float a = static_cast<float>(static_cast<int32_t>(w >> 1)) * 0x1p-31f + 0x1p-33f +
                  static_cast<float>(static_cast<int32_t>(w & 1u)) * 0x1p-32f;
  const uint32_t bits = std::bit_cast<uint32_t>(a);
  const uint32_t mantissa = bits & 0x007fffffu;
  const uint32_t high = mantissa > 0x3504f3u ? 1u : 0u;  // m > √2: halve m, bump e
  const float m = std::bit_cast<float>(mantissa | (0x3f800000u - (high << 23)));
  const int32_t e = static_cast<int32_t>(bits >> 23) - 127 + static_cast<int32_t>(high);
  const uint32_t rest = ~w;
  const float one_minus_a = static_cast<float>(static_cast<int32_t>(rest >> 1)) * 0x1p-31f +
                            0x1p-33f +
                            static_cast<float>(static_cast<int32_t>(rest & 1u)) * 0x1p-32f;
  const float f = Select(MaskIf(e == 0), -one_minus_a, m - 1.0f);
  const float s = f / (2.0f + f);
  const float s2 = s * s;
  // 2·atanh(s) = ln((1+s)/(1−s)) = ln(m); |s| ≤ 0.1716, so terms to s^9 reach float precision.
  const float series = 1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9))));
  const float ln_m = 2.0f * s * series;
  const float ef = static_cast<float>(e);
  return ef * 0.693145752f + (ef * 1.42860677e-06f + ln_m);  // ln 2 split hi + lo
}

// (cos 2πb, sin 2πb) for b = U(w): the top two bits (after rounding) pick the quadrant and the
// rest, centred, gives an angle in (−π/4, π/4) with no precision lost to reduction.
VECSEAL_INLINE void SinCosUniform(uint32_t w, float& c, float& s) {
  const uint32_t shifted = w + (1u << 29);
  const uint32_t quadrant = shifted >> 30;
  const int32_t offset = static_cast<int32_t>(shifted & ((1u << 30) - 1)) - (1 << 29);
  const float t = (static_cast<float>(offset) + 0.5f) * (0x1p-30f * std::numbers::pi_v<float> / 2);
  const float t2 = t * t;
  const float sin_t =
      t *
      (1.0f + t2 * (-1.0f / 6 + t2 * (1.0f / 120 + t2 * (-1.0f / 5040 + t2 * (1.0f / 362880)))));
  const float cos_t =
      1.0f + t2 * (-0.5f + t2 * (1.0f / 24 + t2 * (-1.0f / 720 + t2 * (1.0f / 40320))));
  // Quadrant q rotates by q·π/2: odd q swaps sine and cosine; q ∈ {1, 2} negates the cosine,
  // q ∈ {2, 3} the sine.
  const uint32_t swap = 0u - (quadrant & 1u);
  const uint32_t cos_sign = ((quadrant + 1u) & 2u) << 30;
  const uint32_t sin_sign = (quadrant & 2u) << 30;
  c = std::bit_cast<float>(std::bit_cast<uint32_t>(Select(swap, sin_t, cos_t)) ^ cos_sign);
  s = std::bit_cast<float>(std::bit_cast<uint32_t>(Select(swap, cos_t, sin_t)) ^ sin_sign);
}

VECSEAL_INLINE void NormalsBody(const uint32_t* __restrict words, size_t pairs,
                                float* __restrict z) {
  for (size_t k = 0; k < pairs; ++k) {
    const float rho = std::sqrt(-2.0f * LogUniform(words[2 * k]));
    float c, s;
    SinCosUniform(words[2 * k + 1], c, s);
    z[2 * k] = rho * c;
    z[2 * k + 1] = rho * s;
  }
}

VECSEAL_INLINE float SumOfSquaresBody(const float* __restrict x, size_t n) {
  // Independent partial sums so that the loop vectorises without reassociation flags.
  constexpr size_t kLanes = 16;
  float acc[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (size_t l = 0; l < kLanes; ++l) acc[l] += x[i + l] * x[i + l];
  }
  for (; i < n; ++i) acc[0] += x[i] * x[i];
  float total = 0;
  for (float a : acc) total += a;
  return total;
}

VECSEAL_INLINE bool AllFiniteBody(const float* __restrict x, size_t n) {
  // A value is NaN or ±Inf exactly when its exponent bits are all ones.
  uint32_t worst = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t exponent = std::bit_cast<uint32_t>(x[i]) & 0x7f800000u;
    worst = exponent > worst ? exponent : worst;
  }
  return worst != 0x7f800000u;
}

VECSEAL_INLINE void GatherBody(const float* __restrict m, const uint32_t* __restrict perm,
                               const float* __restrict z, float k, float* __restrict out,
                               size_t d) {
  for (size_t i = 0; i < d; ++i) out[i] = m[perm[i]] + k * z[i];
}

VECSEAL_INLINE void ScatterBody(const float* __restrict c, const uint32_t* __restrict perm,
                                const float* __restrict z, float k, float* __restrict out,
                                size_t d) {
  for (size_t i = 0; i < d; ++i) out[perm[i]] = c[i] - k * z[i];
}

VECSEAL_INLINE void AddScaledBody(float* __restrict x, const float* __restrict z, float k,
                                  size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] += k * z[i];
}

VECSEAL_INLINE void ReflectBody(const double* __restrict v, double* __restrict x, size_t n) {
  constexpr size_t kLanes = 8;
  double acc[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (size_t l = 0; l < kLanes; ++l) acc[l] += v[i + l] * x[i + l];
  }
  for (; i < n; ++i) acc[0] += v[i] * x[i];
  double dot = 0;
  for (double a : acc) dot += a;
  const double scale = 2.0 * dot;
  for (i = 0; i < n; ++i) x[i] -= scale * v[i];
}

constexpr size_t kTileRows = 6;
constexpr size_t kRowBlock = 96;     // rows of A kept in L2 while the panels stream past
constexpr size_t kDepthBlock = 256;  // depth per pass: a 16-wide panel slice (16 KiB) stays in L1

// One 6×16 tile of C over depth k, stored or (accumulate) added; rows past `rows` repeat the last
// row and are not stored, columns past `cols` hit zero padding and are not stored.
void TilePortable(const float* a, size_t lda, size_t rows, size_t k, const float* panel, float* c,
                  size_t ldc, size_t cols, bool accumulate) {
  const float* row[kTileRows];
  for (size_t r = 0; r < kTileRows; ++r) row[r] = a + std::min(r, rows - 1) * lda;
  float acc[kTileRows][kGemmPanelWidth] = {};
  for (size_t p = 0; p < k; ++p) {
    const float* b = panel + p * kGemmPanelWidth;
    for (size_t r = 0; r < kTileRows; ++r) {
      const float av = row[r][p];
      for (size_t j = 0; j < kGemmPanelWidth; ++j) acc[r][j] += av * b[j];
    }
  }
  for (size_t r = 0; r < rows; ++r) {
    for (size_t j = 0; j < cols; ++j)
      c[r * ldc + j] = (accumulate ? c[r * ldc + j] : 0.0f) + acc[r][j];
  }
}

#if VECSEAL_X86
VECSEAL_AVX2 void TileAvx2(const float* a, size_t lda, size_t rows, size_t k, const float* panel,
                           float* c, size_t ldc, size_t cols, bool accumulate) {
  const float* row[kTileRows];
  for (size_t r = 0; r < kTileRows; ++r) row[r] = a + std::min(r, rows - 1) * lda;
  __m256 acc[kTileRows][2];
  for (auto& pair : acc) pair[0] = pair[1] = _mm256_setzero_ps();
  for (size_t p = 0; p < k; ++p) {
    const __m256 b0 = _mm256_loadu_ps(panel + p * kGemmPanelWidth);
    const __m256 b1 = _mm256_loadu_ps(panel + p * kGemmPanelWidth + 8);
    for (size_t r = 0; r < kTileRows; ++r) {
      const __m256 av = _mm256_broadcast_ss(row[r] + p);
      acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
    }
  }
  if (cols == kGemmPanelWidth) {
    for (size_t r = 0; r < rows; ++r) {
      float* out = c + r * ldc;
      if (accumulate) {
        acc[r][0] = _mm256_add_ps(acc[r][0], _mm256_loadu_ps(out));
        acc[r][1] = _mm256_add_ps(acc[r][1], _mm256_loadu_ps(out + 8));
      }
      _mm256_storeu_ps(out, acc[r][0]);
      _mm256_storeu_ps(out + 8, acc[r][1]);
    }
    return;
  }
  alignas(32) float tile[kGemmPanelWidth];
  for (size_t r = 0; r < rows; ++r) {
    _mm256_store_ps(tile, acc[r][0]);
    _mm256_store_ps(tile + 8, acc[r][1]);
    for (size_t j = 0; j < cols; ++j)
      c[r * ldc + j] = (accumulate ? c[r * ldc + j] : 0.0f) + tile[j];
  }
}

// AVX-512: each 16-wide panel row is one register, so a 12×16 tile fits 12 accumulators.
constexpr size_t kTileRows512 = 12;
VECSEAL_AVX512 void TileAvx512(const float* a, size_t lda, size_t rows, size_t k,
                               const float* panel, float* c, size_t ldc, size_t cols,
                               bool accumulate) {
  const float* row[kTileRows512];
  for (size_t r = 0; r < kTileRows512; ++r) row[r] = a + std::min(r, rows - 1) * lda;
  __m512 acc[kTileRows512];
  for (auto& v : acc) v = _mm512_setzero_ps();
  for (size_t p = 0; p < k; ++p) {
    const __m512 b = _mm512_loadu_ps(panel + p * kGemmPanelWidth);
    for (size_t r = 0; r < kTileRows512; ++r) {
      acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(row[r][p]), b, acc[r]);
    }
  }
  const auto mask = static_cast<__mmask16>((1u << cols) - 1);
  for (size_t r = 0; r < rows; ++r) {
    float* out = c + r * ldc;
    if (accumulate) acc[r] = _mm512_add_ps(acc[r], _mm512_maskz_loadu_ps(mask, out));
    _mm512_mask_storeu_ps(out, mask, acc[r]);
  }
}
#endif

using TileFn = void (*)(const float*, size_t, size_t, size_t, const float*, float*, size_t, size_t,
                        bool);

void GemmWith(TileFn tile, size_t tile_rows, const float* a, size_t lda, size_t n, size_t k,
              const float* packed_b, size_t m, float* c, size_t ldc) {
  const size_t panels = (m + kGemmPanelWidth - 1) / kGemmPanelWidth;
  for (size_t p0 = 0; p0 < k; p0 += kDepthBlock) {
    const size_t depth = std::min(kDepthBlock, k - p0);
    for (size_t i0 = 0; i0 < n; i0 += kRowBlock) {
      const size_t i_end = std::min(n, i0 + kRowBlock);
      for (size_t q = 0; q < panels; ++q) {
        const float* panel = packed_b + q * kGemmPanelWidth * k + p0 * kGemmPanelWidth;
        const size_t j0 = q * kGemmPanelWidth;
        const size_t cols = std::min(kGemmPanelWidth, m - j0);
        for (size_t i = i0; i < i_end; i += tile_rows) {
          tile(a + i * lda + p0, lda, std::min(tile_rows, i_end - i), depth, panel,
               c + i * ldc + j0, ldc, cols, p0 > 0);
        }
      }
    }
  }
}

struct Kernels {
  const char* name;
  void (*normals)(const uint32_t*, size_t, float*);
  float (*sum_of_squares)(const float*, size_t);
  bool (*all_finite)(const float*, size_t);
  void (*gather)(const float*, const uint32_t*, const float*, float, float*, size_t);
  void (*scatter)(const float*, const uint32_t*, const float*, float, float*, size_t);
  void (*add_scaled)(float*, const float*, float, size_t);
  void (*reflect)(const double*, double*, size_t);
  TileFn tile;
  size_t tile_rows;
};

#define VECSEAL_DEFINE_KERNELS(suffix, attr)                                                       \
  attr void Normals##suffix(const uint32_t* w, size_t pairs, float* z) {                           \
    NormalsBody(w, pairs, z);                                                                      \
  }                                                                                                \
  attr float SumOfSquares##suffix(const float* x, size_t n) { return SumOfSquaresBody(x, n); }     \
  attr bool AllFinite##suffix(const float* x, size_t n) { return AllFiniteBody(x, n); }            \
  attr void Gather##suffix(const float* m, const uint32_t* p, const float* z, float k, float* out, \
                           size_t d) {                                                             \
    GatherBody(m, p, z, k, out, d);                                                                \
  }                                                                                                \
  attr void Scatter##suffix(const float* c, const uint32_t* p, const float* z, float k,            \
                            float* out, size_t d) {                                                \
    ScatterBody(c, p, z, k, out, d);                                                               \
  }                                                                                                \
  attr void AddScaled##suffix(float* x, const float* z, float k, size_t n) {                       \
    AddScaledBody(x, z, k, n);                                                                     \
  }                                                                                                \
  attr void Reflect##suffix(const double* v, double* x, size_t n) { ReflectBody(v, x, n); }

VECSEAL_DEFINE_KERNELS(Portable, )
#if VECSEAL_X86
VECSEAL_DEFINE_KERNELS(Avx2, VECSEAL_AVX2)
VECSEAL_DEFINE_KERNELS(Avx512, VECSEAL_AVX512)
#endif

const Kernels& Portable() {
  static const Kernels kernels{
      "portable",      NormalsPortable,   SumOfSquaresPortable, AllFinitePortable, GatherPortable,
      ScatterPortable, AddScaledPortable, ReflectPortable,      TilePortable,      kTileRows};
  return kernels;
}

#if VECSEAL_X86
const Kernels& Avx2() {
  static const Kernels kernels{"avx2",     NormalsAvx2, SumOfSquaresAvx2, AllFiniteAvx2,
                               GatherAvx2, ScatterAvx2, AddScaledAvx2,    ReflectAvx2,
                               TileAvx2,   kTileRows};
  return kernels;
}

const Kernels& Avx512() {
  static const Kernels kernels{"avx512",     NormalsAvx512, SumOfSquaresAvx512, AllFiniteAvx512,
                               GatherAvx512, ScatterAvx512, AddScaledAvx512,    ReflectAvx512,
                               TileAvx512,   kTileRows512};
  return kernels;
}
#endif

const Kernels* Supported(KernelLevel level) {
#if VECSEAL_X86
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512bw");
  if (level == KernelLevel::kAvx512) return avx512 ? &Avx512() : nullptr;
  if (level == KernelLevel::kAvx2) return avx2 ? &Avx2() : nullptr;
  if (level == KernelLevel::kBest) return avx512 ? &Avx512() : avx2 ? &Avx2() : &Portable();
#else
  if (level == KernelLevel::kBest) return &Portable();
#endif
  return level == KernelLevel::kPortable ? &Portable() : nullptr;
}

std::atomic<const Kernels*> g_forced{nullptr};

const Kernels& Selected() {
  static const Kernels* best = Supported(KernelLevel::kBest);
  const Kernels* forced = g_forced.load(std::memory_order_relaxed);
  return forced != nullptr ? *forced : *best;
}

}  // namespace

bool ForceKernelsForTesting(KernelLevel level) {
  const Kernels* kernels = Supported(level);
  if (kernels == nullptr) return false;
  g_forced.store(level == KernelLevel::kBest ? nullptr : kernels, std::memory_order_relaxed);
  return true;
}

void NormalsFromWords(const uint32_t* words, size_t pairs, float* z) {
  Selected().normals(words, pairs, z);
}

void NormalsFromWordsExact(const uint32_t* words, size_t pairs, double* z) {
  for (size_t k = 0; k < pairs; ++k) {
    const double rho = std::sqrt(-2.0 * std::log(UniformFromWord(words[2 * k])));
    const double angle = 2.0 * std::numbers::pi * UniformFromWord(words[2 * k + 1]);
    z[2 * k] = rho * std::cos(angle);
    z[2 * k + 1] = rho * std::sin(angle);
  }
}

float SumOfSquares(const float* x, size_t n) { return Selected().sum_of_squares(x, n); }

bool AllFinite(const float* x, size_t n) { return Selected().all_finite(x, n); }

void GatherAddScaled(const float* m, const uint32_t* perm, const float* z, float k, float* out,
                     size_t d) {
  Selected().gather(m, perm, z, k, out, d);
}

void ScatterSubScaled(const float* c, const uint32_t* perm, const float* z, float k, float* out,
                      size_t d) {
  Selected().scatter(c, perm, z, k, out, d);
}

void AddScaled(float* x, const float* z, float k, size_t n) { Selected().add_scaled(x, z, k, n); }

void ReflectColumn(const double* v, double* x, size_t n) { Selected().reflect(v, x, n); }

void PackB(const float* b, size_t k, size_t m, float* packed) {
  const size_t panels = (m + kGemmPanelWidth - 1) / kGemmPanelWidth;
  for (size_t q = 0; q < panels; ++q) {
    const size_t j0 = q * kGemmPanelWidth;
    const size_t cols = std::min(kGemmPanelWidth, m - j0);
    float* panel = packed + q * kGemmPanelWidth * k;
    for (size_t p = 0; p < k; ++p) {
      float* dst = panel + p * kGemmPanelWidth;
      std::memcpy(dst, b + p * m + j0, cols * sizeof(float));
      std::fill(dst + cols, dst + kGemmPanelWidth, 0.0f);
    }
  }
}

void GemmPackedB(const float* a, size_t lda, size_t n, size_t k, const float* packed_b, size_t m,
                 float* c, size_t ldc) {
  if (n == 0 || m == 0) return;
  // One read of the selection: a tile function must come with its own row count.
  const Kernels& kernels = Selected();
  GemmWith(kernels.tile, kernels.tile_rows, a, lda, n, k, packed_b, m, c, ldc);
}

const char* KernelName() { return Selected().name; }

}  // namespace vecseal::core::detail
