// Hot loops are compiled for AVX-512, AVX2 and the baseline, and the loader picks one (GCC
// function multiversioning). Elsewhere (arm64, other compilers) they are compiled once.
//
// Not under ThreadSanitizer either: GCC instruments the ifunc resolver that target_clones
// generates, the dynamic loader runs that resolver while relocating the program, before the
// TSan runtime is initialised, and the program dies with SIGSEGV before main (every `vecseal`
// command in the TSan build did).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_THREAD__)
#define VECSEAL_CALIBRATE_HOT __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECSEAL_CALIBRATE_HOT
#endif
