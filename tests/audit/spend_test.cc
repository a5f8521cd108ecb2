// ScanSpends, the reader budgets are rebuilt from: it finds exactly the encrypt and decrypt
// records a real log holds, with their rule, key, caller and vectors; it notices missing files
// and refuses lines it does not understand; and `vecseal audit show --sum` adds up the same.
#include "vecseal/audit/spend.h"

#include <unistd.h>

#include <filesystem>
#include <map>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "audit_command.h"
#include "support/audit_test_util.h"
#include "support/software_signer.h"
#include "vecseal/audit/log.h"
#include "vecseal/audit/verify.h"

namespace vecseal::audit {
namespace {

using testing::SoftwareSigner;
using testing::TempDir;

// 30 requests in files of 4 KiB: every third is a decrypt by "bob" in no unit, one a denial.
std::vector<std::string> WriteLog(const std::string& dir) {
  auto signer = SoftwareSigner::Generate();
  LogOptions options = testing::TestOptions(dir);
  std::filesystem::create_directory(dir);
  options.rotate_bytes = 4096;
  auto log = Log::Open(options, signer);
  EXPECT_TRUE(log.ok()) << log.status().ToString();
  for (int i = 0; i < 30; ++i) {
    const bool bob = i % 3 == 0;
    Event event;
    event.event = bob ? "decrypt" : "encrypt";
    event.request_id = std::to_string(i);
    event.caller = bob ? Caller{7, 1001, "bob", 1001, "/bin/b", "", "", "", "not_needed"}
                       : Caller{8, 1000, "alice", 1000, "/bin/a", "", "a\"1.service", "", ""};
    event.key = bob ? "search" : "demo";
    event.key_version = 2;
    event.operation = event.event;
    event.vectors = static_cast<uint64_t>(i + 1);
    event.decision = "granted";
    event.rule_id = bob ? "readers" : "writers";
    if (i == 4) {
      event.event = "deny";
      event.error_code = "budget_exhausted";
    }
    EXPECT_TRUE((*log)->Append(event).ok());
  }
  EXPECT_TRUE((*log)->Close().ok());
  return testing::LogFiles(dir);
}

struct Totals {
  std::map<std::string, uint64_t> vectors;  // "rule key uid unit op"
  uint64_t spends = 0;
};

Result<Totals> Scan(const std::vector<std::string>& files, int64_t since = 0) {
  Totals totals;
  auto scan = ScanSpends(files, since, [&](const Spend& spend) {
    totals.vectors[std::string(spend.rule_id) + " " + std::string(spend.key) + " " +
                   std::to_string(spend.uid) + " " + std::string(spend.unit) + " " +
                   std::string(spend.operation)] += spend.vectors;
    ++totals.spends;
  });
  if (!scan.ok()) return std::move(scan).TakeStatus();
  EXPECT_EQ(scan->spends, totals.spends);
  EXPECT_FALSE(scan->complete_since_micros);
  return totals;
}

TEST(ScanSpendsTest, FindsEveryEncryptAndDecryptWithItsRuleKeyCallerAndVectors) {
  TempDir dir;
  const auto files = WriteLog(dir.path() + "/audit");
  ASSERT_GT(files.size(), 3u) << "the log spans several files";
  auto totals = Scan(files);
  ASSERT_TRUE(totals.ok()) << totals.status().ToString();
  // alice: i = 1..29 not divisible by 3, without the denial at 4: vectors i + 1.
  uint64_t alice = 0, bob = 0;
  for (int i = 0; i < 30; ++i) {
    if (i == 4) continue;
    (i % 3 == 0 ? bob : alice) += static_cast<uint64_t>(i + 1);
  }
  EXPECT_EQ(totals->spends, 29u);
  EXPECT_EQ(totals->vectors["writers demo 1000 a\"1.service encrypt"], alice);
  EXPECT_EQ(totals->vectors["readers search 1001  decrypt"], bob);
  EXPECT_EQ(totals->vectors.size(), 2u);

  std::ostringstream out, err;
  ASSERT_EQ(RunAuditCommand(std::vector<std::string>{"show", "--sum", dir.path() + "/audit"}, out,
                            err),
            0)
      << err.str();
  EXPECT_EQ(out.str(),
            "rule=readers key=search caller=bob(1001) unit=- op=decrypt vectors=" +
                std::to_string(bob) + " requests=10\n"
                "rule=writers key=demo caller=alice(1000) unit=a\"1.service op=encrypt vectors=" +
                std::to_string(alice) + " requests=19\n");
}

TEST(ScanSpendsTest, OnlyRecordsSinceTheGivenTimeAreCounted) {
  TempDir dir;
  const auto files = WriteLog(dir.path() + "/audit");
  const int64_t future = std::chrono::duration_cast<std::chrono::microseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count() +
                         3'600'000'000;
  auto totals = Scan(files, future);
  ASSERT_TRUE(totals.ok());
  EXPECT_EQ(totals->spends, 0u);
}

TEST(ScanSpendsTest, AMissingOldestOrMiddleFileIsReported) {
  TempDir dir;
  auto files = WriteLog(dir.path() + "/audit");
  for (size_t gone : {size_t{0}, files.size() / 2}) {
    std::vector<std::string> left = files;
    left.erase(left.begin() + static_cast<std::ptrdiff_t>(gone));
    auto scan = ScanSpends(left, 0, [](const Spend&) {});
    ASSERT_TRUE(scan.ok());
    ASSERT_TRUE(scan->complete_since_micros) << "file " << gone << " removed";
    const auto first = testing::ReadLines(left[gone]).front();
    EXPECT_EQ(*scan->complete_since_micros,
              *ParseRecordTime(nlohmann::json::parse(first)["time"].get<std::string>()));
  }
}

TEST(ScanSpendsTest, ALineThatIsNoRecordStopsTheCountButATornEndDoesNot) {
  TempDir dir;
  const auto files = WriteLog(dir.path() + "/audit");
  testing::WriteFileText(files.back(), testing::ReadFileText(files.back()) + "{\"seq\":99,\"ti");
  ASSERT_TRUE(Scan(files).ok()) << "a torn last line was never acknowledged";
  auto lines = testing::ReadLines(files[1]);
  lines.insert(lines.begin() + 1, "not a record");
  testing::WriteLines(files[1], lines);
  auto scan = Scan(files);
  ASSERT_FALSE(scan.ok());
  EXPECT_EQ(scan.status().reason(), "audit_unreadable");
  EXPECT_EQ(scan.status().message(),
            files[1] + ":2 is not an audit record; the spends of budgets cannot be counted");
}

TEST(ScanSpendsTest, RecordTimesParseExactly) {
  EXPECT_EQ(ParseRecordTime("1970-01-01T00:00:01.000002Z"), 1'000'002);
  EXPECT_EQ(ParseRecordTime("2026-11-25T03:04:31.123456Z"), 1'795'575'871'123'456);
  EXPECT_FALSE(ParseRecordTime("2026-13-25T03:04:31.123456Z"));
  EXPECT_FALSE(ParseRecordTime("2026-11-25T03:04:31Z"));
}

}  // namespace
}  // namespace vecseal::audit
