// Seed derivations per second through vecseal::pkcs11 against raw C_SignInit+C_Sign in the same
// run, on the module VECSEAL_TEST_MODULE selects (SoftHSM2 by default; softhsm_fixture.h), and the measurement behind the pool design: one session per thread versus one
// session behind a shared lock, at 1 and 2 threads. Format v2: one AES-ECB operation's cost by
// its size (where kDerivationPartBytes comes from), fresh or kept open, raw and through the
// layer. Creates its own temporary token.
#include <benchmark/benchmark.h>

#include <array>
#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#include "softhsm_fixture.h"
#include "vecseal/pkcs11/cryptoki.h"
#include "vecseal/pkcs11/hsm.h"

namespace vecseal::pkcs11 {
namespace {

// What the cipher derives per vector group: "vecseal/v1/noise" ‖ 16-byte nonce.
constexpr std::string_view kMessage = "vecseal/v1/noise0123456789abcdef";

std::span<const uint8_t> Message() {
  return {reinterpret_cast<const uint8_t*>(kMessage.data()), kMessage.size()};
}

struct World {
  std::unique_ptr<testing::SoftHsmToken> token;
  std::unique_ptr<Hsm> copyable_hsm;  // keys with CKA_COPYABLE: session copies in the pool
  std::unique_ptr<Hsm> strict_hsm;    // keys as the issue specifies: token object in place
  std::unique_ptr<Hsm> pooled_hsm;    // two pooled sessions, copyable keys
  ModelKey copyable_key, strict_key, pooled_key, aes_key;
  Module module;  // raw access for the peers
  CK_SLOT_ID slot = 0;
};
World* world = nullptr;

Status Setup() {
  auto token = testing::SoftHsmToken::Create();
  if (!token.ok()) return std::move(token).TakeStatus();
  world->token = std::move(token).value();
  KeyParams params;
  params.format = core::KeyFormat::kV1;  // the HMAC benchmarks
  params.approximation_factor = 2.0;

  HsmConfig config = world->token->Config();
  config.create_copyable_keys = true;
  auto copyable = Hsm::Open(config);
  if (!copyable.ok()) return std::move(copyable).TakeStatus();
  world->copyable_hsm = std::move(copyable).value();
  if (auto k = world->copyable_hsm->CreateKey("copyable", params); !k.ok()) return k.status();
  auto copyable_key = world->copyable_hsm->FindKey("copyable");
  if (!copyable_key.ok()) return copyable_key.status();
  world->copyable_key = *copyable_key;

  auto strict = Hsm::Open(world->token->Config());
  if (!strict.ok()) return std::move(strict).TakeStatus();
  world->strict_hsm = std::move(strict).value();
  if (auto k = world->strict_hsm->CreateKey("strict", params); !k.ok()) return k.status();
  auto strict_key = world->strict_hsm->FindKey("strict");
  if (!strict_key.ok()) return strict_key.status();
  world->strict_key = *strict_key;
  KeyParams aes = params;
  aes.format = core::KeyFormat::kV2;
  if (auto k = world->strict_hsm->CreateKey("aes", aes); !k.ok()) return k.status();
  auto aes_key = world->strict_hsm->FindKey("aes");
  if (!aes_key.ok()) return aes_key.status();
  world->aes_key = *aes_key;

  config.sessions = 2;
  auto pooled = Hsm::Open(config);
  if (!pooled.ok()) return std::move(pooled).TakeStatus();
  world->pooled_hsm = std::move(pooled).value();
  auto pooled_key = world->pooled_hsm->FindKey("copyable");
  if (!pooled_key.ok()) return pooled_key.status();
  world->pooled_key = *pooled_key;

  auto module = Module::Load(world->token->module_path());
  if (!module.ok()) return std::move(module).TakeStatus();
  world->module = std::move(module).value();
  auto slot = world->module.FindTokenSlot(world->token->label());
  if (!slot.ok()) return slot.status();
  world->slot = *slot;
  return Status::Ok();
}

// A raw session (logged in via the Hsm's login, which Cryptoki shares) and the key handle:
// a session copy when `copy`, else the token object.
struct RawKey {
  Session session;
  Object key;
};

RawKey OpenRaw(const std::string& label, bool copy) {
  RawKey raw;
  auto session = Session::Open(world->module, world->slot, false);
  if (!session.ok()) return raw;
  raw.session = std::move(session).value();
  // Behind p11-kit server this module is a client of its own, not logged in by the Hsm's.
  const std::string& pin = world->token->user_pin();
  if (!raw.session.Login({reinterpret_cast<const uint8_t*>(pin.data()), pin.size()}).ok()) {
    return raw;
  }
  CK_OBJECT_CLASS klass = CKO_SECRET_KEY;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_ATTRIBUTE match[] = {{CKA_CLASS, &klass, sizeof klass},
                          {CKA_TOKEN, &yes, sizeof yes},
                          {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
  auto found = raw.session.Find(match);
  if (!found.ok() || found->size() != 1) return raw;
  raw.key = std::move(found->front());
  if (copy) {
    CK_ATTRIBUTE session_only[] = {{CKA_TOKEN, &no, sizeof no}};
    auto copied = raw.session.Copy(raw.key.handle(), session_only, true);
    if (copied.ok()) raw.key = std::move(copied).value();
    else raw.key = Object();
  }
  return raw;
}

void SignLoop(benchmark::State& state, const Session& session, CK_OBJECT_HANDLE key,
              std::mutex* lock) {
  std::array<uint8_t, 32> mac{};
  for (auto _ : state) {
    CK_ULONG length = 0;
    CK_RV rv;
    if (lock != nullptr) {
      std::lock_guard guard(*lock);
      rv = session.SignRaw(CKM_SHA256_HMAC, key, Message(), mac, &length);
    } else {
      rv = session.SignRaw(CKM_SHA256_HMAC, key, Message(), mac, &length);
    }
    if (rv != CKR_OK) {
      state.SkipWithError(std::string(CkrName(rv)).c_str());
      break;
    }
    benchmark::DoNotOptimize(mac);
  }
  state.SetItemsProcessed(state.iterations());
}

// Peers: raw C_SignInit + C_Sign.
void BM_RawSessionCopy(benchmark::State& state) {
  RawKey raw = OpenRaw("vecseal:copyable:v1", true);
  if (!raw.key.valid()) return state.SkipWithError("no session copy");
  SignLoop(state, raw.session, raw.key.handle(), nullptr);
}
BENCHMARK(BM_RawSessionCopy)->UseRealTime();

void BM_RawTokenObject(benchmark::State& state) {
  RawKey raw = OpenRaw("vecseal:strict:v1", false);
  if (!raw.key.valid()) return state.SkipWithError("no key");
  SignLoop(state, raw.session, raw.key.handle(), nullptr);
}
BENCHMARK(BM_RawTokenObject)->UseRealTime();

// The layer: Deriver::Derive with a batch of state.range(0) messages.
void DeriveLoop(benchmark::State& state, core::Deriver& deriver) {
  const size_t batch = static_cast<size_t>(state.range(0));
  std::vector<std::span<const uint8_t>> messages(batch, Message());
  std::vector<core::Seed> seeds(batch);
  for (auto _ : state) {
    Status status = deriver.Derive(messages, seeds);
    if (!status.ok()) {
      state.SkipWithError(status.ToString().c_str());
      break;
    }
    benchmark::DoNotOptimize(seeds.data());
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(batch));
}

void BM_LayerCopyableKey(benchmark::State& state) {
  DeriveLoop(state, *world->copyable_key.deriver);
}
BENCHMARK(BM_LayerCopyableKey)->Arg(1)->Arg(64)->UseRealTime();

void BM_LayerStrictKey(benchmark::State& state) { DeriveLoop(state, *world->strict_key.deriver); }
BENCHMARK(BM_LayerStrictKey)->Arg(1)->Arg(64)->UseRealTime();

// Pool design, raw: every thread its own session and session copy, versus all threads on one
// session serialised by a mutex.
void BM_SessionPerThread(benchmark::State& state) {
  RawKey raw = OpenRaw("vecseal:copyable:v1", true);
  if (!raw.key.valid()) return state.SkipWithError("no session copy");
  SignLoop(state, raw.session, raw.key.handle(), nullptr);
}
BENCHMARK(BM_SessionPerThread)->Threads(1)->Threads(2)->UseRealTime();

RawKey* shared_raw = nullptr;
std::mutex shared_mutex;
void BM_SharedSessionLock(benchmark::State& state) {
  if (shared_raw == nullptr || !shared_raw->key.valid()) {
    return state.SkipWithError("no shared session");
  }
  SignLoop(state, shared_raw->session, shared_raw->key.handle(), &shared_mutex);
}
BENCHMARK(BM_SharedSessionLock)->Threads(1)->Threads(2)->UseRealTime();

// Pool design, through the layer: one pooled session versus two, at 1 and 2 threads.
void BM_LayerPool1(benchmark::State& state) { DeriveLoop(state, *world->copyable_key.deriver); }
BENCHMARK(BM_LayerPool1)->Arg(1)->Threads(1)->Threads(2)->UseRealTime();

void BM_LayerPool2(benchmark::State& state) { DeriveLoop(state, *world->pooled_key.deriver); }
BENCHMARK(BM_LayerPool2)->Arg(1)->Threads(1)->Threads(2)->UseRealTime();

// Format v2, raw: C_EncryptInit + C_Encrypt of `bytes` on the token object (as one request's
// seeds: 32 bytes per vector), and the same bytes as one C_EncryptUpdate of an operation kept
// open. Items are 32-byte seeds.
void BM_RawAesEcb(benchmark::State& state) {
  RawKey raw = OpenRaw("vecseal:aes:v1", false);
  if (!raw.key.valid()) return state.SkipWithError("no AES key");
  std::vector<uint8_t> in(static_cast<size_t>(state.range(0))), out(in.size());
  for (auto _ : state) {
    CK_RV rv = raw.session.EncryptRaw(CKM_AES_ECB, raw.key.handle(), in, out, in.size());
    if (rv != CKR_OK) return state.SkipWithError(std::string(CkrName(rv)).c_str());
  }
  state.SetItemsProcessed(state.iterations() * state.range(0) / 32);
}
BENCHMARK(BM_RawAesEcb)->Arg(32)->Arg(1024)->Arg(32768)->Arg(65536)->Arg(98304)->Arg(131072)
    ->Arg(262144)->UseRealTime();

void BM_RawAesEcbOpen(benchmark::State& state) {
  RawKey raw = OpenRaw("vecseal:aes:v1", false);
  if (!raw.key.valid()) return state.SkipWithError("no AES key");
  std::vector<uint8_t> in(static_cast<size_t>(state.range(0))), out(in.size());
  if (raw.session.EncryptInit(CKM_AES_ECB, raw.key.handle()) != CKR_OK) {
    return state.SkipWithError("C_EncryptInit");
  }
  for (auto _ : state) {
    CK_RV rv = raw.session.EncryptUpdate(in, out, in.size());
    if (rv != CKR_OK) return state.SkipWithError(std::string(CkrName(rv)).c_str());
  }
  (void)raw.session.EncryptFinal();
  state.SetItemsProcessed(state.iterations() * state.range(0) / 32);
}
BENCHMARK(BM_RawAesEcbOpen)->Arg(32)->Arg(32768)->Arg(65536)->Arg(131072)->UseRealTime();

// Through the layer: every seed of a request of n vectors, as Cipher asks for them.
void BM_LayerAesKey(benchmark::State& state) {
  const auto n = static_cast<size_t>(state.range(0));
  std::vector<uint8_t> blocks(n * 32), seeds(n * 32);
  for (auto _ : state) {
    if (!world->aes_key.deriver->EncryptBlocks(blocks, seeds).ok()) {
      return state.SkipWithError("EncryptBlocks");
    }
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * n));
}
BENCHMARK(BM_LayerAesKey)->Arg(1)->Arg(1024)->Arg(4000)->UseRealTime();

}  // namespace
}  // namespace vecseal::pkcs11

int main(int argc, char** argv) {
  using namespace vecseal::pkcs11;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  std::string reason = vecseal::testing::SoftHsmUnavailableReason();
  if (!reason.empty()) {
    std::fprintf(stderr, "pkcs11_bench: %s\n", reason.c_str());
    return 1;
  }
  World state;
  world = &state;
  if (vecseal::Status status = Setup(); !status.ok()) {
    std::fprintf(stderr, "pkcs11_bench: setup failed: %s\n", status.ToString().c_str());
    return 1;
  }
  {
    RawKey shared = OpenRaw("vecseal:copyable:v1", true);
    shared_raw = &shared;
    benchmark::RunSpecifiedBenchmarks();
    shared_raw = nullptr;
  }
  benchmark::Shutdown();
  world = nullptr;
  return 0;
}
