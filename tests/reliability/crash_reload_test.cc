// kill -9 under load (the audit log holds a record for every answer given before the kill, fails
// a check as a stopped log but verifies as a live one with its unsealed tail, and after a restart
// verifies with an unclean_stop warning that names the crash), and SIGHUP with a broken policy under load (no request
// fails because of it; each failed reload is audited, and a good file reloads afterwards).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "support/daemon_process.h"
#include "support/dev_daemon.h"
#include "support/encrypt_load.h"

namespace vecseal::reliability {
namespace {

using daemon::testing::HttpClient;

class DaemonUnderLoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(scratch_.path().empty());
    overlay_ = scratch_.path() + "/overlay.json";
    ReplaceFile(overlay_, R"({"audit": {"try_append_only": false}})");
    daemon_ = std::make_unique<DaemonProcess>(DaemonOptions{
        .state_dir = scratch_.path() + "/state", .overlay_path = overlay_, .env = {}});
    std::string error;
    ASSERT_TRUE(daemon_->Start(&error)) << error;
  }

  ScratchDir scratch_;
  std::string overlay_;
  std::unique_ptr<DaemonProcess> daemon_;
};

nlohmann::json VerifiedReport(const DaemonProcess& daemon,
                              const std::vector<std::string>& options = {}) {
  const CommandResult verified = VerifyAuditLog(daemon, options);
  EXPECT_EQ(verified.exit_code, 0) << verified.output;
  return nlohmann::json::parse(verified.output, nullptr, false);
}

TEST_F(DaemonUnderLoadTest, KillNineLeavesAVerifiableLogAndRestarts) {
  std::vector<Outcome> before_kill;
  {
    EncryptLoad load(daemon_->socket_path(), "demo", 4);
    ASSERT_TRUE(load.WaitForMore(200, 500));
    const int status = daemon_->KillAndWait(SIGKILL);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    before_kill = load.Outcomes();
  }  // the load stops on the dead socket; answers after the kill are transport failures

  const auto records = AuditRecords(daemon_->audit_dir());
  const auto missing = ServedWithoutRecord(before_kill, records);
  EXPECT_TRUE(missing.empty()) << missing.size() << " answers lost their record in the crash";
  // No seal vouches for the end of a killed daemon's log: as a stopped log, it fails.
  const CommandResult as_stopped = VerifyAuditLog(*daemon_);
  EXPECT_EQ(as_stopped.exit_code, 1) << as_stopped.output;
  const auto stopped_report = nlohmann::json::parse(as_stopped.output, nullptr, false);
  ASSERT_TRUE(stopped_report.is_object()) << as_stopped.output;
  EXPECT_THAT(stopped_report["error"].value("code", ""),
              ::testing::AnyOf("no_seal", "unsealed_end", "torn_end"))
      << as_stopped.output;
  const nlohmann::json crashed = VerifiedReport(*daemon_, {"--allow-unsealed-tail"});
  ASSERT_TRUE(crashed.is_object());
  EXPECT_TRUE(crashed.value("ok", false));
  EXPECT_GT(crashed.value("unsealed_tail", 0), 0) << crashed.dump()
      << "\na log killed mid-load should end in records no seal covers yet";
  // What an operator reads: the warning names the unsealed tail and its length.
  const CommandResult text =
      RunCommand({VECSEAL_CLI_PATH, "audit", "verify", "--allow-unsealed-tail", "--pubkey",
                  daemon_->audit_pubkey(), daemon_->audit_dir()});
  EXPECT_EQ(text.exit_code, 0) << text.output;
  EXPECT_NE(text.output.find("unsealed tail: " + std::to_string(crashed.value("unsealed_tail", 0)) +
                             " records"),
            std::string::npos)
      << text.output;

  std::string error;
  ASSERT_TRUE(daemon_->Start(&error)) << error;
  HttpClient client(daemon_->socket_path());
  EXPECT_EQ(client.Get("/v1/health").status, 200u);
  std::vector<Outcome> after_restart;
  {
    EncryptLoad load(daemon_->socket_path(), "demo", 2);
    ASSERT_TRUE(load.WaitForMore(200, 50));
    load.Stop();
    after_restart = load.Outcomes();
  }
  EXPECT_EQ(CountStatus(after_restart, 200), after_restart.size());
  ASSERT_EQ(daemon_->KillAndWait(SIGTERM), 0);
  const nlohmann::json stopped = VerifiedReport(*daemon_);
  EXPECT_TRUE(stopped.value("ok", false));
  EXPECT_EQ(stopped.value("unsealed_tail", -1), 0) << stopped.dump()
      << "\nthe restarted daemon's final seal covers the whole chain, crash tail included";
  EXPECT_GT(stopped.value("records", 0), crashed.value("records", 0));
  // The crash left its trace: the restart's unclean_stop record, which verify reports.
  const std::string crashed_end = "its last record was seq " +
                                  std::to_string(crashed.value("last_seq", 0)) +
                                  ", its last seal seq " +
                                  std::to_string(crashed.value("last_sealed_seq", 0));
  size_t unclean_stops = 0;
  for (const auto& warning : stopped["warnings"]) {
    if (warning.value("code", "") != "unclean_stop") continue;
    ++unclean_stops;
    EXPECT_NE(warning.value("message", "").find(crashed_end), std::string::npos) << warning;
    EXPECT_EQ(warning.value("seq", 0), crashed.value("last_seq", 0) + 2)
        << "the second record of the restarted daemon's first file";
  }
  EXPECT_EQ(unclean_stops, 1u) << stopped.dump();
  const CommandResult shown =
      RunCommand({VECSEAL_CLI_PATH, "audit", "show", "--event", "unclean_stop",
                  daemon_->audit_dir()});
  EXPECT_EQ(shown.exit_code, 0) << shown.output;
  EXPECT_NE(shown.output.find(" unclean_stop last_seq=" +
                              std::to_string(crashed.value("last_seq", 0)) + " last_sealed_seq=" +
                              std::to_string(crashed.value("last_sealed_seq", 0)) + "\n"),
            std::string::npos)
      << shown.output;
  std::cout << "[ figures  ] " << CountStatus(before_kill, 200) << " answers before kill -9, "
            << crashed.value("unsealed_tail", 0) << " records in the unsealed tail\n";
}

struct BrokenReload {
  const char* name;
  bool config;       // the config overlay is broken, else the policy
  const char* text;  // empty: the good file, made untrustworthy by `mode` alone
  mode_t mode;
  const char* reason;  // of the reload record
};

void PrintTo(const BrokenReload& broken, std::ostream* out) { *out << broken.name; }

class SighupTest : public DaemonUnderLoadTest,
                   public ::testing::WithParamInterface<BrokenReload> {};

size_t ReloadRecords(const DaemonProcess& daemon, std::vector<nlohmann::json>* reloads) {
  reloads->clear();
  for (const auto& record : AuditRecords(daemon.audit_dir())) {
    if (record.value("event", "") == "reload") reloads->push_back(record);
  }
  return reloads->size();
}

TEST_P(SighupTest, BrokenFileUnderLoadFailsNoRequest) {
  const std::string path = GetParam().config ? overlay_ : daemon_->policy_path();
  const std::string good = ReadFileText(path);
  EncryptLoad load(daemon_->socket_path(), "demo", 4);
  ASSERT_TRUE(load.WaitForMore(200, 100));
  constexpr size_t kReloads = 5;
  std::vector<nlohmann::json> reloads;
  for (size_t i = 1; i <= kReloads; ++i) {
    ReplaceFile(path, *GetParam().text != '\0' ? GetParam().text : good);
    ASSERT_EQ(chmod(path.c_str(), GetParam().mode), 0);
    daemon_->Signal(SIGHUP);
    // The reload's own audit record says it happened; then let some requests through.
    ASSERT_TRUE(load.WaitFor([&](const std::vector<Outcome>&) {
      return ReloadRecords(*daemon_, &reloads) >= i;
    }));
    ASSERT_TRUE(load.WaitForMore(200, 50));
  }
  ReplaceFile(path, good);
  daemon_->Signal(SIGHUP);
  ASSERT_TRUE(load.WaitFor([&](const std::vector<Outcome>&) {
    return ReloadRecords(*daemon_, &reloads) >= kReloads + 1;
  }));
  ASSERT_TRUE(load.WaitForMore(200, 50));
  load.Stop();

  const std::vector<Outcome> outcomes = load.Outcomes();
  EXPECT_EQ(CountStatus(outcomes, 200), outcomes.size()) << "a request failed during a reload";
  ASSERT_EQ(reloads.size(), kReloads + 1);
  for (size_t i = 0; i < kReloads; ++i) {
    EXPECT_EQ(reloads[i].value("error_code", ""), GetParam().reason) << reloads[i].dump();
  }
  EXPECT_FALSE(reloads.back().contains("error_code")) << reloads.back().dump();
  const std::string log = daemon_->Log();
  const size_t failed = log.find("event=reload_failed reason=" + std::string(GetParam().reason));
  ASSERT_NE(failed, std::string::npos) << log;
  EXPECT_NE(log.substr(failed, log.find('\n', failed) - failed).find(" kept=previous"),
            std::string::npos)
      << log;
}

INSTANTIATE_TEST_SUITE_P(
    Reloads, SighupTest,
    ::testing::Values(
        BrokenReload{"PolicyNotJson", false, "{\"rules\": [", 0600, "policy_invalid"},
        BrokenReload{"PolicyUnknownKey", false, "{\"version\": 1, \"rules\": [], \"rulez\": []}",
                     0600, "policy_invalid"},
        BrokenReload{"PolicyWorldWritable", false, "", 0666, "file_untrusted"},
        BrokenReload{"ConfigUnknownKey", true,
                     "{\"audit\": {\"try_append_only\": false}, \"limitz\": {}}", 0600,
                     "invalid_config"},
        BrokenReload{"ConfigRestartOnlyChange", true,
                     "{\"audit\": {\"try_append_only\": false}, \"threads\": {\"io\": 3}}",
                     0600, "restart_required"}),
    [](const auto& test) { return std::string(test.param.name); });

}  // namespace
}  // namespace vecseal::reliability
