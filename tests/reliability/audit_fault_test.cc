// The audit log failing under the real daemon, mid-load: a full disk (/dev/full, for real), EIO
// on write and a failed fdatasync. Fail closed means no answer with vectors lacks its record:
// every 200's request id is looked up among the log's encrypt records.
//
// EIO and fdatasync failures come from an LD_PRELOAD shim (support/io_fault_preload.cc) inside
// the daemon process, so the daemon's own audit code meets them on its real files; device-mapper's
// error target would be the kernel-level alternative but needs a dm-capable kernel and root.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "support/daemon_process.h"
#include "support/dev_daemon.h"
#include "support/encrypt_load.h"

namespace vecseal::reliability {
namespace {

using daemon::testing::HttpClient;

uint64_t SumOfRefused(const std::vector<nlohmann::json>& records) {
  uint64_t refused = 0;
  for (const auto& record : records) {
    if (record.value("event", "") == "resumed") refused += record.value("refused", uint64_t{0});
  }
  return refused;
}

size_t CountEvents(const std::vector<nlohmann::json>& records, const std::string& event) {
  size_t count = 0;
  for (const auto& record : records) count += record.value("event", "") == event ? 1 : 0;
  return count;
}

std::string AsanOptions() {
  const char* options = std::getenv("ASAN_OPTIONS");
  return options != nullptr && *options != '\0' ? std::string(options) + ":" : "";
}

void ExpectOnlyOkOrAuditUnavailable(const std::vector<Outcome>& outcomes) {
  for (const Outcome& o : outcomes) {
    const bool expected = o.status == 200 || (o.status == 503 && o.code == "audit_unavailable");
    EXPECT_TRUE(expected) << "request " << o.request_id << ": " << o.status << " " << o.code;
  }
}

TEST(AuditFaultTest, DiskFullDevFullRefusesEveryRequest) {
  ScratchDir scratch;
  const std::string overlay = scratch.path() + "/overlay.json";
  ReplaceFile(overlay, R"({"audit": {"single_file": "/dev/full", "try_append_only": false}})");
  DaemonProcess daemon({.state_dir = scratch.path() + "/state", .overlay_path = overlay, .env = {}});
  std::string error;
  ASSERT_TRUE(daemon.Start(&error)) << error;

  EncryptLoad load(daemon.socket_path(), "demo", 4);
  ASSERT_TRUE(load.WaitForMore(503, 200));
  load.Stop();
  const std::vector<Outcome> outcomes = load.Outcomes();
  EXPECT_EQ(CountStatus(outcomes, 503, "audit_unavailable"), outcomes.size())
      << "a request was answered although its record could not be written";
  for (const Outcome& o : outcomes) {
    // The error and nothing else: not a vector, not a token.
    const auto body = nlohmann::json::parse(o.body, nullptr, false);
    EXPECT_TRUE(body.is_object() && body.size() == 1 && body.contains("error")) << o.body;
  }

  HttpClient probe(daemon.socket_path());
  const auto health = probe.Get("/v1/health");
  EXPECT_EQ(health.status, 503u);
  EXPECT_EQ(health.Json().value("audit", ""), "unavailable") << health.body;
  EXPECT_TRUE(daemon.Running());
  EXPECT_NE(daemon.Log().find("event=audit_failed"), std::string::npos);
  // The cause names the daemon's files: its log has it, callers do not.
  const auto refused = probe.PostJson("/v1/keys/demo/encrypt", {{"vectors", {{0.6, 0.8}}}});
  EXPECT_EQ(refused.status, 503u);
  EXPECT_EQ(refused.ErrorCode(), "audit_unavailable");
  EXPECT_EQ(refused.body.find("/dev/full"), std::string::npos) << refused.body;
  EXPECT_NE(daemon.Log().find("/dev/full: No space left on device"), std::string::npos)
      << daemon.Log();
}

struct IoFault {
  const char* name;
  const char* rule;  // for the shim's control file
  const char* sync;  // audit.sync
};

void PrintTo(const IoFault& fault, std::ostream* out) { *out << fault.name; }

class AuditIoFaultTest : public ::testing::TestWithParam<IoFault> {};

TEST_P(AuditIoFaultTest, MidLoadFailsClosedAndResumes) {
  ScratchDir scratch;
  const std::string root = std::filesystem::canonical(scratch.path()).string();
  const std::string control = root + "/iofaults";
  const std::string overlay = root + "/overlay.json";
  ReplaceFile(overlay, std::string(R"({"audit": {"try_append_only": false, "sync": ")") +
                           GetParam().sync + "\"}}");
  DaemonProcess daemon({.state_dir = root + "/state",
                        .overlay_path = overlay,
                        .env = {{"LD_PRELOAD", VECSEAL_IO_FAULT_PRELOAD},
                                // An ASan-built daemon otherwise refuses a preload ahead of
                                // its runtime; harmless without ASan.
                                {"ASAN_OPTIONS", AsanOptions() + "verify_asan_link_order=0"},
                                {"VECSEAL_IOFAULT_DIR", root + "/state/audit/"},
                                {"VECSEAL_IOFAULT_CONTROL", control}}});
  std::string error;
  ASSERT_TRUE(daemon.Start(&error)) << error;

  EncryptLoad load(daemon.socket_path(), "demo", 4);
  ASSERT_TRUE(load.WaitForMore(200, 200));
  ReplaceFile(control, std::string(GetParam().rule) + "\n");
  ASSERT_TRUE(load.WaitFor([](const std::vector<Outcome>& o) {
    return CountStatus(o, 503, "audit_unavailable") >= 20;
  })) << "no 503 audit_unavailable while the audit file failed";
  ReplaceFile(control, "");
  ASSERT_TRUE(load.WaitForMore(200, 200)) << "the log did not resume";
  load.Stop();
  ASSERT_EQ(daemon.KillAndWait(SIGTERM), 0) << "vecseald did not stop cleanly";

  const std::vector<Outcome> outcomes = load.Outcomes();
  ExpectOnlyOkOrAuditUnavailable(outcomes);
  const auto records = AuditRecords(daemon.audit_dir());
  const auto missing = ServedWithoutRecord(outcomes, records);
  EXPECT_TRUE(missing.empty()) << missing.size() << " answers with vectors have no audit record, "
                               << "first request " << missing.front();
  EXPECT_GE(CountEvents(records, "resumed"), 1u);
  EXPECT_EQ(SumOfRefused(records), CountStatus(outcomes, 503, "audit_unavailable"))
      << "the resumed records' refused counts differ from the 503s the callers saw";

  const CommandResult verified = VerifyAuditLog(daemon);
  EXPECT_EQ(verified.exit_code, 0) << verified.output;
  std::cout << "[ figures  ] " << GetParam().name << ": " << CountStatus(outcomes, 200)
            << " answered 200 (each with its record), "
            << CountStatus(outcomes, 503, "audit_unavailable")
            << " refused 503 audit_unavailable, log verifies\n";
}

INSTANTIATE_TEST_SUITE_P(Faults, AuditIoFaultTest,
                         ::testing::Values(IoFault{"WriteEio", "write EIO", "interval"},
                                           IoFault{"WriteEnospc", "write ENOSPC", "interval"},
                                           IoFault{"FdatasyncEio", "fdatasync EIO",
                                                   "every_record"}),
                         [](const auto& test) { return std::string(test.param.name); });

}  // namespace
}  // namespace vecseal::reliability
