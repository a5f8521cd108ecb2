// Hot loops are compiled for AVX-512, AVX2 and the baseline, and the loader picks one (GCC
// function multiversioning). Elsewhere (arm64, other compilers) they are compiled once.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECSEAL_CALIBRATE_HOT __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECSEAL_CALIBRATE_HOT
#endif
