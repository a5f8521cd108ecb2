# VECSEAL_SANITIZE: build every vecseal library, program and test with the compiler's sanitizers
# (scripts/sanitize: clang for address,undefined, GCC for thread).
# Every target links vecseal_build_flags, so the flags travel with it; scripts/sanitize drives
# this and sets the runtime options (halt_on_error, log_path) that make a report fail the run.
set(vecseal_sanitize_choices "address,undefined" "address" "undefined" "thread")
set_property(CACHE VECSEAL_SANITIZE PROPERTY STRINGS "" ${vecseal_sanitize_choices})

if(VECSEAL_SANITIZE)
  if(NOT VECSEAL_SANITIZE IN_LIST vecseal_sanitize_choices)
    list(JOIN vecseal_sanitize_choices " | " choices)
    message(FATAL_ERROR "VECSEAL_SANITIZE=${VECSEAL_SANITIZE} is not supported: use one of "
      "${choices}, or leave it empty for a normal build (ASan and TSan cannot be combined).")
  endif()
  target_compile_options(vecseal_build_flags INTERFACE
    -fsanitize=${VECSEAL_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all
    # The fortified __*_chk string functions are not intercepted by ASan, so they would hide
    # overflows from it; the sanitizer build checks the same accesses more precisely.
    -U_FORTIFY_SOURCE)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND VECSEAL_SANITIZE MATCHES "address")
    # GCC 12 miscompiles a function that has a 64-byte-aligned local (an __m512 array, as in the
    # AVX-512 GEMM tile in core/src/kernels.cc) when -fstack-protector-strong and -fsanitize=address
    # are combined: with detect_stack_use_after_return=1 its frame on ASan's fake stack is laid
    # out wrongly and a local pointer array reads garbage (SEGV at a high address). Seen with
    # Debian 12's GCC 12.2; a 20-line reproducer crashes the same way with the stack protector
    # and runs clean without it, and clang is fine. ASan's redzones check what the canary would,
    # and more precisely; the normal build keeps the stack protector.
    target_compile_options(vecseal_build_flags INTERFACE -fno-stack-protector)
  endif()
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # GCC 12 at -O1 on sanitizer-instrumented code reports -Wmaybe-uninitialized false positives
    # inside libstdc++ (std::regex's _State move, through std::function), which -Werror turns
    # into a failed build. The normal build (-O2, no instrumentation) keeps the warning as an
    # error; the sanitizers themselves check the same reads at run time.
    target_compile_options(vecseal_build_flags INTERFACE -Wno-maybe-uninitialized)
  endif()
  if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    # Sanitizer builds are -O1, where clang runs no loop vectorizer, so each `#pragma omp simd`
    # (cli/calibrate) draws "loop not vectorized" (-Wpass-failed), an error under -Werror. The
    # pragma is a speed hint; the normal -O2 build keeps the warning.
    target_compile_options(vecseal_build_flags INTERFACE -Wno-pass-failed)
  endif()
  target_link_options(vecseal_build_flags INTERFACE -fsanitize=${VECSEAL_SANITIZE})
  if(VECSEAL_FUZZ AND VECSEAL_SANITIZE MATCHES "address" AND
     CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    # libFuzzer's coverage feedback in every library, so that this build also serves the
    # fuzzers (tests/fuzz): ./scripts/test fuzzes with build-asan instead of building the tree
    # a third time.
    target_compile_options(vecseal_build_flags INTERFACE -fsanitize=fuzzer-no-link)
    target_link_options(vecseal_build_flags INTERFACE -fsanitize=fuzzer-no-link)
  endif()
  if(VECSEAL_SANITIZE STREQUAL "thread")
    # TSan does not model atomic_thread_fence (GCC refuses it under -Werror=tsan); Asio's
    # scheduler queues handlers under a mutex, which TSan does see, so its fences can go.
    target_compile_definitions(vecseal_build_flags INTERFACE BOOST_ASIO_DISABLE_FENCED_BLOCK)
  endif()
endif()
