// vecseal_load: end-to-end load on vecseald through the C++ client (docs/performance.md,
// "daemon"). Several connections, each a thread sending back-to-back requests for a fixed
// duration; reports vectors/s and latency percentiles per repetition and their medians.
//
// It drives an existing daemon (--socket) or starts its own `vecseald --dev` (--vecseald PATH)
// with the derivation group size under test (--group-size), in a temporary state directory.
//
// --soak turns it into the soak test of docs/reliability.md: one long run of mixed single and
// batch requests, the daemon's RSS sampled from /proc, every error counted (warm-up included),
// and at the end the audit log's encrypt records compared with the requests served. It exits
// non-zero unless there were no errors, RSS at the end stayed within --rss-tolerance of RSS just
// after warm-up (medians of the first and last fifth of the samples), and records equal requests.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "vecseal/client/client.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;
using vecseal::client::Client;
using vecseal::client::ClientOptions;
using vecseal::Status;

struct Options {
  std::string socket;
  std::string vecseald;
  size_t group_size = 256;
  std::string key = "load-bench";
  std::string transform = "permute";
  std::string derivation = "aes";  // the key's format: aes (v2) or hmac (v1)
  std::string pkcs11_module;       // own daemon: this module instead of SoftHSM2's
  long hsm_delay_us = 0;           // own daemon: every Cryptoki call of the fault module waits
  uint64_t budget = 0;             // own daemon: its dev rule gets this encrypt budget per 24h
  size_t connections = 2;
  size_t batch = 1024;
  size_t dimension = 768;
  bool json = false;
  bool reversible = false;
  bool allocating = false;  // Client::Encrypt instead of Client::EncryptInto
  double single_fraction = 0;  // share of requests that carry one vector instead of a batch
  double duration = 5;
  double warmup = 1;
  size_t repetitions = 3;
  bool soak = false;
  pid_t pid = 0;          // the daemon to sample (--socket mode); own daemon: known
  std::string audit_dir;  // its audit directory (--socket mode); own daemon: known
  double rss_tolerance = 0.10;
  std::string rss_log;  // CSV of the samples: seconds since start, RSS KiB, requests so far
};

constexpr std::string_view kUsage =
    "usage: vecseal_load (--socket PATH | --vecseald PATH [--group-size G]\n"
    "                     [--pkcs11-module FAULTY.so --hsm-delay-us US] [--budget N])\n"
    "         [--key NAME]\n"
    "         [--transform permute|rotate] [--derivation aes|hmac] [--connections C]\n"
    "         [--batch B] [--dim D]\n"
    "         [--wire binary|json] [--reversible] [--allocating] [--single-fraction F]\n"
    "         [--duration S] [--warmup S] [--repetitions R]\n"
    "       vecseal_load --soak (--vecseald PATH | --socket PATH --pid PID --audit-dir DIR)\n"
    "         [--connections C] [--batch B] [--dim D] [--single-fraction F] [--duration S]\n"
    "         [--warmup S] [--rss-tolerance T] [--rss-log FILE.csv]\n";

[[noreturn]] void Die(const std::string& message) {
  std::cerr << "vecseal_load: " << message << "\n";
  std::exit(1);
}

template <typename T>
T Number(const std::string& name, const std::string& text) {
  T value{};
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) Die("--" + name + ": not a number: " + text);
  return value;
}

Options ParseOptions(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (arg == "--reversible") {
      o.reversible = true;
      continue;
    }
    if (arg == "--allocating") {
      o.allocating = true;
      continue;
    }
    if (arg == "--soak") {
      o.soak = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0 || i + 1 >= argc) Die("bad argument " + arg + "\n" + std::string(kUsage));
    const std::string name = arg.substr(2), value = argv[++i];
    if (name == "socket") o.socket = value;
    else if (name == "vecseald") o.vecseald = value;
    else if (name == "group-size") o.group_size = Number<size_t>(name, value);
    else if (name == "key") o.key = value;
    else if (name == "transform") o.transform = value;
    else if (name == "derivation") o.derivation = value;
    else if (name == "pkcs11-module") o.pkcs11_module = value;
    else if (name == "hsm-delay-us") o.hsm_delay_us = Number<long>(name, value);
    else if (name == "budget") o.budget = Number<uint64_t>(name, value);
    else if (name == "connections") o.connections = Number<size_t>(name, value);
    else if (name == "batch") o.batch = Number<size_t>(name, value);
    else if (name == "dim") o.dimension = Number<size_t>(name, value);
    else if (name == "wire") o.json = value == "json";
    else if (name == "single-fraction") o.single_fraction = Number<double>(name, value);
    else if (name == "duration") o.duration = Number<double>(name, value);
    else if (name == "warmup") o.warmup = Number<double>(name, value);
    else if (name == "repetitions") o.repetitions = Number<size_t>(name, value);
    else if (name == "pid") o.pid = Number<pid_t>(name, value);
    else if (name == "audit-dir") o.audit_dir = value;
    else if (name == "rss-tolerance") o.rss_tolerance = Number<double>(name, value);
    else if (name == "rss-log") o.rss_log = value;
    else Die("unknown option " + arg);
  }
  if (o.socket.empty() == o.vecseald.empty()) Die("give exactly one of --socket and --vecseald");
  if (o.soak && !o.socket.empty() && (o.pid <= 0 || o.audit_dir.empty())) {
    Die("--soak with --socket needs the daemon's --pid and --audit-dir");
  }
  if (o.connections == 0 || o.batch == 0 || o.dimension == 0 || o.repetitions == 0) {
    Die("--connections, --batch, --dim and --repetitions must be positive");
  }
  return o;
}

// A `vecseald --dev` of our own, stopped on destruction.
class OwnDaemon {
 public:
  // `module` (the fault module of tests/pkcs11) with `delay_us` simulates a network HSM.
  OwnDaemon(const std::string& binary, size_t group_size, const std::string& module,
            long delay_us, uint64_t budget) {
    char pattern[] = "/tmp/vecseal-load-XXXXXX";
    if (::mkdtemp(pattern) == nullptr) Die("mkdtemp failed");
    root_ = pattern;
    const std::string state = root_ + "/state", config = root_ + "/config.json",
                      log = root_ + "/vecseald.log";
    std::filesystem::create_directory(state);
    std::filesystem::permissions(state, std::filesystem::perms::owner_all);
    if (budget > 0) {
      // Dev mode keeps a policy it finds: its own rule, plus the budget whose cost is measured.
      const nlohmann::json policy = {
          {"version", 1},
          {"rules",
           {{{"id", "dev-user-" + std::to_string(::geteuid())},
             {"callers", {{"uid", ::geteuid()}}},
             {"keys", {"*"}},
             {"operations", {"encrypt", "decrypt", "keys.list", "keys.create", "keys.rotate"}},
             {"budgets", {{{"operation", "encrypt"}, {"vectors", budget}, {"per", "24h"}}}}}}}};
      const std::string path = state + "/policy.json";
      std::ofstream(path) << policy.dump(2) << "\n";
      std::filesystem::permissions(path, std::filesystem::perms::owner_read |
                                             std::filesystem::perms::owner_write);
    }
    // No chattr +a: as root it would make the throwaway audit files undeletable.
    // One uid plays every client, so its share of connections is the whole limit.
    std::ofstream(config) << "{\"derivation\": {\"group_size\": " << group_size
                          << "}, \"limits\": {\"max_connections_per_uid\": 65536}"
                          << ", \"audit\": {\"try_append_only\": false}"
                          << (module.empty() ? "" : ", \"pkcs11\": {\"module\": \"" + module + "\"}")
                          << "}\n";
    if (!module.empty()) {
      const std::string control = root_ + "/faults";
      std::ofstream(control) << "delay " << delay_us << "\n";
      ::setenv("VECSEAL_FAULTY_CONTROL", control.c_str(), 1);
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    std::vector<std::string> args = {binary, "--dev", "--state-dir", state, "--config", config};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, binary.c_str(), &actions, nullptr, argv.data(), environ) != 0) {
      Die("cannot start " + binary);
    }
    posix_spawn_file_actions_destroy(&actions);
    const std::string marker = "vecseald ready: socket ";
    for (int i = 0; i < 6000; ++i) {
      std::ifstream in(log);
      std::stringstream text;
      text << in.rdbuf();
      const std::string seen = text.str();
      const size_t at = seen.find(marker);
      if (at != std::string::npos && seen.find('\n', at) != std::string::npos) {
        socket_ = seen.substr(at + marker.size(), seen.find('\n', at) - at - marker.size());
        return;
      }
      int status;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) Die("vecseald exited:\n" + seen);
      ::usleep(20000);
    }
    Die("vecseald did not become ready");
  }
  ~OwnDaemon() {
    ::kill(pid_, SIGTERM);
    int status;
    ::waitpid(pid_, &status, 0);
    std::error_code ignored;
    std::filesystem::remove_all(root_, ignored);
  }
  const std::string& socket() const { return socket_; }
  pid_t pid() const { return pid_; }
  std::string audit_dir() const { return root_ + "/state/audit"; }

 private:
  std::string root_;
  std::string socket_;
  pid_t pid_ = -1;
};

struct RunResult {
  double vectors_per_second = 0;
  double requests_per_second = 0;
  double p50_us = 0, p99_us = 0, p999_us = 0;
  double client_cpu_us_per_vector = 0;  // this process only: the client library's cost
  size_t requests = 0;
  size_t errors = 0;
};

double Percentile(std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const size_t index = std::min(sorted.size() - 1, static_cast<size_t>(std::ceil(p * sorted.size())) - 1);
  return sorted[index];
}

vecseal::Result<std::unique_ptr<Client>> ConnectTo(const std::string& socket, bool json) {
  ClientOptions options;
  options.socket_path = socket;
  options.wire = json ? vecseal::client::Wire::kJson : vecseal::client::Wire::kBinary;
  return Client::Connect(options);
}

std::unique_ptr<Client> MustConnect(const std::string& socket, bool json) {
  auto client = ConnectTo(socket, json);
  if (!client.ok()) Die(client.status().message());
  return std::move(client).value();
}

// One connection's requests: its own random rows, and the size of each next request, single
// requests spread evenly (every k-th request when the fraction is 1/k).
class RequestMix {
 public:
  RequestMix(const Options& o, size_t connection)
      : o_(o), rows_(o.batch * o.dimension) {
    std::mt19937 rng(static_cast<uint32_t>(1234 + connection));
    std::normal_distribution<float> normal;
    for (float& v : rows_) v = normal(rng);
  }
  size_t NextCount() {
    single_credit_ += o_.single_fraction;
    if (single_credit_ < 1) return o_.batch;
    single_credit_ -= 1;
    return 1;
  }
  std::span<const float> Rows(size_t count) const {
    return std::span<const float>(rows_).first(count * o_.dimension);
  }

  // One request of `count` rows, as a service on the hot path sends it: into buffers reused
  // from one request to the next (Client::EncryptInto), or, with --allocating, through
  // Client::Encrypt, which returns freshly allocated vectors.
  Status Encrypt(Client& client, size_t count) {
    if (o_.allocating) {
      auto sealed = client.Encrypt(o_.key, Rows(count), o_.dimension, o_.reversible);
      if (!sealed.ok()) return std::move(sealed).TakeStatus();
      if (sealed->vectors.size() != count * o_.dimension) {
        return Status(vecseal::Code::kInternal, "short_answer", "a short answer");
      }
      return Status::Ok();
    }
    const size_t values = count * o_.dimension;
    auto version = client.EncryptInto(
        o_.key, Rows(count), o_.dimension, std::span<float>(out_).first(values),
        std::span<uint8_t>(tokens_).first(o_.reversible ? count * vecseal::client::kTokenSize : 0));
    return version.ok() ? Status::Ok() : std::move(version).TakeStatus();
  }

 private:
  const Options& o_;
  std::vector<float> rows_;
  std::vector<float> out_ = std::vector<float>(rows_.size());
  std::vector<uint8_t> tokens_ = std::vector<uint8_t>(o_.batch * vecseal::client::kTokenSize);
  double single_credit_ = 0;
};

RunResult RunOnce(const Options& o, const std::string& socket) {
  struct PerThread {
    std::vector<double> latencies_us;
    size_t vectors = 0;
    size_t errors = 0;
    std::string first_error;
  };
  std::vector<PerThread> results(o.connections);
  std::atomic<bool> measuring{false}, stop{false};
  std::vector<std::thread> threads;
  for (size_t t = 0; t < o.connections; ++t) {
    threads.emplace_back([&, t] {
      std::unique_ptr<Client> client = MustConnect(socket, o.json);
      RequestMix mix(o, t);
      PerThread& mine = results[t];
      while (!stop.load(std::memory_order_relaxed)) {
        const size_t n = mix.NextCount();
        const auto start = Clock::now();
        const Status sealed = mix.Encrypt(*client, n);
        const auto end = Clock::now();
        if (!measuring.load(std::memory_order_relaxed)) continue;
        if (!sealed.ok()) {
          if (mine.errors++ == 0) mine.first_error = sealed.ToString();
          continue;
        }
        mine.vectors += n;
        mine.latencies_us.push_back(std::chrono::duration<double, std::micro>(end - start).count());
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(o.warmup));
  const auto cpu_seconds = [] {
    rusage usage{};
    ::getrusage(RUSAGE_SELF, &usage);
    return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
           static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
  };
  measuring = true;
  const double cpu_start = cpu_seconds();
  const auto start = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(o.duration));
  measuring = false;
  const double cpu_used = cpu_seconds() - cpu_start;
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  stop = true;
  for (std::thread& t : threads) t.join();

  RunResult r;
  std::vector<double> all;
  size_t vectors = 0;
  for (PerThread& p : results) {
    all.insert(all.end(), p.latencies_us.begin(), p.latencies_us.end());
    vectors += p.vectors;
    r.errors += p.errors;
    if (!p.first_error.empty()) std::cerr << "vecseal_load: request failed: " << p.first_error << "\n";
  }
  std::sort(all.begin(), all.end());
  r.requests = all.size();
  r.vectors_per_second = static_cast<double>(vectors) / elapsed;
  r.requests_per_second = static_cast<double>(all.size()) / elapsed;
  r.p50_us = Percentile(all, 0.50);
  r.p99_us = Percentile(all, 0.99);
  r.p999_us = Percentile(all, 0.999);
  r.client_cpu_us_per_vector = vectors > 0 ? cpu_used * 1e6 / static_cast<double>(vectors) : 0;
  return r;
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

void Print(const char* label, const RunResult& r) {
  std::printf("%-8s %12.0f vectors/s %10.0f requests/s   p50 %9.1f us   p99 %9.1f us   p999 %9.1f us"
              "   client cpu %.2f us/vector\n",
              label, r.vectors_per_second, r.requests_per_second, r.p50_us, r.p99_us, r.p999_us,
              r.client_cpu_us_per_vector);
}


// From /proc/PID/status; 0 when the process is gone.
size_t RssKib(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoul(line.substr(6));
  }
  return 0;
}

size_t OpenFds(pid_t pid) {
  std::error_code ec;
  size_t count = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++count;
  }
  return count;
}

struct AuditCount {
  size_t encrypt_records = 0;
  size_t encrypt_vectors = 0;
};

AuditCount CountEncryptRecords(const std::string& dir) {
  AuditCount count;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".jsonl") continue;
    std::ifstream in(entry.path());
    std::string line;
    while (std::getline(in, line)) {
      const auto record = nlohmann::json::parse(line, nullptr, false);
      if (record.is_object() && record.value("event", "") == "encrypt") {
        ++count.encrypt_records;
        count.encrypt_vectors += record.value("vectors", size_t{0});
      }
    }
  }
  return count;
}

// One long run; every request counts, warm-up included, since a soak is about errors and drift
// over the whole time, not throughput.
int RunSoak(const Options& o, const std::string& socket, pid_t pid, const std::string& audit_dir) {
  const AuditCount audit_before = CountEncryptRecords(audit_dir);
  std::atomic<bool> stop{false};
  std::atomic<size_t> requests{0}, vectors{0}, errors{0};
  std::mutex error_mutex;
  std::string first_error;
  std::vector<std::thread> threads;
  for (size_t t = 0; t < o.connections; ++t) {
    threads.emplace_back([&, t] {
      std::unique_ptr<Client> client = MustConnect(socket, o.json);
      RequestMix mix(o, t);
      while (!stop.load(std::memory_order_relaxed)) {
        const size_t n = mix.NextCount();
        const Status sealed = mix.Encrypt(*client, n);
        if (sealed.ok()) {
          requests.fetch_add(1, std::memory_order_relaxed);
          vectors.fetch_add(n, std::memory_order_relaxed);
          continue;
        }
        if (errors.fetch_add(1) == 0) {
          std::lock_guard lock(error_mutex);
          first_error = sealed.ToString();
        }
        // The connection may be broken: go on with a fresh one.
        if (auto again = ConnectTo(socket, o.json); again.ok()) client = std::move(again).value();
      }
    });
  }

  // One RSS sample a second from the end of the warm-up on.
  std::vector<size_t> rss_after_warmup;
  size_t fds_after_warmup = 0;
  const auto start = Clock::now();
  const auto warm = start + std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double>(o.warmup));
  const auto end = warm + std::chrono::duration_cast<Clock::duration>(
                              std::chrono::duration<double>(o.duration));
  size_t rss_at_start = RssKib(pid), next_report = 1;
  std::ofstream rss_log;
  if (!o.rss_log.empty()) {
    rss_log.open(o.rss_log, std::ios::trunc);
    rss_log << "seconds,rss_kib,requests\n";
  }
  while (Clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    if (rss_log.is_open()) {
      rss_log << std::chrono::duration<double>(Clock::now() - start).count() << ','
              << RssKib(pid) << ',' << requests.load() << std::endl;  // kept if killed
    }
    if (Clock::now() < warm) continue;
    const size_t rss = RssKib(pid);
    if (rss == 0) {
      std::fprintf(stderr, "vecseal_load: the daemon (pid %d) is gone\n", static_cast<int>(pid));
      break;
    }
    if (rss_after_warmup.empty()) fds_after_warmup = OpenFds(pid);
    rss_after_warmup.push_back(rss);
    const double done = std::chrono::duration<double>(Clock::now() - warm).count() / o.duration;
    if (done * 10 >= static_cast<double>(next_report)) {
      std::printf("soak %3.0f%%  requests %zu  vectors %zu  errors %zu  rss %zu KiB\n",
                  std::min(done, 1.0) * 100, requests.load(), vectors.load(), errors.load(), rss);
      std::fflush(stdout);
      next_report = static_cast<size_t>(done * 10) + 1;
    }
  }
  const size_t fds_at_end = OpenFds(pid);
  stop = true;
  for (std::thread& t : threads) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  const AuditCount audit_after = CountEncryptRecords(audit_dir);
  const size_t records = audit_after.encrypt_records - audit_before.encrypt_records;
  const size_t recorded_vectors = audit_after.encrypt_vectors - audit_before.encrypt_vectors;

  // Drift, not noise: requests in flight hold megabytes that come and go, so the medians of the
  // first and the last fifth of the samples are compared rather than single samples.
  const auto window_median = [&](bool last) -> size_t {
    if (rss_after_warmup.empty()) return 0;
    const size_t n = std::max<size_t>(1, rss_after_warmup.size() / 5);
    std::vector<size_t> window(last ? rss_after_warmup.end() - static_cast<ptrdiff_t>(n)
                                    : rss_after_warmup.begin(),
                               last ? rss_after_warmup.end()
                                    : rss_after_warmup.begin() + static_cast<ptrdiff_t>(n));
    std::sort(window.begin(), window.end());
    return window[window.size() / 2];
  };
  const size_t rss_first = window_median(false), rss_last = window_median(true);
  const size_t rss_max =
      rss_after_warmup.empty() ? 0 : *std::max_element(rss_after_warmup.begin(), rss_after_warmup.end());
  const double growth =
      rss_first > 0 ? static_cast<double>(rss_last) / static_cast<double>(rss_first) - 1 : 0;
  const bool rss_flat = !rss_after_warmup.empty() && growth <= o.rss_tolerance;
  const bool audited = records == requests.load() && recorded_vectors == vectors.load();
  const bool ok = errors.load() == 0 && rss_flat && audited;
  if (!first_error.empty()) std::fprintf(stderr, "vecseal_load: first error: %s\n", first_error.c_str());
  std::printf("soak: %.0f s, %zu connections, %zu requests (%.0f/s), %zu vectors (%.0f/s), %zu errors\n",
              elapsed, o.connections, requests.load(), static_cast<double>(requests.load()) / elapsed,
              vectors.load(), static_cast<double>(vectors.load()) / elapsed, errors.load());
  std::printf("soak: rss KiB at start %zu; after warm-up, median of the first fifth %zu, of the "
              "last fifth %zu, max %zu (%zu samples): growth %+.1f%% (limit %.0f%%); fds after "
              "warm-up %zu, at end %zu\n",
              rss_at_start, rss_first, rss_last, rss_max, rss_after_warmup.size(), growth * 100,
              o.rss_tolerance * 100, fds_after_warmup, fds_at_end);
  std::printf("soak: audit encrypt records %zu for %zu requests served, %zu vectors recorded for "
              "%zu served\n", records, requests.load(), recorded_vectors, vectors.load());
  std::printf("vecseal_load soak: %s (errors %s, rss %s, audit %s)\n", ok ? "PASS" : "FAIL",
              errors.load() == 0 ? "none" : "SOME", rss_flat ? "flat" : "GREW",
              audited ? "complete" : "MISMATCH");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = ParseOptions(argc, argv);
  std::unique_ptr<OwnDaemon> daemon;
  std::string socket = o.socket;
  if (!o.vecseald.empty()) {
    daemon = std::make_unique<OwnDaemon>(o.vecseald, o.group_size, o.pkcs11_module,
                                         o.hsm_delay_us, o.budget);
    socket = daemon->socket();
  }
  {
    std::unique_ptr<Client> admin = MustConnect(socket, false);
    auto created = admin->CreateKey({o.key, 1.0, o.transform, std::nullopt, o.derivation});
    if (!created.ok() && created.status().reason() != "key_exists") Die(created.status().ToString());
  }
  if (o.soak) {
    return RunSoak(o, socket, daemon ? daemon->pid() : o.pid,
                   daemon ? daemon->audit_dir() : o.audit_dir);
  }
  std::printf("vecseal_load: %zu connections, batch %zu, d=%zu, %s, %s, %s, single-fraction %.3f, "
              "derivation %s, group size %s, HSM delay %ld us, %.1f s x %zu\n",
              o.connections, o.batch, o.dimension, o.json ? "json" : "binary",
              o.transform.c_str(), o.reversible ? "reversible" : "one-way", o.single_fraction,
              o.derivation.c_str(),
              o.vecseald.empty() ? "(daemon's)" : std::to_string(o.group_size).c_str(),
              o.hsm_delay_us, o.duration, o.repetitions);
  std::vector<RunResult> runs;
  size_t errors = 0;
  for (size_t i = 0; i < o.repetitions; ++i) {
    runs.push_back(RunOnce(o, socket));
    errors += runs.back().errors;
    Print(("run " + std::to_string(i + 1)).c_str(), runs.back());
  }
  RunResult median;
  const auto field = [&](double RunResult::*member) {
    std::vector<double> values;
    for (const RunResult& r : runs) values.push_back(r.*member);
    return Median(values);
  };
  median.vectors_per_second = field(&RunResult::vectors_per_second);
  median.requests_per_second = field(&RunResult::requests_per_second);
  median.p50_us = field(&RunResult::p50_us);
  median.p99_us = field(&RunResult::p99_us);
  median.p999_us = field(&RunResult::p999_us);
  median.client_cpu_us_per_vector = field(&RunResult::client_cpu_us_per_vector);
  Print("median", median);
  if (errors > 0) {
    std::fprintf(stderr, "vecseal_load: %zu requests failed\n", errors);
    return 1;
  }
  return 0;
}
