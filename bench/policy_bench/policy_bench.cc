// What identifying and deciding a request costs, next to what the request itself costs at least:
// one round trip over a Unix socket to another process.
//
// Peers are real processes: forked copies of this binary and, when /usr/bin/python3 exists, a
// python3 script. Each connects to a listening socket and echoes bytes until closed.
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "vecseal/policy/budget.h"
#include "vecseal/policy/identity.h"
#include "vecseal/policy/policy.h"
#include "vecseal/policy/rate_limit.h"

namespace vecseal::policy {
namespace {

struct Peers {
  std::string dir;
  int listener = -1;
  int native_conn = -1;  // a forked copy of this binary
  int python_conn = -1;  // /usr/bin/python3 running a script; -1 when python3 is missing
  std::vector<pid_t> children;
};

Peers peers;

int AcceptOne() {
  int conn = accept4(peers.listener, nullptr, nullptr, SOCK_CLOEXEC);
  char byte = 0;
  if (conn < 0 || read(conn, &byte, 1) != 1) return -1;
  return conn;
}

bool StartPeers() {
  char pattern[] = "/tmp/vecseal-policy-bench-XXXXXX";
  if (mkdtemp(pattern) == nullptr) return false;
  peers.dir = pattern;
  std::string socket_path = peers.dir + "/s";
  peers.listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_path.c_str(), sizeof addr.sun_path - 1);
  if (bind(peers.listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      listen(peers.listener, 4) != 0) {
    return false;
  }
  pid_t pid = fork();
  if (pid == 0) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) _exit(1);
    char buffer[256] = {'A'};
    if (write(fd, buffer, 1) != 1) _exit(1);
    ssize_t n;
    while ((n = read(fd, buffer, sizeof buffer)) > 0) {
      if (write(fd, buffer, static_cast<size_t>(n)) != n) _exit(1);
    }
    _exit(0);
  }
  peers.children.push_back(pid);
  peers.native_conn = AcceptOne();
  if (peers.native_conn < 0) return false;

  if (access("/usr/bin/python3", X_OK) == 0) {
    std::string script = peers.dir + "/peer.py";
    FILE* f = std::fopen(script.c_str(), "w");
    if (f == nullptr) return false;
    std::fputs(
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.connect(sys.argv[1])\n"
        "s.sendall(b'A')\n"
        "while True:\n"
        "    b = s.recv(256)\n"
        "    if not b: break\n"
        "    s.sendall(b)\n",
        f);
    std::fclose(f);
    pid = fork();
    if (pid == 0) {
      execl("/usr/bin/python3", "python3", script.c_str(), socket_path.c_str(),
            static_cast<char*>(nullptr));
      _exit(127);
    }
    peers.children.push_back(pid);
    peers.python_conn = AcceptOne();
  }
  return true;
}

void StopPeers() {
  if (peers.native_conn >= 0) close(peers.native_conn);
  if (peers.python_conn >= 0) close(peers.python_conn);
  for (pid_t pid : peers.children) {
    kill(pid, SIGTERM);
    waitpid(pid, nullptr, 0);
  }
  std::remove((peers.dir + "/peer.py").c_str());
  std::remove((peers.dir + "/s").c_str());
  rmdir(peers.dir.c_str());
}

int Conn(const benchmark::State& state) {
  return state.range(0) == 0 ? peers.native_conn : peers.python_conn;
}

void SetPeerLabel(benchmark::State& state) {
  state.SetLabel(state.range(0) == 0 ? "native peer" : "python3 script peer");
}

// The peer: a 64-byte echo through the peer process, the least any request costs.
void BM_SocketRoundTrip(benchmark::State& state) {
  int fd = peers.native_conn;
  char buffer[64] = {};
  for (auto _ : state) {
    if (write(fd, buffer, sizeof buffer) != static_cast<ssize_t>(sizeof buffer)) {
      state.SkipWithError("write failed");
      break;
    }
    size_t got = 0;
    while (got < sizeof buffer) {
      ssize_t n = read(fd, buffer + got, sizeof buffer - got);
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    benchmark::DoNotOptimize(buffer);
  }
}
BENCHMARK(BM_SocketRoundTrip);

// First identification of a connection with nothing cached: /proc reads, NSS lookups, and the
// SHA-256 of the executable (and of the script, for python3).
void BM_IdentityCold(benchmark::State& state) {
  int fd = Conn(state);
  if (fd < 0) return state.SkipWithError("no such peer (python3 missing?)");
  SetPeerLabel(state);
  for (auto _ : state) {
    IdentityResolver resolver;
    Result<PeerIdentity> peer = PeerIdentity::FromSocket(fd, resolver);
    if (!peer.ok()) return state.SkipWithError(peer.status().message().c_str());
    benchmark::DoNotOptimize(peer->identity().exe_sha256.data());
  }
}
BENCHMARK(BM_IdentityCold)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

// A new connection from a program already seen: digests come from the cache.
void BM_IdentityCached(benchmark::State& state) {
  int fd = Conn(state);
  if (fd < 0) return state.SkipWithError("no such peer (python3 missing?)");
  SetPeerLabel(state);
  IdentityResolver resolver;
  if (!PeerIdentity::FromSocket(fd, resolver).ok()) return state.SkipWithError("identify failed");
  for (auto _ : state) {
    Result<PeerIdentity> peer = PeerIdentity::FromSocket(fd, resolver);
    if (!peer.ok()) return state.SkipWithError(peer.status().message().c_str());
    benchmark::DoNotOptimize(peer->identity().exe_sha256.data());
  }
}
BENCHMARK(BM_IdentityCached)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

// What each request on an identified connection pays: the exec check.
void BM_Refresh(benchmark::State& state) {
  int fd = Conn(state);
  if (fd < 0) return state.SkipWithError("no such peer (python3 missing?)");
  SetPeerLabel(state);
  IdentityResolver resolver;
  Result<PeerIdentity> peer = PeerIdentity::FromSocket(fd, resolver);
  if (!peer.ok()) return state.SkipWithError(peer.status().message().c_str());
  for (auto _ : state) {
    Status status = peer->Refresh(resolver);
    if (!status.ok()) return state.SkipWithError(status.message().c_str());
  }
}
BENCHMARK(BM_Refresh)->Arg(0)->Arg(1);

// Decide() over a policy of N rules where only the last one grants: the worst case of a scan.
void BM_Decide(benchmark::State& state) {
  auto rules = static_cast<int>(state.range(0));
  nlohmann::json doc = {{"version", 1}, {"rules", nlohmann::json::array()}};
  for (int i = 0; i < rules - 1; ++i) {
    doc["rules"].push_back({{"id", "rule-" + std::to_string(i)},
                            {"callers", {{"user", "svc-" + std::to_string(i)},
                                         {"unit", "svc-" + std::to_string(i) + ".service"}}},
                            {"keys", {"model-" + std::to_string(i) + "-*"}},
                            {"operations", {"encrypt"}}});
  }
  doc["rules"].push_back({{"id", "last"},
                          {"callers", {{"user", "etl"}, {"script", "/opt/etl/export.py"}}},
                          {"keys", {"support-*"}},
                          {"operations", {"encrypt"}}});
  Result<PolicyPtr> policy = Policy::Parse(doc.dump());
  if (!policy.ok()) return state.SkipWithError(policy.status().message().c_str());
  CallerIdentity caller;
  caller.uid = 1000;
  caller.user = "etl";
  caller.group = "etl";
  caller.unit = "etl-export.service";
  caller.exe = "/usr/bin/python3.11";
  caller.script = "/opt/etl/export.py";
  for (auto _ : state) {
    Decision decision = (*policy)->Decide(caller, Operation::kEncrypt, "support-ratings");
    benchmark::DoNotOptimize(decision.granted);
  }
}
BENCHMARK(BM_Decide)->Arg(3)->Arg(30)->Arg(300);

// What every request of a granted caller pays for the per-uid budgets (hashing, derivations,
// refusals): the daemon asks whether its uid is held back before it reads each request. Threads
// share one limiter, as the daemon's I/O threads do; each uses its own uid.
void BM_UidBudgetCheck(benchmark::State& state) {
  static UidRateLimiter limiter(120, 2);
  const uid_t uid = 1000 + static_cast<uid_t>(state.thread_index());
  for (auto _ : state) benchmark::DoNotOptimize(limiter.SecondsUntilCredit(uid));
}
BENCHMARK(BM_UidBudgetCheck)->Threads(1)->Threads(2);

// What a budget adds to one encrypt: the check before the body is read, the reservation after,
// against a ledger holding state.range(0) other counters (keys and callers that spent).
void BM_BudgetSpend(benchmark::State& state) {
  const Budget budget{Operation::kEncrypt, 1ull << 62, 86400, Budget::PerCaller::kUid};
  const Budget* budgets[] = {&budget};
  BudgetLedger ledger;
  const auto now = BudgetLedger::Clock::now();
  const std::string rule = "staging-scorer";
  std::vector<std::string> keys;
  for (int64_t i = 0; i < state.range(0); ++i) keys.push_back("support-" + std::to_string(i));
  for (const std::string& key : keys) ledger.Add(budget, {rule, key, 1000, ""}, 1, now);
  const BudgetSpender spender{rule, "support-ratings", 1000, "ticket-scorer.service"};
  for (auto _ : state) {
    BudgetLedger::Reservation reservation;
    benchmark::DoNotOptimize(ledger.Reserve(budgets, spender, 1, BudgetLedger::Clock::now(),
                                            nullptr));
    benchmark::DoNotOptimize(ledger.Reserve(budgets, spender, 1, BudgetLedger::Clock::now(),
                                            &reservation));
  }
}
BENCHMARK(BM_BudgetSpend)->Arg(1)->Arg(1000);

}  // namespace
}  // namespace vecseal::policy

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (!vecseal::policy::StartPeers()) {
    std::fprintf(stderr, "policy_bench: could not start the peer processes\n");
    vecseal::policy::StopPeers();
    return 1;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  vecseal::policy::StopPeers();
  return 0;
}
