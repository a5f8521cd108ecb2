// Failure is closed: a record that cannot be written refuses its request, the log stays
// suspended until writes succeed, and resumes with a record of what it refused.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "support/audit_test_util.h"
#include "support/software_signer.h"
#include "vecseal/audit/log.h"
#include "vecseal/audit/verify.h"

namespace vecseal::audit {
namespace {

using testing::FaultPlan;
using testing::LogFiles;
using testing::ReadLines;
using testing::SampleEvent;
using testing::SoftwareSigner;
using testing::TempDir;
using ::testing::HasSubstr;

struct Harness {
  explicit Harness(std::function<void(LogOptions*)> tweak = nullptr) {
    LogOptions options = testing::TestOptions(dir.path());
    options.fs = testing::FaultyFileSystem(plan);
    options.notice = [this](std::string_view level, std::string_view message) {
      std::lock_guard lock(notices_mu);  // the flusher thread reports too
      notices.push_back(std::string(level) + ": " + std::string(message));
    };
    if (tweak) tweak(&options);
    auto opened = Log::Open(options, signer);
    EXPECT_TRUE(opened.ok()) << opened.status().ToString();
    if (opened.ok()) log = std::move(opened).value();
  }

  std::vector<nlohmann::json> Records() const {
    std::vector<nlohmann::json> records;
    for (const auto& file : LogFiles(dir.path())) {
      for (const auto& line : ReadLines(file)) records.push_back(nlohmann::json::parse(line));
    }
    return records;
  }

  size_t Count(std::string_view field, std::string_view value) const {
    size_t n = 0;
    for (const auto& r : Records()) n += r.value(std::string(field), "") == value;
    return n;
  }

  VerifyReport VerifyAll() const {
    const auto files = LogFiles(dir.path());
    Result<VerifyReport> report = Verify(files, *signer->PublicKeyPem());
    EXPECT_TRUE(report.ok());
    return std::move(report).value();
  }

  std::vector<std::string> Notices() {
    std::lock_guard lock(notices_mu);
    return notices;
  }

  TempDir dir;
  std::shared_ptr<FaultPlan> plan = std::make_shared<FaultPlan>();
  std::shared_ptr<SoftwareSigner> signer = SoftwareSigner::Generate();
  std::mutex notices_mu;
  std::vector<std::string> notices;
  std::unique_ptr<Log> log;
};

Event Refusable(int i) {
  Event event = SampleEvent(i);
  event.request_id = "refused-" + std::to_string(i);
  return event;
}

TEST(AuditFailClosedTest, DevFullRefusesEveryRequest) {
  if (::access("/dev/full", W_OK) != 0) GTEST_SKIP() << "/dev/full is not writable here";
  TempDir dir;
  LogOptions options = testing::TestOptions(dir.path());
  options.single_file = "/dev/full";
  auto log = Log::Open(options, SoftwareSigner::Generate());
  ASSERT_TRUE(log.ok()) << "a log that cannot be written still opens, suspended";
  EXPECT_FALSE((*log)->healthy());
  for (int i = 0; i < 3; ++i) {
    const Status status = (*log)->Append(SampleEvent(i));
    EXPECT_EQ(status.code(), Code::kUnavailable);
    EXPECT_EQ(status.reason(), "audit_unavailable");
    EXPECT_THAT(status.message(), HasSubstr("/dev/full: No space left on device"));
  }
  EXPECT_EQ((*log)->Seal().reason(), "audit_unavailable");
  EXPECT_EQ((*log)->Close().reason(), "audit_unavailable");
}

struct IoFault {
  std::string name;
  std::function<void(FaultPlan&, bool)> set;
  std::string message;
  bool new_file;  // whether the log must continue in a fresh file
  LogOptions::Sync sync;
  // The fault shows only in the background fdatasync of the interval policy, after the request
  // whose record it covers was answered.
  bool background = false;
  friend void PrintTo(const IoFault& fault, std::ostream* os) { *os << fault.name; }
};

class AuditIoFaultTest : public ::testing::TestWithParam<IoFault> {};

TEST_P(AuditIoFaultTest, RefusesWhileFailingThenResumesWithACount) {
  const IoFault& fault = GetParam();
  Harness h([&](LogOptions* o) {
    o->sync = fault.sync;
    if (fault.background) o->sync_interval = std::chrono::milliseconds(5);
  });
  ASSERT_NE(h.log, nullptr);
  ASSERT_TRUE(h.log->Append(SampleEvent(0)).ok());
  const size_t files_before = LogFiles(h.dir.path()).size();

  fault.set(*h.plan, true);
  if (fault.background) {
    // No fdatasync runs on the request's path: this request is answered, and the background
    // fdatasync that covers its record fails afterwards and suspends the log.
    ASSERT_TRUE(h.log->Append(SampleEvent(1)).ok());
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    const auto suspended = [&] {
      for (const std::string& notice : h.Notices()) {
        if (notice.find("audit log suspended") != std::string::npos) return true;
      }
      return false;
    };
    while (!suspended() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  // Every later request is refused, even though retries (every Append here) find that writes
  // work again: the fdatasync of a retry fails too.
  for (int i = 0; i < 3; ++i) {
    const Status status = h.log->Append(Refusable(i));
    EXPECT_EQ(status.reason(), "audit_unavailable") << fault.name;
    EXPECT_THAT(status.message(), HasSubstr(fault.message)) << fault.name;
  }
  EXPECT_FALSE(h.log->healthy());
  EXPECT_THAT(h.Notices(), ::testing::Contains(HasSubstr("audit log suspended")));

  fault.set(*h.plan, false);
  ASSERT_TRUE(h.log->Append(SampleEvent(9)).ok()) << fault.name;
  EXPECT_TRUE(h.log->healthy());
  ASSERT_TRUE(h.log->Close().ok());

  const auto records = h.Records();
  const auto resumed = std::find_if(records.begin(), records.end(),
                                    [](const auto& r) { return r["event"] == "resumed"; });
  ASSERT_NE(resumed, records.end());
  EXPECT_EQ((*resumed)["refused"], 3);
  // The write that failed during a sync-every-record run landed before its fdatasync failed;
  // the refused requests that never reached the disk are absent.
  const size_t landed = fault.sync == LogOptions::Sync::kEveryRecord ? 1 : 0;
  size_t refused_in_log = 0;
  for (const auto& r : records) {
    refused_in_log += r.value("request_id", "").starts_with("refused-");
  }
  EXPECT_EQ(refused_in_log, landed);
  // After a failed fdatasync the file is never appended to again: every attempt to resume
  // starts a fresh one.
  if (fault.new_file) {
    EXPECT_GT(LogFiles(h.dir.path()).size(), files_before);
  } else {
    EXPECT_EQ(LogFiles(h.dir.path()).size(), files_before);
  }
  const VerifyReport report = h.VerifyAll();
  EXPECT_TRUE(report.ok()) << report.error->code << ": " << report.error->message;
  EXPECT_EQ(report.unsealed_tail, 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Faults, AuditIoFaultTest,
    ::testing::Values(
        IoFault{"eio", [](FaultPlan& p, bool on) { p.fail_write = on; }, "Input/output error",
                false, LogOptions::Sync::kInterval},
        IoFault{"erofs", [](FaultPlan& p, bool on) { p.read_only = on; },
                "Read-only file system", false, LogOptions::Sync::kInterval},
        IoFault{"fdatasync", [](FaultPlan& p, bool on) { p.fail_sync = on; },
                "fdatasync: Input/output error", true, LogOptions::Sync::kEveryRecord},
        IoFault{"interval_fdatasync", [](FaultPlan& p, bool on) { p.fail_sync = on; },
                "fdatasync: Input/output error", true, LogOptions::Sync::kInterval,
                /*background=*/true}),
    [](const auto& test_info) { return test_info.param.name; });

// The kernel reports a writeback error to one fdatasync only. When armed, the next fdatasync
// of a file blocks until another fdatasync of it has completed, then reports EIO: the error the
// other one, which succeeded, did not see.
struct RacingSync {
  std::mutex mu;
  std::condition_variable cv;
  bool armed = false;
  bool blocked = false;
  bool other_done = false;
};

class RacingFile final : public AppendFile {
 public:
  RacingFile(std::unique_ptr<AppendFile> real, std::shared_ptr<RacingSync> race)
      : real_(std::move(real)), race_(std::move(race)) {}
  Status Append(std::string_view data, size_t* written) override {
    return real_->Append(data, written);
  }
  Status Sync() override {
    std::unique_lock lock(race_->mu);
    if (race_->armed) {
      race_->armed = false;
      race_->blocked = true;
      race_->cv.notify_all();
      race_->cv.wait(lock, [this] { return race_->other_done; });
      return Status(Code::kUnavailable, "io_error", "fdatasync: Input/output error");
    }
    lock.unlock();
    const Status synced = real_->Sync();
    lock.lock();
    if (race_->blocked) race_->other_done = true;
    race_->cv.notify_all();
    return synced;
  }
  Status Reserve(uint64_t offset, uint64_t bytes) override { return real_->Reserve(offset, bytes); }
  bool SetAppendOnly() override { return real_->SetAppendOnly(); }
  uint64_t size() const override { return real_->size(); }

 private:
  std::unique_ptr<AppendFile> real_;
  std::shared_ptr<RacingSync> race_;
};

class RacingFileSystem final : public FileSystem {
 public:
  explicit RacingFileSystem(std::shared_ptr<RacingSync> race) : race_(std::move(race)) {}
  Result<std::unique_ptr<AppendFile>> OpenAppend(const std::string& path) override {
    auto file = real_->OpenAppend(path);
    if (!file.ok()) return std::move(file).TakeStatus();
    return std::unique_ptr<AppendFile>(std::make_unique<RacingFile>(std::move(*file), race_));
  }
  Result<std::vector<std::string>> ListDir(const std::string& dir) override {
    return real_->ListDir(dir);
  }
  Status ReadTail(const std::string& path, uint64_t max_bytes, std::string* tail,
                  uint64_t* file_size) override {
    return real_->ReadTail(path, max_bytes, tail, file_size);
  }
  Result<uint64_t> FreeBytes(const std::string& path) override { return real_->FreeBytes(path); }
  Status SyncDir(const std::string& dir) override { return real_->SyncDir(dir); }

 private:
  std::shared_ptr<FileSystem> real_ = PosixFileSystem();
  std::shared_ptr<RacingSync> race_;
};

TEST(AuditFailClosedTest, GroupCommitNeverAcknowledgesARecordWhoseFdatasyncLostTheError) {
  TempDir dir;
  auto race = std::make_shared<RacingSync>();
  LogOptions options = testing::TestOptions(dir.path());
  options.sync = LogOptions::Sync::kEveryRecord;
  options.seal_every_records = 3;  // file_start, A, B: B's append seals, syncing under the lock
  options.fs = std::make_shared<RacingFileSystem>(race);
  auto log = Log::Open(options, SoftwareSigner::Generate());
  ASSERT_TRUE(log.ok()) << log.status().ToString();
  {
    std::lock_guard lock(race->mu);
    race->armed = true;
  }
  Status a;
  std::thread writer_a([&] { a = (*log)->Append(SampleEvent(1)); });
  {
    std::unique_lock lock(race->mu);
    race->cv.wait(lock, [&] { return race->blocked; });
  }
  // A's group-commit fdatasync is in flight; B's seal fdatasync runs beside it and succeeds.
  const Status b = (*log)->Append(SampleEvent(2));
  writer_a.join();
  EXPECT_EQ(a.reason(), "audit_unavailable");
  EXPECT_EQ(b.reason(), "audit_unavailable")
      << "B was acknowledged although the fdatasync that covered its bytes failed";
  EXPECT_FALSE((*log)->healthy());
}

TEST(AuditFailClosedTest, ShortWriteLeavesATornLineThatVerifiesAsAWarning) {
  Harness h;
  ASSERT_NE(h.log, nullptr);
  ASSERT_TRUE(h.log->Append(SampleEvent(0)).ok());
  h.plan->short_writes = 1;
  EXPECT_EQ(h.log->Append(Refusable(1)).reason(), "audit_unavailable");
  ASSERT_TRUE(h.log->Append(SampleEvent(2)).ok());
  ASSERT_TRUE(h.log->Close().ok());
  const auto files = LogFiles(h.dir.path());
  ASSERT_EQ(files.size(), 2u);
  std::string torn;
  ReadLines(files[0], &torn);
  EXPECT_FALSE(torn.empty());
  const auto start = nlohmann::json::parse(ReadLines(files[1])[0]);
  EXPECT_EQ(start["reason"], "recover");
  const VerifyReport report = h.VerifyAll();
  EXPECT_TRUE(report.ok());
  ASSERT_EQ(report.warnings.size(), 1u);
  EXPECT_EQ(report.warnings[0].code, "torn_line");
  EXPECT_EQ(report.warnings[0].file, files[0]);
}

TEST(AuditFailClosedTest, RetriesNoSoonerThanTheRetryInterval) {
  Harness h([](LogOptions* o) { o->retry_interval = std::chrono::hours(1); });
  ASSERT_NE(h.log, nullptr);
  h.plan->fail_write = true;
  EXPECT_EQ(h.log->Append(Refusable(0)).reason(), "audit_unavailable");
  h.plan->fail_write = false;
  // The disk is back, but the next attempt is an hour away: still refused, no write tried.
  EXPECT_EQ(h.log->Append(Refusable(1)).reason(), "audit_unavailable");
  EXPECT_EQ(h.Count("event", "resumed"), 0u);
}

TEST(AuditFailClosedTest, OpensSuspendedWhenTheFirstFileCannotBeCreated) {
  TempDir dir;
  auto plan = std::make_shared<FaultPlan>();
  plan->fail_open = true;
  LogOptions options = testing::TestOptions(dir.path());
  options.fs = testing::FaultyFileSystem(plan);
  auto log = Log::Open(options, SoftwareSigner::Generate());
  ASSERT_TRUE(log.ok());
  EXPECT_FALSE((*log)->healthy());
  EXPECT_EQ((*log)->Append(SampleEvent(0)).reason(), "audit_unavailable");
  plan->fail_open = false;
  EXPECT_TRUE((*log)->Append(SampleEvent(1)).ok());
  const auto records = ReadLines(LogFiles(dir.path()).at(0));
  EXPECT_EQ(nlohmann::json::parse(records[0])["event"], "file_start");
  EXPECT_EQ(nlohmann::json::parse(records[1])["event"], "resumed");
}

TEST(AuditFailClosedTest, WarnsThenRefusesByFreeSpaceAndResumes) {
  Harness h([](LogOptions* o) {
    o->warn_free_bytes = 1 << 20;
    o->refuse_free_bytes = 1 << 16;
    o->reserve_bytes = 4096;  // checked every 1 KiB written
  });
  ASSERT_NE(h.log, nullptr);
  h.plan->free_bytes = 1 << 19;  // below warn, above refuse
  for (int i = 0; i < 20 && h.Count("event", "space_low") == 0; ++i) {
    ASSERT_TRUE(h.log->Append(SampleEvent(i)).ok());
  }
  EXPECT_EQ(h.Count("event", "space_low"), 1u);
  EXPECT_TRUE(h.log->healthy());
  EXPECT_THAT(h.notices, ::testing::Contains(HasSubstr("requests are refused below 65536")));

  h.plan->free_bytes = 1 << 10;  // below refuse
  int accepted = 0;
  Status status;
  for (int i = 0; i < 20 && (status = h.log->Append(Refusable(i))).ok(); ++i) ++accepted;
  EXPECT_EQ(status.reason(), "audit_unavailable");
  EXPECT_THAT(status.message(), HasSubstr("free space is below refuse_free_bytes"));
  EXPECT_EQ(h.Count("event", "suspended"), 1u) << "written into the reserve";
  // The suspension came after the write that crossed the threshold; the next one is refused.
  EXPECT_FALSE(h.log->healthy());
  EXPECT_EQ(h.log->Append(Refusable(100)).reason(), "audit_unavailable");

  h.plan->free_bytes = int64_t{1} << 30;
  ASSERT_TRUE(h.log->Append(SampleEvent(200)).ok());
  const auto records = h.Records();
  const auto resumed = std::find_if(records.begin(), records.end(),
                                    [](const auto& r) { return r["event"] == "resumed"; });
  ASSERT_NE(resumed, records.end());
  EXPECT_EQ((*resumed)["refused"], 2);
  ASSERT_TRUE(h.log->Close().ok());
  EXPECT_TRUE(h.VerifyAll().ok());
}

TEST(AuditFailClosedTest, SuspendsWhenTheReserveCannotBeRenewed) {
  Harness h([](LogOptions* o) { o->reserve_bytes = 2048; });
  ASSERT_NE(h.log, nullptr);
  h.plan->fail_reserve = true;
  Status status;
  for (int i = 0; i < 20 && (status = h.log->Append(SampleEvent(i))).ok(); ++i) {
  }
  EXPECT_EQ(status.reason(), "audit_unavailable");
  EXPECT_THAT(status.message(), HasSubstr("cannot renew the preallocated reserve"));
  EXPECT_EQ(h.Count("event", "suspended"), 1u);
  EXPECT_EQ(h.log->Append(Refusable(1)).reason(), "audit_unavailable")
      << "no resumption while the reserve cannot be had";
  h.plan->fail_reserve = false;
  EXPECT_TRUE(h.log->Append(SampleEvent(2)).ok());
  EXPECT_EQ(h.Count("event", "resumed"), 1u);
}

TEST(AuditFailClosedTest, RealReserveIsPreallocatedBeyondTheEndOfFile) {
  TempDir dir;
  LogOptions options = testing::TestOptions(dir.path());
  options.reserve_bytes = 1 << 20;
  auto log = Log::Open(options, SoftwareSigner::Generate());
  ASSERT_TRUE(log.ok());
  struct stat st {};
  ASSERT_EQ(::stat((*log)->current_file().c_str(), &st), 0);
  const auto start = nlohmann::json::parse(ReadLines((*log)->current_file())[0]);
  if (start["reserve_bytes"] == 0) GTEST_SKIP() << "this file system has no fallocate";
  EXPECT_EQ(start["reserve_bytes"], 1 << 20);
  EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, uint64_t{1} << 20);
  EXPECT_LT(static_cast<uint64_t>(st.st_size), uint64_t{1} << 20);
}

}  // namespace
}  // namespace vecseal::audit

namespace vecseal::audit {
namespace {

TEST(AuditFailClosedTest, CloseTriesOnceMoreSoThatTheFinalSealIsWritten) {
  Harness h([](LogOptions* o) { o->retry_interval = std::chrono::hours(1); });
  ASSERT_NE(h.log, nullptr);
  ASSERT_TRUE(h.log->Append(SampleEvent(0)).ok());
  h.plan->fail_write = true;
  EXPECT_EQ(h.log->Append(Refusable(1)).reason(), "audit_unavailable");
  h.plan->fail_write = false;
  ASSERT_TRUE(h.log->Close().ok());
  const auto records = h.Records();
  EXPECT_EQ(records.back()["event"], "seal");
  EXPECT_EQ(records.back()["reason"], "close");
  EXPECT_EQ(records[records.size() - 3]["event"], "resumed");
  EXPECT_EQ(records[records.size() - 2]["event"], "stop");
  const VerifyReport report = h.VerifyAll();
  EXPECT_TRUE(report.ok());
  EXPECT_EQ(report.unsealed_tail, 0u);
}

}  // namespace
}  // namespace vecseal::audit
