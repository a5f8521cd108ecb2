// Audit log throughput: records per second through Log::Append under each sync policy and from
// several threads, against the floor of the same bytes written by one bare O_APPEND write().
// The log directory is a fresh temp dir (set TMPDIR to measure another file system).
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "support/audit_test_util.h"
#include "support/software_signer.h"
#include "vecseal/audit/log.h"
#include "vecseal/audit/spend.h"
#include "vecseal/audit/verify.h"
#include "vecseal/policy/budget.h"

namespace vecseal::audit {
namespace {

struct Shared {
  std::unique_ptr<testing::TempDir> dir;
  std::unique_ptr<Log> log;
};
Shared shared;

LogOptions BenchOptions(const std::string& dir, LogOptions::Sync sync) {
  LogOptions options;  // the production defaults but the sync policy
  options.dir = dir;
  options.sync = sync;
  options.try_append_only = false;  // so that the temp dir can be removed
  return options;
}

void BM_Append(benchmark::State& state, LogOptions::Sync sync) {
  if (state.thread_index() == 0) {
    shared.dir = std::make_unique<testing::TempDir>();
    auto log = Log::Open(BenchOptions(shared.dir->path(), sync), testing::SoftwareSigner::Generate());
    if (!log.ok()) state.SkipWithError(log.status().ToString().c_str());
    shared.log = log.ok() ? std::move(log).value() : nullptr;
  }
  const Event event = testing::SampleEvent(static_cast<int>(state.thread_index()));
  for (auto _ : state) {
    if (!shared.log || !shared.log->Append(event).ok()) {
      state.SkipWithError("append failed");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) {
    if (shared.log) (void)shared.log->Close();
    shared.log.reset();
    shared.dir.reset();
  }
}

// The floor: a line of the same length written with one write() to an O_APPEND file, without
// serialising, hashing, sealing or syncing.
void BM_BareWrite(benchmark::State& state) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/bare.jsonl";
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  // As long as a real record of the sample event.
  size_t length = 0;
  {
    testing::TempDir sample_dir;
    auto log = Log::Open(BenchOptions(sample_dir.path(), LogOptions::Sync::kInterval),
                         testing::SoftwareSigner::Generate());
    if (log.ok() && (*log)->Append(testing::SampleEvent(0)).ok() && (*log)->Close().ok()) {
      length = testing::ReadLines(testing::LogFiles(sample_dir.path())[0])[1].size() + 1;
    }
  }
  state.counters["bytes_per_record"] = static_cast<double>(length);
  const std::string line(length, 'x');
  for (auto _ : state) {
    if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
      state.SkipWithError("write failed");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
  ::close(fd);
}

// A log of `mib` MiB of encrypt records as the daemon writes them, written once by the real
// writer and kept for every benchmark that reads it.
const std::vector<std::string>* SpendLog(int64_t mib) {
  static testing::TempDir* dir = nullptr;
  static std::vector<std::string> files;
  static int64_t written = 0;
  if (written == mib) return &files;
  delete dir;
  dir = new testing::TempDir();
  files.clear();
  LogOptions options = BenchOptions(dir->path(), LogOptions::Sync::kInterval);
  options.warn_free_bytes = 0;
  options.refuse_free_bytes = 0;
  auto log = Log::Open(options, testing::SoftwareSigner::Generate());
  if (!log.ok()) return nullptr;
  Event event;
  event.event = event.operation = "encrypt";
  event.caller = Caller{48213, 1001, "scorer", 1001, "/usr/bin/python3.11", "",
                        "ticket-scorer.service", "/opt/scorer/score.py", "not_needed"};
  event.key_version = 3;
  event.vectors = 1024;
  event.dimension = 768;
  event.reversible = false;
  event.decision = "granted";
  event.extra = nlohmann::json{{"key_format", 2}};
  const uint64_t bytes = static_cast<uint64_t>(mib) << 20;
  for (uint64_t i = 0; (*log)->next_seq() * 460 < bytes; ++i) {
    event.request_id = std::to_string(0x5eed00000000 + i);
    event.key = "support-" + std::to_string(i % 8);
    event.rule_id = i % 2 == 0 ? "staging-scorer" : "nightly-export";
    if (!(*log)->Append(event).ok()) return nullptr;
  }
  if (!(*log)->Close().ok()) return nullptr;
  auto found = LogFilesInOrder(dir->path());
  if (!found.ok()) return nullptr;
  files = std::move(found).value();
  written = mib;
  return &files;
}

// Reading alone: every record's head, and the fields of each encrypt record.
void BM_ScanSpends(benchmark::State& state) {
  const std::vector<std::string>* files = SpendLog(state.range(0));
  if (files == nullptr) {
    state.SkipWithError("cannot write the log");
    return;
  }
  uint64_t records = 0, bytes = 0;
  for (auto _ : state) {
    auto scan = ScanSpends(*files, 0, [](const Spend& spend) { benchmark::DoNotOptimize(spend); });
    if (!scan.ok()) {
      state.SkipWithError(scan.status().ToString().c_str());
      return;
    }
    records += scan->records;
    bytes += scan->bytes_read;
  }
  state.SetItemsProcessed(static_cast<int64_t>(records));
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
}

// What vecseald does at start when a rule has a budget: read the log and count the rule's
// encrypt records into the ledger (half of the records are the budgeted rule's).
void BM_RebuildBudgets(benchmark::State& state) {
  const std::vector<std::string>* files = SpendLog(state.range(0));
  if (files == nullptr) {
    state.SkipWithError("cannot write the log");
    return;
  }
  const policy::Budget budget{policy::Operation::kEncrypt, 1ull << 62, 86400,
                              policy::Budget::PerCaller::kUid};
  uint64_t records = 0, bytes = 0;
  for (auto _ : state) {
    policy::BudgetLedger ledger;
    const auto now = std::chrono::steady_clock::now();
    auto scan = ScanSpends(*files, 0, [&](const Spend& spend) {
      if (spend.rule_id != "staging-scorer") return;
      ledger.Add(budget, {spend.rule_id, spend.key, spend.uid, spend.unit}, spend.vectors, now);
    });
    if (!scan.ok()) {
      state.SkipWithError(scan.status().ToString().c_str());
      return;
    }
    records += scan->records;
    bytes += scan->bytes_read;
  }
  state.SetItemsProcessed(static_cast<int64_t>(records));
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
}

BENCHMARK(BM_BareWrite)->UseRealTime();
BENCHMARK(BM_ScanSpends)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_RebuildBudgets)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Append, interval, LogOptions::Sync::kInterval)->UseRealTime()->Threads(1);
BENCHMARK_CAPTURE(BM_Append, interval, LogOptions::Sync::kInterval)->UseRealTime()->Threads(4);
BENCHMARK_CAPTURE(BM_Append, every_record, LogOptions::Sync::kEveryRecord)
    ->UseRealTime()
    ->Threads(1);
BENCHMARK_CAPTURE(BM_Append, every_record, LogOptions::Sync::kEveryRecord)
    ->UseRealTime()
    ->Threads(4)
    ->Threads(16);

}  // namespace
}  // namespace vecseal::audit

BENCHMARK_MAIN();
