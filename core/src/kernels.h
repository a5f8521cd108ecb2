// The hot loops of the scheme, vectorised with a runtime choice between AVX-512, AVX2+FMA and
// portable builds (the binary must run on baseline x86-64 and build elsewhere). Internal to core;
// white-box tests and the benchmark include it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace vecseal::core::detail {

// U(w) = (w + 0.5) / 2^32, in (0, 1): docs/format.md §3.
inline double UniformFromWord(uint32_t w) { return (static_cast<double>(w) + 0.5) * 0x1p-32; }

// Box–Muller: z[2k], z[2k+1] from words[2k], words[2k+1], for k < pairs. Single precision with
// polynomial log/sincos; components agree with NormalsFromWordsExact to about 1e-6 relative.
void NormalsFromWords(const uint32_t* words, size_t pairs, float* z);
// The same definition evaluated with libm in double: the transform derivation and tests use it.
void NormalsFromWordsExact(const uint32_t* words, size_t pairs, double* z);

float SumOfSquares(const float* x, size_t n);
// Whether no value is NaN or ±Inf (input validation's fast path).
bool AllFinite(const float* x, size_t n);
// out[i] = m[perm[i]] + k·z[i]. `out` must not alias `m`.
void GatherAddScaled(const float* m, const uint32_t* perm, const float* z, float k, float* out,
                     size_t d);
// out[perm[i]] = c[i] − k·z[i]. `out` must not alias `c`.
void ScatterSubScaled(const float* c, const uint32_t* perm, const float* z, float k, float* out,
                      size_t d);
// x[i] += k·z[i].
void AddScaled(float* x, const float* z, float k, size_t n);

// SGEMM with B prepacked: C (n×m, row stride ldc) = A (n×k, row stride lda) · B (k×m).
// PackB lays B (row-major k×m) out as ceil(m/16) panels of k×16 floats, zero-padded; it needs
// PackedBSize(k, m) floats.
inline constexpr size_t kGemmPanelWidth = 16;
inline size_t PackedBSize(size_t k, size_t m) {
  return (m + kGemmPanelWidth - 1) / kGemmPanelWidth * kGemmPanelWidth * k;
}
void PackB(const float* b, size_t k, size_t m, float* packed);
void GemmPackedB(const float* a, size_t lda, size_t n, size_t k, const float* packed_b, size_t m,
                 float* c, size_t ldc);

// x −= 2(v·x)·v: one Householder reflection (‖v‖ = 1) of a column, in double.
void ReflectColumn(const double* v, double* x, size_t n);

// Which implementation the dispatcher picked: "avx512", "avx2" or "portable".
const char* KernelName();
// Tests run every implementation the machine supports; false if it lacks `level`.
enum class KernelLevel { kBest, kAvx512, kAvx2, kPortable };
bool ForceKernelsForTesting(KernelLevel level);

}  // namespace vecseal::core::detail
