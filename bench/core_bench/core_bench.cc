// Throughput of the SAP scheme on one core (docs/performance.md, "core"). Run:
//   build/bin/core_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// Each Encrypt call takes a batch of kBatch vectors; items/s is vectors per second.
#include <benchmark/benchmark.h>

#include <memory>
#include <random>
#include <vector>

#include "kernels.h"
#include "keystream.h"
#include "vecseal/core/cipher.h"

#if defined(VECSEAL_HAVE_OPENBLAS)
#include <cblas.h>
#endif

namespace vecseal::core {
namespace {

constexpr size_t kBatch = 1024;

std::vector<float> RandomVectors(size_t n, size_t d) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> v(n * d);
  for (float& x : v) x = normal(rng);
  return v;
}

std::shared_ptr<Cipher> BenchCipher(TransformKind transform,
                                    KeyFormat format = KeyFormat::kV1) {
  auto deriver = SoftwareDeriver::CreateEphemeral(format);
  auto cipher = Cipher::Create(std::move(deriver).value(), SchemeParams{2.0, transform, 1});
  return std::move(cipher).value();
}

// Args: d, group size (0: format v2, a seed per vector from one AES call), reversible.
void Encrypt(benchmark::State& state, TransformKind transform) {
  const auto d = static_cast<size_t>(state.range(0));
  const bool v2 = state.range(1) == 0;
  const auto group = v2 ? 1u : static_cast<uint32_t>(state.range(1));
  const bool reversible = state.range(2) != 0;
  auto cipher = BenchCipher(transform, v2 ? KeyFormat::kV2 : KeyFormat::kV1);
  auto data = RandomVectors(kBatch, d);
  std::vector<Token> tokens(reversible ? kBatch : 0);
  const EncryptOptions options{reversible, group, nullptr};
  // Derive T and grow the scratch before timing.
  if (!cipher->Encrypt(data, data, d, options, tokens).ok()) state.SkipWithError("encrypt");
  for (auto _ : state) {
    if (!cipher->Encrypt(data, data, d, options, tokens).ok()) state.SkipWithError("encrypt");
    benchmark::DoNotOptimize(data.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
}

void Permute(benchmark::State& state) { Encrypt(state, TransformKind::kPermute); }
void Rotate(benchmark::State& state) { Encrypt(state, TransformKind::kRotate); }

void EncryptArgs(benchmark::internal::Benchmark* b) {
  for (int64_t d : {384, 768, 1536}) {
    for (int64_t group : {1, 256}) b->Args({d, group, 0});
  }
  b->Args({768, 256, 1});  // reversible: one tag per vector on top
  for (int64_t d : {384, 768, 1536}) b->Args({d, 0, 0});  // format v2
  b->Args({768, 0, 1});
  b->ArgNames({"d", "group", "reversible"});
}
BENCHMARK(Permute)->Apply(EncryptArgs)->Unit(benchmark::kMicrosecond);
BENCHMARK(Rotate)->Apply(EncryptArgs)->Unit(benchmark::kMicrosecond);

// The ChaCha20 keystream one vector's noise needs (2·⌈d/2⌉ + 1 words), rekeying per vector.
void Keystream(benchmark::State& state) {
  const auto d = static_cast<size_t>(state.range(0));
  const bool normals = state.range(1) != 0;
  const size_t pairs = (d + 1) / 2;
  detail::KeyStream stream;
  Seed seed{};
  std::vector<uint32_t> words(2 * pairs + 1);
  std::vector<float> z(2 * pairs);
  uint32_t j = 0;
  for (auto _ : state) {
    (void)stream.Start(seed, j++);
    (void)stream.Read(words.data(), words.size());
    if (normals) detail::NormalsFromWords(words.data(), pairs, z.data());
    benchmark::DoNotOptimize(z.data());
    benchmark::DoNotOptimize(words.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(Keystream)->ArgsProduct({{384, 768, 1536}, {0, 1}})->ArgNames({"d", "normals"});

// HMAC-SHA256 derivations per second through SoftwareDeriver (one per group).
void SoftwareDerive(benchmark::State& state) {
  auto deriver = SoftwareDeriver::CreateEphemeral();
  std::vector<uint8_t> message(33, 0x42);
  Seed seed{};
  for (auto _ : state) {
    (void)(*deriver)->DeriveOne(message, seed);
    benchmark::DoNotOptimize(seed.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(SoftwareDerive);

// The same, inside one Derive call of kBatch messages, as Encrypt makes at group size 1.
void SoftwareDeriveBatch(benchmark::State& state) {
  auto deriver = SoftwareDeriver::CreateEphemeral();
  std::vector<uint8_t> message(33, 0x42);
  std::vector<std::span<const uint8_t>> messages(kBatch, message);
  std::vector<Seed> seeds(kBatch);
  for (auto _ : state) {
    (void)(*deriver)->Derive(messages, seeds);
    benchmark::DoNotOptimize(seeds.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
}
BENCHMARK(SoftwareDeriveBatch);

// System nonces one request each (Next) against one request per call (Fill).
void SystemNonces(benchmark::State& state) {
  const bool one_request = state.range(0) != 0;
  std::vector<Nonce> nonces(kBatch);
  for (auto _ : state) {
    if (one_request) {
      (void)SystemNonceSource().Fill(nonces);
    } else {
      for (Nonce& nonce : nonces) (void)SystemNonceSource().Next(nonce);
    }
    benchmark::DoNotOptimize(nonces.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
}
BENCHMARK(SystemNonces)->Arg(0)->Arg(1)->ArgName("one_request");

// The rotate transform's GEMM alone, n×d · (d×d), as vecseal runs it (48-row chunks)...
void OwnSgemm(benchmark::State& state) {
  const auto d = static_cast<size_t>(state.range(0));
  auto a = RandomVectors(kBatch, d);
  auto b = RandomVectors(d, d);
  // Page-aligned like the SecureBuffer that holds the real transform.
  auto packed = SecureBuffer::Allocate(detail::PackedBSize(d, d) * sizeof(float));
  std::vector<float> c(kBatch * d);
  detail::PackB(b.data(), d, d, packed->as<float>());
  for (auto _ : state) {
    for (size_t first = 0; first < kBatch; first += 48) {
      const size_t rows = std::min<size_t>(48, kBatch - first);
      detail::GemmPackedB(a.data() + first * d, d, rows, d, packed->as<const float>(), d,
                          c.data() + first * d, d);
    }
    benchmark::DoNotOptimize(c.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
  state.SetLabel(detail::KernelName());
}
BENCHMARK(OwnSgemm)->Arg(384)->Arg(768)->Arg(1536)->ArgName("d")->Unit(benchmark::kMicrosecond);

#if defined(VECSEAL_HAVE_OPENBLAS)
// ...and the peer: OpenBLAS cblas_sgemm on one thread, same shape, C = A·Bᵀ in one call.
void OpenBlasSgemm(benchmark::State& state) {
  openblas_set_num_threads(1);
  const auto d = static_cast<int>(state.range(0));
  const auto n = static_cast<int>(kBatch);
  auto a = RandomVectors(kBatch, static_cast<size_t>(d));
  auto b = RandomVectors(static_cast<size_t>(d), static_cast<size_t>(d));
  std::vector<float> c(kBatch * static_cast<size_t>(d));
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, d, d, 1.0f, a.data(), d, b.data(), d,
                0.0f, c.data(), d);
    benchmark::DoNotOptimize(c.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
}
BENCHMARK(OpenBlasSgemm)
    ->Arg(384)
    ->Arg(768)
    ->Arg(1536)
    ->ArgName("d")
    ->Unit(benchmark::kMicrosecond);
#endif

}  // namespace
}  // namespace vecseal::core

BENCHMARK_MAIN();
