// kill -9 under load: a real child process writing records is SIGKILLed; the log it leaves
// verifies up to its last complete record, and a restarted writer continues the chain.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include <nlohmann/json.hpp>

#include "support/audit_test_util.h"
#include "support/software_signer.h"
#include "vecseal/audit/log.h"
#include "vecseal/audit/verify.h"

extern char** environ;

namespace vecseal::audit {
namespace {

using testing::LogFiles;
using testing::ReadLines;
using testing::SoftwareSigner;
using testing::TempDir;

pid_t SpawnWriter(const std::string& dir, const std::string& key_file) {
  std::vector<std::string> args = {AUDIT_CRASH_WRITER, dir, key_file};
  std::vector<char*> argv;
  for (auto& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  EXPECT_EQ(posix_spawn(&pid, AUDIT_CRASH_WRITER, nullptr, nullptr, argv.data(), environ), 0);
  return pid;
}

// Waits for a condition on the files, not for a time: the deadline only stops a broken writer
// from hanging the suite.
bool WaitForFiles(const std::string& dir, size_t count, pid_t child) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    if (LogFiles(dir).size() >= count) return true;
    int status = 0;
    if (waitpid(child, &status, WNOHANG) == child) return false;  // it died on its own
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

VerifyReport VerifyDir(const std::string& dir, const std::string& pem,
                       LogEnd end = LogEnd::kStopped) {
  const auto files = LogFiles(dir);
  Result<VerifyReport> report = Verify(files, pem, {}, end);
  EXPECT_TRUE(report.ok());
  return std::move(report).value();
}

TEST(AuditCrashTest, SigkillUnderLoadLeavesAVerifiableLog) {
  TempDir dir;
  const std::string log_dir = dir.path() + "/log";
  std::filesystem::create_directory(log_dir);
  auto signer = SoftwareSigner::Generate();
  const std::string key_file = dir.path() + "/key.pem";
  testing::WriteFileText(key_file, signer->PrivateKeyPem());
  const std::string pem = *signer->PublicKeyPem();

  uint64_t last_seq = 0;
  for (int round = 0; round < 3; ++round) {
    const size_t files_before = LogFiles(log_dir).size();
    const pid_t child = SpawnWriter(log_dir, key_file);
    ASSERT_GT(child, 0);
    // Kill it mid-stream, once it has rotated at least twice in this round.
    const bool busy = WaitForFiles(log_dir, files_before + 3, child);
    ASSERT_EQ(kill(child, SIGKILL), busy ? 0 : -1);
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), busy ? child : -1);
    ASSERT_TRUE(busy) << "the writer stopped before it was killed";
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

    // A killed writer leaves an end that no seal vouches for: only a live log may end so.
    const VerifyReport stopped = VerifyDir(log_dir, pem);
    ASSERT_FALSE(stopped.ok()) << "round " << round << ": a killed log verified as stopped";
    EXPECT_TRUE(IsEndOfLogFinding(stopped.error->code)) << stopped.error->code;
    const VerifyReport report = VerifyDir(log_dir, pem, LogEnd::kLive);
    ASSERT_TRUE(report.ok()) << "round " << round << ": " << report.error->code << " at seq "
                             << report.error->seq << ": " << report.error->message;
    for (const Finding& warning : report.warnings) {
      // A kill between creating a file and writing its first record leaves it empty; each
      // writer after the first finds the previous one's unclean stop.
      EXPECT_THAT(warning.code, ::testing::AnyOf("unsealed_tail", "torn_line", "empty_file",
                                                 "missing_stop", "missing_last_file",
                                                 "unclean_stop"))
          << warning.message;
    }
    EXPECT_GT(report.last_seq, last_seq) << "every round adds records";
    last_seq = report.last_seq;
  }

  // A restarted daemon continues the chain from the last complete record.
  std::string crashed_file;
  for (const auto& file : LogFiles(log_dir)) {
    if (!ReadLines(file).empty()) crashed_file = file;  // the last one holding a record
  }
  std::string restart_file;
  {
    LogOptions options = testing::TestOptions(log_dir);
    auto log = Log::Open(options, signer);
    ASSERT_TRUE(log.ok());
    // Its file_start took last_seq + 1, its unclean_stop record last_seq + 2.
    EXPECT_EQ((*log)->next_seq(), last_seq + 3);
    restart_file = (*log)->current_file();
    for (int i = 0; i < 5; ++i) ASSERT_TRUE((*log)->Append(testing::SampleEvent(i)).ok());
    ASSERT_TRUE((*log)->Close().ok());
  }
  const auto new_lines = ReadLines(restart_file);
  const auto restart = nlohmann::json::parse(new_lines[0]);
  uint64_t seals = 0;
  for (const auto& line : new_lines) seals += nlohmann::json::parse(line)["event"] == "seal";
  EXPECT_EQ(restart["prev_file"], std::filesystem::path(crashed_file).filename().string());
  const auto unclean = nlohmann::json::parse(new_lines[1]);
  EXPECT_EQ(unclean["event"], "unclean_stop");
  EXPECT_EQ(unclean["last_seq"], last_seq);
  uint64_t last_sealed_seq = 0;
  for (const auto& file : LogFiles(log_dir)) {
    if (file == restart_file) continue;
    for (const auto& line : ReadLines(file)) {
      const auto record = nlohmann::json::parse(line);
      if (record["event"] == "seal") last_sealed_seq = record["seq"].get<uint64_t>();
    }
  }
  EXPECT_GT(last_sealed_seq, 0u);
  EXPECT_EQ(unclean["last_sealed_seq"], last_sealed_seq);
  const VerifyReport report = VerifyDir(log_dir, pem);
  ASSERT_TRUE(report.ok()) << report.error->message;
  EXPECT_EQ(report.unsealed_tail, 0u) << "the final seal covers the crashed files too";
  // file_start, unclean_stop, 5 events, the stop record Close wrote, and the seals.
  EXPECT_EQ(report.last_seq, last_seq + 2 + 5 + 1 + seals);
  // Every kill left its trace: the writers of rounds 1 and 2, and this restart.
  size_t unclean_stops = 0;
  for (const Finding& warning : report.warnings) {
    if (warning.code != "unclean_stop") continue;
    ++unclean_stops;
    EXPECT_THAT(warning.message, ::testing::HasSubstr("did not stop cleanly"));
  }
  EXPECT_EQ(unclean_stops, 3u);
}

}  // namespace
}  // namespace vecseal::audit
