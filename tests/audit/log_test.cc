// The writer: record format, chain, seals, rotation, restart.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>

#include <nlohmann/json.hpp>

#include "support/audit_test_util.h"
#include "support/software_signer.h"
#include "vecseal/audit/log.h"
#include "vecseal/audit/verify.h"

namespace vecseal::audit {
namespace {

using testing::LogFiles;
using testing::ReadLines;
using testing::SampleEvent;
using testing::SoftwareSigner;
using testing::TempDir;
using testing::TestOptions;
using ::testing::HasSubstr;

std::string Pem(const std::shared_ptr<SoftwareSigner>& signer) { return *signer->PublicKeyPem(); }

VerifyReport VerifyDir(const std::string& dir, const std::shared_ptr<SoftwareSigner>& signer,
                       LogEnd end = LogEnd::kStopped) {
  const std::vector<std::string> files = LogFiles(dir);
  Result<VerifyReport> report = Verify(files, Pem(signer), {}, end);
  EXPECT_TRUE(report.ok()) << report.status().ToString();
  return std::move(report).value();
}

std::unique_ptr<Log> OpenLog(const LogOptions& options, std::shared_ptr<Signer> signer) {
  Result<std::unique_ptr<Log>> log = Log::Open(options, std::move(signer));
  EXPECT_TRUE(log.ok()) << log.status().ToString();
  return log.ok() ? std::move(log).value() : nullptr;
}

TEST(AuditLogTest, RecordsAreCanonicalJsonInFixedOrderAndChained) {
  TempDir dir;
  auto signer = SoftwareSigner::Generate();
  auto log = OpenLog(TestOptions(dir.path()), signer);
  ASSERT_NE(log, nullptr);
  Event event = SampleEvent(2);
  event.caller->exe = std::string("/opt/odd\xff\"name\n", 15);
  event.extra = {{"zeta", 1}, {"alpha", "x"}};
  ASSERT_TRUE(log->Append(event).ok());
  ASSERT_TRUE(log->Close().ok());

  const auto files = LogFiles(dir.path());
  ASSERT_EQ(files.size(), 1u);
  const auto lines = ReadLines(files[0]);
  ASSERT_EQ(lines.size(), 4u);  // file_start, the event, the stop record Close wrote, the seal
  EXPECT_EQ(nlohmann::json::parse(lines[2])["event"], "stop");
  const auto start = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(start["event"], "file_start");
  EXPECT_EQ(start["seq"], 1);
  EXPECT_EQ(start["prev"], std::string(64, '0'));
  EXPECT_TRUE(start["prev_file"].is_null());
  EXPECT_EQ(start["file_id"].get<std::string>().size(), 32u);

  // Field order is part of the format: seq, time, prev, event, then the event's fields.
  EXPECT_THAT(lines[1], ::testing::StartsWith("{\"seq\":2,\"time\":\""));
  const size_t prev_at = lines[1].find(",\"prev\":\"");
  EXPECT_EQ(lines[1].substr(prev_at + 9 + 64, 30), "\",\"event\":\"encrypt\",\"request_i");
  EXPECT_THAT(lines[1], HasSubstr("\"caller\":{\"pid\":1002,\"uid\":1000,\"user\":\"alice\","
                                  "\"gid\":1000,\"exe\":\"/opt/odd\\ufffd\\\"name\\u000a\""));
  EXPECT_THAT(lines[1], HasSubstr("\"extra\":{\"alpha\":\"x\",\"zeta\":1}}"));
  const auto record = nlohmann::json::parse(lines[1]);
  EXPECT_EQ(record["key"], "demo");
  EXPECT_EQ(record["key_version"], 3);
  EXPECT_EQ(record["vectors"], 3);
  EXPECT_EQ(record["dimension"], 768);
  EXPECT_EQ(record["reversible"], true);
  EXPECT_EQ(record["decision"], "granted");
  EXPECT_FALSE(record.contains("error_code"));  // empty fields are left out
  EXPECT_THAT(record["time"].get<std::string>(),
              ::testing::MatchesRegex("20[0-9][0-9]-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:"
                                      "[0-6][0-9]\\.[0-9]{6}Z"));

  const auto seal = nlohmann::json::parse(lines[3]);
  EXPECT_EQ(seal["event"], "seal");
  EXPECT_EQ(seal["reason"], "close");
  EXPECT_EQ(seal["file_id"], start["file_id"]);
  EXPECT_EQ(seal["head"], seal["prev"]);
  EXPECT_EQ(seal["key_id"], start["key_id"]);

  const VerifyReport report = VerifyDir(dir.path(), signer);
  EXPECT_TRUE(report.ok()) << report.error->message;
  EXPECT_EQ(report.records, 4u);
  EXPECT_EQ(report.seals, 1u);
  EXPECT_EQ(report.unsealed_tail, 0u);
  EXPECT_TRUE(report.warnings.empty());
}

TEST(AuditLogTest, RefusesEventsThatCouldCarrySecretsOrImpersonateTheLog) {
  TempDir dir;
  auto log = OpenLog(TestOptions(dir.path()), SoftwareSigner::Generate());
  ASSERT_NE(log, nullptr);
  struct Case {
    std::string name;
    std::function<void(Event*)> mutate;
    std::string reason;
  };
  const std::vector<Case> cases = {
      {"no name", [](Event* e) { e->event.clear(); }, "audit_bad_event"},
      {"seal", [](Event* e) { e->event = "seal"; }, "audit_reserved_event"},
      {"file_start", [](Event* e) { e->event = "file_start"; }, "audit_reserved_event"},
      {"resumed", [](Event* e) { e->event = "resumed"; }, "audit_reserved_event"},
      {"extra not object", [](Event* e) { e->extra = 5; }, "audit_bad_event"},
      {"pin", [](Event* e) { e->extra = {{"pin", "1234"}}; }, "audit_forbidden_field"},
      {"nested vectors", [](Event* e) { e->extra = {{"a", {{"vectors", {1.0}}}}}; },
       "audit_forbidden_field"},
      {"token", [](Event* e) { e->extra = {{"token", "x"}}; }, "audit_forbidden_field"},
      {"huge", [](Event* e) { e->extra = {{"note", std::string(20000, 'x')}}; },
       "audit_record_too_large"},
  };
  for (const Case& c : cases) {
    Event event = SampleEvent(1);
    c.mutate(&event);
    const Status status = log->Append(event);
    EXPECT_EQ(status.code(), Code::kInvalidArgument) << c.name;
    EXPECT_EQ(status.reason(), c.reason) << c.name;
  }
  EXPECT_EQ(log->next_seq(), 2u) << "nothing but file_start was written";
}

TEST(AuditLogTest, SealsEveryNRecordsAndAcceptsRawSignatures) {
  TempDir dir;
  auto signer = SoftwareSigner::Generate();
  signer->raw_signatures = true;  // what CKM_ECDSA returns
  LogOptions options = TestOptions(dir.path());
  options.seal_every_records = 4;
  auto log = OpenLog(options, signer);
  ASSERT_NE(log, nullptr);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(log->Append(SampleEvent(i)).ok());
  ASSERT_TRUE(log->last_seal().has_value());
  const SealInfo seal = *log->last_seal();
  const auto lines = ReadLines(LogFiles(dir.path())[0]);
  const auto seal_record = nlohmann::json::parse(lines[seal.seq - 1]);
  EXPECT_EQ(seal_record["event"], "seal");
  EXPECT_EQ(seal_record["head"], seal.head);

  const VerifyReport open_report = VerifyDir(dir.path(), signer, LogEnd::kLive);
  EXPECT_TRUE(open_report.ok());
  EXPECT_GE(open_report.seals, 2u);
  EXPECT_EQ(open_report.unsealed_tail, open_report.last_seq - seal.seq);
  ASSERT_TRUE(log->Close().ok());
  const VerifyReport closed = VerifyDir(dir.path(), signer);
  EXPECT_TRUE(closed.ok());
  EXPECT_EQ(closed.unsealed_tail, 0u);
}

// The time rule on its own: far below seal_every_records, a seal comes seal_every after the last
// one, and none while no record was written since.
TEST(AuditLogTest, SealsAfterSealEverySeconds) {
  TempDir dir;
  auto signer = SoftwareSigner::Generate();
  LogOptions options = TestOptions(dir.path());
  options.seal_every_records = 1000;
  options.seal_every = std::chrono::seconds(1);
  const auto opened = std::chrono::steady_clock::now();
  auto log = OpenLog(options, signer);
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(log->Append(SampleEvent(0)).ok());
  ASSERT_TRUE(log->Append(SampleEvent(1)).ok());

  const auto seals = [&] {
    std::vector<nlohmann::json> found;
    for (const auto& line : ReadLines(LogFiles(dir.path())[0])) {
      auto record = nlohmann::json::parse(line);
      if (record["event"] == "seal") found.push_back(std::move(record));
    }
    return found;
  };
  // Generous: only a stalled machine takes this long.
  const auto deadline = opened + std::chrono::seconds(30);
  while (seals().empty() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const auto sealed_after = std::chrono::steady_clock::now() - opened;
  const auto found = seals();
  ASSERT_EQ(found.size(), 1u) << "no seal within 30 s of seal_every = 1 s";
  EXPECT_GE(sealed_after, std::chrono::seconds(1)) << "sealed before seal_every had passed";
  EXPECT_EQ(found[0]["reason"], "time");
  EXPECT_EQ(found[0]["seq"], 4);  // file_start, the two events, the seal
  EXPECT_EQ(found[0]["head"], found[0]["prev"]);
  const VerifyReport report = VerifyDir(dir.path(), signer, LogEnd::kLive);
  EXPECT_TRUE(report.ok());
  EXPECT_EQ(report.seals, 1u);
  EXPECT_EQ(report.unsealed_tail, 0u) << "the time seal covers every record before it";

  // Nothing written since: another period passes without a seal.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_EQ(seals().size(), 1u);
  ASSERT_TRUE(log->Close().ok());
}

TEST(AuditLogTest, SignerFailureLeavesRecordsUnsealedButWritten) {
  TempDir dir;
  auto signer = SoftwareSigner::Generate();
  LogOptions options = TestOptions(dir.path());
  options.seal_every_records = 2;
  std::vector<std::string> notices;
  options.notice = [&](std::string_view level, std::string_view message) {
    notices.push_back(std::string(level) + ": " + std::string(message));
  };
  auto log = OpenLog(options, signer);
  ASSERT_NE(log, nullptr);
  signer->fail = true;
  for (int i = 0; i < 6; ++i) EXPECT_TRUE(log->Append(SampleEvent(i)).ok());
  EXPECT_EQ(log->Seal().reason(), "audit_seal_failed");
  EXPECT_THAT(notices, ::testing::Contains(HasSubstr("cannot seal the audit log")));
  signer->fail = false;
  ASSERT_TRUE(log->Close().ok());
  const VerifyReport report = VerifyDir(dir.path(), signer);
  EXPECT_TRUE(report.ok());
  EXPECT_EQ(report.seals, 1u);
  EXPECT_EQ(report.unsealed_tail, 0u);
}

// vecseald opens its log before its HSM answers: the key arrives later, and the first seal
// after that vouches for every record written meanwhile.
TEST(AuditLogTest, OpensBeforeTheKeyIsReachableAndSealsOnceItIs) {
  class LateSigner final : public Signer {
   public:
    Result<std::vector<uint8_t>> SignDigest(std::span<const uint8_t, 32> digest) override {
      if (!reachable) return Status(Code::kUnavailable, "hsm_unavailable", "no HSM yet");
      return key->SignDigest(digest);
    }
    Result<std::string> PublicKeyPem() override {
      if (!reachable) return Status(Code::kUnavailable, "hsm_unavailable", "no HSM yet");
      return key->PublicKeyPem();
    }
    std::atomic<bool> reachable{false};
    std::shared_ptr<SoftwareSigner> key = SoftwareSigner::Generate();
  };
  TempDir dir;
  auto signer = std::make_shared<LateSigner>();
  LogOptions options = TestOptions(dir.path());
  options.seal_every_records = 2;
  std::vector<std::string> notices;
  options.notice = [&](std::string_view level, std::string_view message) {
    notices.push_back(std::string(level) + ": " + std::string(message));
  };
  auto log = OpenLog(options, signer);
  ASSERT_NE(log, nullptr);
  for (int i = 0; i < 6; ++i) EXPECT_TRUE(log->Append(SampleEvent(i)).ok()) << i;
  EXPECT_EQ(log->Seal().reason(), "audit_seal_failed");
  EXPECT_EQ(signer->key->signatures, 0);
  const auto first = nlohmann::json::parse(ReadLines(log->current_file())[0]);
  EXPECT_EQ(first["event"], "file_start");
  EXPECT_FALSE(first.contains("key_id")) << "a key id the log could not know";
  // Three count seals and one requested seal failed for one cause: one notice.
  EXPECT_EQ(std::count_if(notices.begin(), notices.end(),
                          [](const std::string& n) { return n.find("cannot seal") != n.npos; }),
            1)
      << ::testing::PrintToString(notices);
  EXPECT_THAT(notices, ::testing::Contains(HasSubstr("not reachable yet")));

  signer->reachable = true;
  ASSERT_TRUE(log->Seal().ok());
  EXPECT_THAT(notices, ::testing::Contains(HasSubstr("audit seals resumed")));
  ASSERT_TRUE(log->Append(SampleEvent(6)).ok());
  ASSERT_TRUE(log->Close().ok());
  const std::vector<std::string> files = LogFiles(dir.path());
  Result<VerifyReport> report = Verify(files, *signer->key->PublicKeyPem());
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_TRUE(report->ok()) << report->error->message;
  EXPECT_EQ(report->seals, 2u);
  EXPECT_EQ(report->unsealed_tail, 0u);
}

// The key fetched late passes the same self-test as one given at Open.
TEST(AuditLogTest, AKeyReachedLateThatDoesNotMatchItsSignerSealsNothing) {
  class LateMismatched final : public Signer {
   public:
    Result<std::vector<uint8_t>> SignDigest(std::span<const uint8_t, 32> d) override {
      return a_->SignDigest(d);
    }
    Result<std::string> PublicKeyPem() override {
      if (!reachable) return Status(Code::kUnavailable, "hsm_unavailable", "no HSM yet");
      return b_->PublicKeyPem();
    }
    std::atomic<bool> reachable{false};
    std::shared_ptr<SoftwareSigner> a_ = SoftwareSigner::Generate();
    std::shared_ptr<SoftwareSigner> b_ = SoftwareSigner::Generate();
  };
  TempDir dir;
  auto signer = std::make_shared<LateMismatched>();
  auto log = OpenLog(TestOptions(dir.path()), signer);
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(log->Append(SampleEvent(0)).ok());
  signer->reachable = true;
  const Status sealed = log->Seal();
  EXPECT_EQ(sealed.reason(), "audit_seal_failed");
  EXPECT_THAT(sealed.message(), HasSubstr("do not verify under its public key"));
  EXPECT_FALSE(log->last_seal().has_value());
}

TEST(AuditLogTest, RotatesBySizeAndLinksFiles) {
  TempDir dir;
  auto signer = SoftwareSigner::Generate();
  LogOptions options = TestOptions(dir.path());
  options.rotate_bytes = 4096;
  options.seal_every_records = 1000;
  auto log = OpenLog(options, signer);
  ASSERT_NE(log, nullptr);
  for (int i = 0; i < 60; ++i) ASSERT_TRUE(log->Append(SampleEvent(i)).ok());
  ASSERT_TRUE(log->Close().ok());
  const auto files = LogFiles(dir.path());
  ASSERT_GE(files.size(), 3u);
  for (size_t f = 1; f < files.size(); ++f) {
    const auto previous = ReadLines(files[f - 1]);
    const auto first = nlohmann::json::parse(ReadLines(files[f])[0]);
    EXPECT_EQ(first["event"], "file_start");
    EXPECT_EQ(first["reason"], "rotation");
    EXPECT_EQ(first["prev_file"], std::filesystem::path(files[f - 1]).filename().string());
    EXPECT_EQ(nlohmann::json::parse(previous.back())["event"], "seal")
        << "each rotated file ends sealed";
    EXPECT_EQ(first["seq"], nlohmann::json::parse(previous.back())["seq"].get<uint64_t>() + 1);
  }
  const VerifyReport report = VerifyDir(dir.path(), signer);
  EXPECT_TRUE(report.ok()) << report.error->message;
  EXPECT_EQ(report.files, files.size());
  EXPECT_EQ(report.seals, files.size());
}

TEST(AuditLogTest, ReopenContinuesTheChainInANewFile) {
  TempDir dir;
  auto signer = SoftwareSigner::Generate();
  for (int run = 0; run < 3; ++run) {
    auto log = OpenLog(TestOptions(dir.path()), signer);
    ASSERT_NE(log, nullptr);
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(log->Append(SampleEvent(i)).ok());
    ASSERT_TRUE(log->Close().ok());
  }
  const auto files = LogFiles(dir.path());
  ASSERT_EQ(files.size(), 3u);
  const auto third = nlohmann::json::parse(ReadLines(files[2])[0]);
  EXPECT_EQ(third["reason"], "open");
  EXPECT_EQ(third["prev_file"], std::filesystem::path(files[1]).filename().string());
  const VerifyReport report = VerifyDir(dir.path(), signer);
  EXPECT_TRUE(report.ok());
  EXPECT_EQ(report.last_seq, 18u);  // 3 x (file_start + 3 events + stop + seal)
  EXPECT_TRUE(report.warnings.empty()) << "each run stopped cleanly: no unclean_stop";
}

// A writer killed while writing a new file's first record leaves a file with no complete
// record; the next start writes its file with the same first seq. Whichever way the two random
// ids sort, that start records the kill once, the log verifies as stopped, and a later clean
// start finds nothing unclean.
TEST(AuditLogTest, AFileLeftWithoutARecordIsOrderedBeforeItsSuccessor) {
  for (const std::string torn_id : {"00000000", "ffffffff"}) {
    SCOPED_TRACE("torn file id " + torn_id);
    TempDir dir;
    auto signer = SoftwareSigner::Generate();
    {
      auto log = OpenLog(TestOptions(dir.path()), signer);
      ASSERT_NE(log, nullptr);
      ASSERT_TRUE(log->Append(SampleEvent(0)).ok());
      ASSERT_TRUE(log->Close().ok());  // file_start, the event, stop, seal: seq 1..4
    }
    const std::string torn = dir.path() + "/audit-00000000000000000005-" + torn_id + ".jsonl";
    testing::WriteFileText(torn, R"({"event":"file_start","file_id":"00)");
    for (int run = 0; run < 2; ++run) {
      auto log = OpenLog(TestOptions(dir.path()), signer);
      ASSERT_NE(log, nullptr);
      ASSERT_TRUE(log->Append(SampleEvent(1)).ok());
      const std::string file = log->current_file();
      ASSERT_TRUE(log->Close().ok());
      const auto lines = ReadLines(file);
      ASSERT_GE(lines.size(), 2u);
      const bool unclean = nlohmann::json::parse(lines[1])["event"] == "unclean_stop";
      EXPECT_EQ(unclean, run == 0) << "run " << run << ": only the start after the kill says so";
    }
    const auto files = LogFiles(dir.path());
    ASSERT_EQ(files.size(), 4u);
    EXPECT_EQ(files[1], torn) << "ordered before the file that took its first seq";
    const VerifyReport report = VerifyDir(dir.path(), signer);
    ASSERT_TRUE(report.ok()) << report.error->code << ": " << report.error->message;
    std::vector<std::string> codes;
    for (const Finding& warning : report.warnings) codes.push_back(warning.code);
    EXPECT_THAT(codes, ::testing::UnorderedElementsAre("torn_line", "empty_file", "unclean_stop"));
  }
}

TEST(AuditLogTest, RejectsASignerThatDoesNotMatchItsPublicKey) {
  class Mismatched final : public Signer {
   public:
    Result<std::vector<uint8_t>> SignDigest(std::span<const uint8_t, 32> d) override {
      return a_->SignDigest(d);
    }
    Result<std::string> PublicKeyPem() override { return b_->PublicKeyPem(); }
    std::shared_ptr<SoftwareSigner> a_ = SoftwareSigner::Generate();
    std::shared_ptr<SoftwareSigner> b_ = SoftwareSigner::Generate();
  };
  TempDir dir;
  Result<std::unique_ptr<Log>> log = Log::Open(TestOptions(dir.path()), std::make_shared<Mismatched>());
  ASSERT_FALSE(log.ok());
  EXPECT_EQ(log.status().reason(), "audit_signer_mismatch");
}

TEST(AuditLogTest, RejectsBadOptionsNamingTheSetting) {
  TempDir dir;
  struct Case {
    std::function<void(LogOptions*)> mutate;
    std::string message;
  };
  const std::vector<Case> cases = {
      {[](LogOptions* o) { o->dir.clear(); }, "audit.dir: must be set"},
      {[](LogOptions* o) { o->seal_every_records = 0; }, "audit.seal_every_records: must be at least 1"},
      {[](LogOptions* o) { o->seal_every = std::chrono::seconds(0); },
       "audit.seal_every: must be at least 1 second"},
      {[](LogOptions* o) { o->rotate_bytes = 100; }, "audit.rotate_bytes: must be at least 4096"},
      {[](LogOptions* o) { o->sync_interval = std::chrono::milliseconds(0); },
       "audit.sync_interval: must be positive; use sync \"every-record\" for no interval"},
      {[](LogOptions* o) { o->refuse_free_bytes = 10, o->warn_free_bytes = 5; },
       "audit.refuse_free_bytes: must not exceed warn_free_bytes"},
  };
  for (const Case& c : cases) {
    LogOptions options = TestOptions(dir.path());
    c.mutate(&options);
    Result<std::unique_ptr<Log>> log = Log::Open(options, SoftwareSigner::Generate());
    ASSERT_FALSE(log.ok()) << c.message;
    EXPECT_EQ(log.status().reason(), "audit_bad_option");
    EXPECT_EQ(log.status().message(), c.message);
  }
}

TEST(AuditLogTest, RefusesToContinueAChainWhoseLastRecordIsUnreadable) {
  TempDir dir;
  auto signer = SoftwareSigner::Generate();
  {
    auto log = OpenLog(TestOptions(dir.path()), signer);
    ASSERT_TRUE(log->Append(SampleEvent(0)).ok());
    ASSERT_TRUE(log->Close().ok());
  }
  const std::string file = LogFiles(dir.path())[0];
  auto lines = ReadLines(file);
  lines.back() = "garbage";
  testing::WriteLines(file, lines);
  Result<std::unique_ptr<Log>> log = Log::Open(TestOptions(dir.path()), signer);
  ASSERT_FALSE(log.ok());
  EXPECT_EQ(log.status().reason(), "audit_log_corrupt");
}

class AuditConcurrencyTest : public ::testing::TestWithParam<LogOptions::Sync> {};

INSTANTIATE_TEST_SUITE_P(Sync, AuditConcurrencyTest,
                         ::testing::Values(LogOptions::Sync::kInterval,
                                           LogOptions::Sync::kEveryRecord));

// Under every-record, concurrent appends share fdatasync calls (group commit); under either
// policy seq and chain stay intact.
TEST_P(AuditConcurrencyTest, ConcurrentAppendsKeepSeqAndChainIntact) {
  TempDir dir;
  auto signer = SoftwareSigner::Generate();
  LogOptions options = TestOptions(dir.path());
  options.sync = GetParam();
  options.sync_interval = std::chrono::milliseconds(1);
  options.seal_every_records = 50;
  options.rotate_bytes = 64 << 10;
  const int kPerThread = GetParam() == LogOptions::Sync::kInterval ? 500 : 60;
  auto log = OpenLog(options, signer);
  ASSERT_NE(log, nullptr);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&log, t, kPerThread] {
      for (int i = 0; i < kPerThread; ++i) {
        EXPECT_TRUE(log->Append(SampleEvent(t * 1000 + i)).ok());
      }
    });
  }
  for (auto& thread : threads) thread.join();
  ASSERT_TRUE(log->Close().ok());
  const VerifyReport report = VerifyDir(dir.path(), signer);
  EXPECT_TRUE(report.ok()) << report.error->message;
  // Every record is a seal, a file_start, one of the events, or the stop record Close wrote.
  EXPECT_EQ(report.records - report.seals - report.files - 1, 4u * kPerThread);
}

TEST(AuditLogTest, SetsAppendOnlyWhenPrivilegedAndSaysSo) {
  TempDir dir;
  LogOptions options = TestOptions(dir.path());
  options.try_append_only = true;
  auto log = OpenLog(options, SoftwareSigner::Generate());
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(log->Close().ok());
  const std::string file = LogFiles(dir.path())[0];
  const auto start = nlohmann::json::parse(ReadLines(file)[0]);
  int flags = 0;
  const int fd = ::open(file.c_str(), O_RDONLY);
  const bool can_query = fd >= 0 && ::ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0;
  const bool is_append_only = can_query && (flags & FS_APPEND_FL) != 0;
  // The record says exactly what the file system says.
  EXPECT_EQ(start["append_only"].get<bool>(), is_append_only);
  if (is_append_only) {
    flags &= ~FS_APPEND_FL;  // so that the temp dir can be removed
    ::ioctl(fd, FS_IOC_SETFLAGS, &flags);
  }
  if (fd >= 0) ::close(fd);
  if (!is_append_only) GTEST_SKIP() << "FS_APPEND_FL did not take (needs CAP_LINUX_IMMUTABLE)";
}

}  // namespace
}  // namespace vecseal::audit
