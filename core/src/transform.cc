#include "transform.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <utility>

#include "kernels.h"
#include "keystream.h"

namespace vecseal::core::detail {

Status DerivePermutation(const Seed& seed, size_t dimension, uint32_t* perm) {
  assert(dimension > 0);
  KeyStream stream;
  VECSEAL_RETURN_IF_ERROR(stream.Start(seed, 0));
  constexpr size_t kBuffered = 256;
  uint32_t words[kBuffered];
  size_t next = kBuffered;
  for (size_t i = 0; i < dimension; ++i) perm[i] = static_cast<uint32_t>(i);
  const Status status = [&]() -> Status {
    for (size_t i = dimension - 1; i >= 1; --i) {
      const uint64_t bound = i + 1;
      // The largest multiple of `bound` that fits in 2^32: words at or above it would bias j.
      const uint64_t limit = (uint64_t{1} << 32) - ((uint64_t{1} << 32) % bound);
      uint32_t w;
      do {
        if (next == kBuffered) {
          VECSEAL_RETURN_IF_ERROR(stream.Read(words, kBuffered));
          next = 0;
        }
        w = words[next++];
      } while (w >= limit);
      std::swap(perm[i], perm[w % bound]);
    }
    return Status::Ok();
  }();
  SecureWipe(words, sizeof(words));  // on the error path too: they are transform keystream
  return status;
}

Result<SecureBuffer> DeriveRotation(const Seed& seed, size_t dimension) {
  const size_t d = dimension;
  auto a_buffer = SecureBuffer::Allocate(d * d * sizeof(double));
  if (!a_buffer.ok()) return std::move(a_buffer).TakeStatus();
  auto q_buffer = SecureBuffer::Allocate(d * d * sizeof(double));
  if (!q_buffer.ok()) return std::move(q_buffer).TakeStatus();
  auto scratch =
      SecureBuffer::Allocate(d * sizeof(double) + 4096 * (sizeof(uint32_t) + sizeof(double)));
  if (!scratch.ok()) return std::move(scratch).TakeStatus();
  double* a = a_buffer->as<double>();  // column-major: a[col·d + row]
  double* q = q_buffer->as<double>();
  double* rdiag = scratch->as<double>();
  auto* words = reinterpret_cast<uint32_t*>(rdiag + d);
  auto* z = reinterpret_cast<double*>(words + 4096);

  // G[i][j] = z_{i·d+j}: Box–Muller pairs run across row boundaries.
  KeyStream stream;
  VECSEAL_RETURN_IF_ERROR(stream.Start(seed, 0));
  const size_t total = d * d;
  for (size_t base = 0; base < total; base += 4096) {
    const size_t count = std::min<size_t>(4096, total - base);
    const size_t pairs = (count + 1) / 2;
    VECSEAL_RETURN_IF_ERROR(stream.Read(words, 2 * pairs));
    NormalsFromWordsExact(words, pairs, z);
    for (size_t t = 0; t < count; ++t) {
      const size_t flat = base + t;
      a[(flat % d) * d + flat / d] = z[t];
    }
  }

  // Householder QR: column k's reflector v (unit norm) replaces A[k:, k]; R_kk goes to rdiag.
  // Blocked: a panel of kPanel reflectors is applied to each trailing column while that column
  // sits in L1, instead of streaming the whole trailing matrix once per reflector.
  constexpr size_t kPanel = 32;
  for (size_t k0 = 0; k0 < d; k0 += kPanel) {
    const size_t k1 = std::min(d, k0 + kPanel);
    for (size_t k = k0; k < k1; ++k) {
      double* x = a + k * d + k;
      const size_t len = d - k;
      double norm2 = 0;
      for (size_t i = 0; i < len; ++i) norm2 += x[i] * x[i];
      const double norm = std::sqrt(norm2);
      const double alpha = x[0] >= 0 ? -norm : norm;
      x[0] -= alpha;
      double vnorm2 = 0;
      for (size_t i = 0; i < len; ++i) vnorm2 += x[i] * x[i];
      rdiag[k] = alpha;
      if (vnorm2 == 0) {
        // A zero column (probability zero): the reflector is the identity.
        std::fill(x, x + len, 0.0);
        continue;
      }
      const double inv = 1.0 / std::sqrt(vnorm2);
      for (size_t i = 0; i < len; ++i) x[i] *= inv;
      for (size_t j = k + 1; j < k1; ++j) ReflectColumn(x, a + j * d + k, len);
    }
    for (size_t j = k1; j < d; ++j) {
      for (size_t k = k0; k < k1; ++k) ReflectColumn(a + k * d + k, a + j * d + k, d - k);
    }
  }

  // Q = H_0·H_1·…·H_{d−1}·I: each column of I takes the reflectors from the last to the first
  // (H_k leaves columns < k alone), again a panel at a time per column.
  std::fill(q, q + d * d, 0.0);
  for (size_t i = 0; i < d; ++i) q[i * d + i] = 1.0;
  for (size_t k1 = d; k1 > 0;) {
    const size_t k0 = k1 >= kPanel ? k1 - kPanel : 0;
    for (size_t j = k0; j < d; ++j) {
      for (size_t k = k1; k-- > k0;) {
        if (j >= k) ReflectColumn(a + k * d + k, q + j * d + k, d - k);
      }
    }
    k1 = k0;
  }
  // Sign correction makes diag(R) > 0, which makes Q unique and Haar-distributed.
  for (size_t k = 0; k < d; ++k) {
    if (rdiag[k] < 0) {
      for (size_t i = 0; i < d; ++i) q[k * d + i] = -q[k * d + i];
    }
  }
  return std::move(q_buffer).value();
}

}  // namespace vecseal::core::detail
