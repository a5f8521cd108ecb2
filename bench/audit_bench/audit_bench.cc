// Audit log throughput: records per second through Log::Append under each sync policy and from
// several threads, against the floor of the same bytes written by one bare O_APPEND write().
// The log directory is a fresh temp dir (set TMPDIR to measure another file system).
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <memory>

#include "support/audit_test_util.h"
#include "support/software_signer.h"
#include "vecseal/audit/log.h"

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

BENCHMARK(BM_BareWrite)->UseRealTime();
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
