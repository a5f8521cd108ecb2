// Derivation of the secret transform T from its seed S_T: docs/format.md §4 and §5.
#pragma once

#include <cstddef>
#include <cstdint>

#include "vecseal/core/deriver.h"
#include "vecseal/core/secure_memory.h"
#include "vecseal/core/status.h"

namespace vecseal::core::detail {

// π[0..d): Fisher–Yates driven by the transform stream, with rejection sampling.
Status DerivePermutation(const Seed& seed, size_t dimension, uint32_t* perm);

// The Haar-random orthogonal Q (d×d), in double, COLUMN-major: q[col·d + row].
Result<SecureBuffer> DeriveRotation(const Seed& seed, size_t dimension);

}  // namespace vecseal::core::detail
