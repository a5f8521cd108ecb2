// The HSM failing under the real daemon, through the fault-injecting PKCS#11 module in front of
// SoftHSM2: down at start (the daemon answers 503 until it is back), lost mid-load, recovered
// without a restart. Every ciphertext the daemon returned, during the fault too, is decrypted
// afterwards with its token: a wrong noise seed would not give back the plaintext, so "zero
// wrong ciphertexts" is checked, not assumed.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/daemon_process.h"
#include "support/dev_daemon.h"
#include "support/encrypt_load.h"

namespace vecseal::reliability {
namespace {

using daemon::testing::HttpClient;

class HsmFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(scratch_.path().empty());
    control_ = scratch_.path() + "/faults";
    ReplaceFile(control_, "up\n");
    const std::string overlay = scratch_.path() + "/overlay.json";
    ReplaceFile(overlay, std::string(R"({"pkcs11": {"module": ")") + VECSEAL_FAULTY_MODULE_PATH +
                             R"("}, "audit": {"try_append_only": false}})");
    daemon_ = std::make_unique<DaemonProcess>(
        DaemonOptions{.state_dir = scratch_.path() + "/state",
                      .overlay_path = overlay,
                      .env = {{"VECSEAL_FAULTY_CONTROL", control_}}});
  }

  void StartDaemon() {
    std::string error;
    ASSERT_TRUE(daemon_->Start(&error)) << error;
  }
  void SetFaults(const std::string& rules) { ReplaceFile(control_, rules + "\n"); }

  ScratchDir scratch_;
  std::string control_;
  std::unique_ptr<DaemonProcess> daemon_;
};

size_t Occurrences(const std::string& text, const std::string& needle) {
  size_t count = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) {
    ++count;
  }
  return count;
}

// The last record of `records` with this event, or null.
nlohmann::json LastEvent(const std::vector<nlohmann::json>& records, const std::string& event) {
  for (auto it = records.rbegin(); it != records.rend(); ++it) {
    if (it->value("event", "") == event) return *it;
  }
  return nullptr;
}

// The request ids of 503 outcomes whose refusal has no error record with that code.
std::vector<std::string> RefusedWithoutRecord(const std::vector<Outcome>& outcomes,
                                              const std::vector<nlohmann::json>& records) {
  std::set<std::string> recorded;
  for (const auto& record : records) {
    if (record.value("event", "") == "error" &&
        record.value("error_code", "") == "hsm_unavailable") {
      recorded.insert(record.value("request_id", ""));
    }
  }
  std::vector<std::string> missing;
  for (const Outcome& o : outcomes) {
    if (o.status == 503 && !recorded.contains(o.request_id)) missing.push_back(o.request_id);
  }
  return missing;
}

struct StartFault {
  const char* rules;    // for the faulty module's control file
  const char* message;  // what the daemon must log as the reason it waits
};

// Down at start, for each way the HSM can fail to answer: the daemon becomes ready all the same,
// refuses what needs the HSM with 503 hsm_unavailable (audited), answers what does not, retries
// in the background with one log line per cause, and serves everything once the HSM is back,
// without a restart. Every ciphertext it returned is decrypted afterwards.
TEST_F(HsmFaultTest, DownAtStartAnswers503sThenServesWithoutARestart) {
  StartDaemon();  // creates the token, keys and audit key while the HSM is up
  ASSERT_EQ(daemon_->KillAndWait(SIGTERM), 0);

  const StartFault faults[] = {
      {"down", "cannot initialise the PKCS#11 module " VECSEAL_FAULTY_MODULE_PATH
               ": C_Initialize failed: CKR_DEVICE_REMOVED"},
      {"C_GetSlotList CKR_DEVICE_ERROR", "C_GetSlotList failed: CKR_DEVICE_ERROR"},
      {"C_OpenSession CKR_DEVICE_REMOVED", "C_OpenSession failed: CKR_DEVICE_REMOVED"},
      {"C_Login CKR_DEVICE_ERROR", "C_Login failed: CKR_DEVICE_ERROR"},
  };
  for (const StartFault& fault : faults) {
    SCOPED_TRACE(fault.rules);
    SetFaults(fault.rules);
    const size_t log_before = daemon_->Log().size();
    StartDaemon();
    const auto ready = std::chrono::steady_clock::now();
    const pid_t pid = daemon_->pid();

    EncryptLoad load(daemon_->socket_path(), "demo", 2, std::chrono::milliseconds(5));
    ASSERT_TRUE(load.WaitFor([](const std::vector<Outcome>& o) {
      return CountStatus(o, 503, "hsm_unavailable") >= 20;
    })) << "no 503 hsm_unavailable while the HSM was down at start";
    HttpClient probe(daemon_->socket_path());
    const auto health = probe.Get("/v1/health");
    EXPECT_EQ(health.status, 503u);
    EXPECT_EQ(health.Json().value("hsm", ""), "unavailable") << health.body;
    EXPECT_EQ(health.Json().value("audit", ""), "ok") << health.body;
    const auto refused = probe.PostJson("/v1/keys/demo/encrypt", {{"vectors", {{0.6, 0.8}}}});
    EXPECT_EQ(refused.status, 503u);
    EXPECT_EQ(refused.ErrorCode(), "hsm_unavailable") << refused.body;
    EXPECT_NE(refused.Json()["error"].value("message", "").find(fault.message),
              std::string::npos)
        << refused.body;
    EXPECT_EQ(probe.Get("/v1/whoami").status, 200u) << "whoami needs no HSM";
    EXPECT_EQ(probe.Get("/metrics").status, 200u) << "metrics need no HSM";

    // Two retries at least (0.5 s, then 1 s later) before the HSM comes back.
    std::this_thread::sleep_until(ready + std::chrono::milliseconds(1700));
    SetFaults("up");
    const auto up = std::chrono::steady_clock::now();
    ASSERT_TRUE(load.WaitForMore(200, 1)) << "service did not resume after the HSM came back";
    const auto first_200 = std::chrono::steady_clock::now() - up;
    ASSERT_TRUE(load.WaitForMore(200, 100));
    load.Stop();

    const std::vector<Outcome> outcomes = load.Outcomes();
    for (const Outcome& o : outcomes) {
      const bool expected = o.status == 200 || (o.status == 503 && o.code == "hsm_unavailable");
      EXPECT_TRUE(expected) << "request " << o.request_id << ": " << o.status << " " << o.code;
    }
    EXPECT_EQ(daemon_->pid(), pid);
    EXPECT_TRUE(daemon_->Running()) << "the daemon restarted or died";
    EXPECT_EQ(probe.Get("/v1/health").status, 200u);
    const auto wrong = WrongCiphertexts(daemon_->socket_path(), "demo", outcomes);
    EXPECT_TRUE(wrong.empty()) << wrong.size() << " wrong, first: " << wrong.front();

    const std::string log = daemon_->Log().substr(log_before);
    EXPECT_EQ(log.find("event=start_failed"), std::string::npos) << log;
    EXPECT_NE(log.find("event=ready"), std::string::npos) << log;
    EXPECT_NE(log.find("hsm=waiting"), std::string::npos) << log;
    EXPECT_NE(log.find(fault.message), std::string::npos) << log;
    EXPECT_EQ(Occurrences(log, "event=hsm_unavailable"), 1u) << "one line per cause:\n" << log;
    EXPECT_NE(log.find("event=hsm_connected"), std::string::npos) << log;

    const std::vector<nlohmann::json> records = AuditRecords(daemon_->audit_dir());
    EXPECT_TRUE(ServedWithoutRecord(outcomes, records).empty());
    EXPECT_TRUE(RefusedWithoutRecord(outcomes, records).empty()) << "a refusal not audited";
    const nlohmann::json start = LastEvent(records, "start");
    EXPECT_EQ(start.value("error_code", ""), "hsm_unavailable") << start;
    EXPECT_EQ(start["extra"].value("hsm", ""), "unavailable") << start;
    const nlohmann::json connected = LastEvent(records, "hsm_connected");
    ASSERT_TRUE(connected.is_object()) << "no hsm_connected record";
    const int attempts = connected["extra"].value("attempts", 0);
    EXPECT_GE(attempts, 3) << "the HSM was retried fewer times than the backoff allows";

    ASSERT_EQ(daemon_->KillAndWait(SIGTERM), 0);
    const CommandResult verified = VerifyAuditLog(*daemon_);
    EXPECT_EQ(verified.exit_code, 0) << verified.output;
    const auto report = nlohmann::json::parse(verified.output, nullptr, false);
    EXPECT_EQ(report.value("ok", false), true) << verified.output;
    EXPECT_EQ(report.value("unsealed_tail", -1), 0) << verified.output;

    std::cout << "[ figures  ] " << fault.rules << ": "
              << CountStatus(outcomes, 503, "hsm_unavailable") << " answered 503 while down, "
              << CountStatus(outcomes, 200) << " answered 200 and decrypted, first 200 "
              << std::chrono::duration_cast<std::chrono::milliseconds>(first_200).count()
              << " ms after the HSM came back, " << attempts << " attempts\n";
  }
}

// Waiting for the HSM does not get in the way of the signals: SIGHUP reloads, SIGTERM stops at
// once with status 0. The records written while the audit key was out of reach stay chained,
// and the next run's first seal vouches for them.
TEST_F(HsmFaultTest, SignalsWhileWaitingForTheHsm) {
  StartDaemon();
  ASSERT_EQ(daemon_->KillAndWait(SIGTERM), 0);
  SetFaults("down");
  const size_t log_before = daemon_->Log().size();
  StartDaemon();
  HttpClient client(daemon_->socket_path());
  EXPECT_EQ(client.Get("/v1/health").status, 503u);

  daemon_->Signal(SIGHUP);
  const auto reload_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (daemon_->Log().find("event=reloaded", log_before) == std::string::npos &&
         std::chrono::steady_clock::now() < reload_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_NE(daemon_->Log().find("event=reloaded", log_before), std::string::npos)
      << daemon_->Log().substr(log_before);
  EXPECT_EQ(client.Get("/v1/whoami").status, 200u);
  const auto refused = client.PostJson("/v1/keys/demo/encrypt", {{"vectors", {{0.6, 0.8}}}});
  EXPECT_EQ(refused.ErrorCode(), "hsm_unavailable") << refused.body;

  const auto stop = std::chrono::steady_clock::now();
  const int status = daemon_->KillAndWait(SIGTERM);
  const auto stopped_in = std::chrono::steady_clock::now() - stop;
  ASSERT_TRUE(WIFEXITED(status)) << "died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_LT(stopped_in, std::chrono::seconds(5))
      << "SIGTERM waited for an HSM retry; the daemon's log:\n" << daemon_->Log().substr(log_before);
  EXPECT_NE(daemon_->Log().find("event=stopped", log_before), std::string::npos);

  // Its stop record could not be sealed: the log's end is vouched for only once the next run
  // seals, so only a check that accepts an unsealed end passes now.
  CommandResult verified = VerifyAuditLog(*daemon_);
  EXPECT_EQ(verified.exit_code, 1) << verified.output;
  auto report = nlohmann::json::parse(verified.output, nullptr, false);
  EXPECT_EQ(report["error"].value("code", ""), "unsealed_end") << verified.output;
  verified = VerifyAuditLog(*daemon_, {"--allow-unsealed-tail"});
  EXPECT_EQ(verified.exit_code, 0) << verified.output;
  report = nlohmann::json::parse(verified.output, nullptr, false);
  EXPECT_EQ(report.value("ok", false), true) << verified.output;
  EXPECT_GT(report.value("unsealed_tail", 0), 0) << "sealed without the audit key?";

  SetFaults("up");
  StartDaemon();
  ASSERT_EQ(daemon_->KillAndWait(SIGTERM), 0);
  verified = VerifyAuditLog(*daemon_);
  EXPECT_EQ(verified.exit_code, 0) << verified.output;
  report = nlohmann::json::parse(verified.output, nullptr, false);
  EXPECT_EQ(report.value("ok", false), true) << verified.output;
  EXPECT_EQ(report.value("unsealed_tail", -1), 0) << verified.output;
}

// Configuration errors are not waited for: a module that cannot be loaded, or a PIN the token
// refuses, stops the daemon with status 1 and its message, at start or when the HSM first
// answers after a wait.
TEST_F(HsmFaultTest, ConfigurationErrorsStillExit1WithTheirMessage) {
  StartDaemon();
  ASSERT_EQ(daemon_->KillAndWait(SIGTERM), 0);

  SetFaults("C_Login CKR_PIN_INCORRECT");
  size_t log_before = daemon_->Log().size();
  int status = daemon_->StartExpectingExit();
  ASSERT_TRUE(WIFEXITED(status)) << "died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 1);
  std::string log = daemon_->Log().substr(log_before);
  EXPECT_NE(log.find("event=start_failed reason=hsm_login_failed"), std::string::npos) << log;
  EXPECT_NE(log.find("vecseald: login to token"), std::string::npos) << log;

  // The device answers only after the daemon became ready, and then refuses the PIN.
  SetFaults("C_Login CKR_DEVICE_ERROR");
  log_before = daemon_->Log().size();
  StartDaemon();
  SetFaults("C_Login CKR_PIN_INCORRECT");
  const std::optional<int> exited = daemon_->WaitForExit(std::chrono::seconds(30));
  ASSERT_TRUE(exited.has_value()) << "still running with a refused PIN";
  ASSERT_TRUE(WIFEXITED(*exited)) << "died of signal " << WTERMSIG(*exited);
  EXPECT_EQ(WEXITSTATUS(*exited), 1);
  log = daemon_->Log().substr(log_before);
  EXPECT_NE(log.find("event=hsm_failed reason=hsm_login_failed"), std::string::npos) << log;
  EXPECT_NE(log.find("vecseald: login to token"), std::string::npos) << log;
  const nlohmann::json stop = LastEvent(AuditRecords(daemon_->audit_dir()), "stop");
  EXPECT_EQ(stop.value("error_code", ""), "hsm_login_failed") << stop;

  const std::string missing = scratch_.path() + "/missing-pkcs11.so";
  const std::string overlay = scratch_.path() + "/missing.json";
  ReplaceFile(overlay, R"({"pkcs11": {"module": ")" + missing + R"("}})");
  DaemonProcess misconfigured(DaemonOptions{.state_dir = scratch_.path() + "/state",
                                            .overlay_path = overlay,
                                            .env = {{"VECSEAL_FAULTY_CONTROL", control_}}});
  SetFaults("up");
  log_before = misconfigured.Log().size();
  status = misconfigured.StartExpectingExit();
  ASSERT_TRUE(WIFEXITED(status)) << "died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 1);
  log = misconfigured.Log().substr(log_before);
  EXPECT_NE(log.find("event=start_failed reason=hsm_module_unloadable"), std::string::npos)
      << log;
  EXPECT_NE(log.find("vecseald: cannot load the PKCS#11 module " + missing), std::string::npos)
      << log;
}

TEST_F(HsmFaultTest, LostMidLoadGives503sAndNoWrongCiphertextAndRecovers) {
  StartDaemon();
  const pid_t pid = daemon_->pid();
  EncryptLoad load(daemon_->socket_path(), "demo", 4);
  ASSERT_TRUE(load.WaitForMore(200, 200));

  SetFaults("down");
  ASSERT_TRUE(load.WaitFor([](const std::vector<Outcome>& o) {
    return CountStatus(o, 503, "hsm_unavailable") >= 20;
  })) << "no 503 hsm_unavailable while the HSM was down";
  HttpClient probe(daemon_->socket_path());
  const auto health = probe.Get("/v1/health");
  EXPECT_EQ(health.status, 503u);
  EXPECT_EQ(health.Json().value("hsm", ""), "unavailable") << health.body;

  SetFaults("up");
  ASSERT_TRUE(load.WaitForMore(200, 200)) << "service did not resume after the HSM came back";
  load.Stop();

  const std::vector<Outcome> outcomes = load.Outcomes();
  for (const Outcome& o : outcomes) {
    const bool expected = o.status == 200 || (o.status == 503 && o.code == "hsm_unavailable");
    EXPECT_TRUE(expected) << "request " << o.request_id << ": " << o.status << " " << o.code;
  }
  EXPECT_EQ(probe.Get("/v1/health").status, 200u);
  EXPECT_EQ(daemon_->pid(), pid);
  EXPECT_TRUE(daemon_->Running()) << "the daemon restarted or died";

  const auto wrong = WrongCiphertexts(daemon_->socket_path(), "demo", outcomes);
  EXPECT_TRUE(wrong.empty()) << wrong.size() << " wrong, first: " << wrong.front();
  EXPECT_TRUE(ServedWithoutRecord(outcomes, AuditRecords(daemon_->audit_dir())).empty());
  std::cout << "[ figures  ] " << CountStatus(outcomes, 200) << " answered 200 and decrypted, "
            << CountStatus(outcomes, 503) << " answered 503 hsm_unavailable\n";
}

// Faults the daemon must absorb without the caller noticing: lost sessions and one-off device
// errors are retried on a fresh session.
TEST_F(HsmFaultTest, SessionLossAndTransientErrorsMidLoadAreInvisible) {
  StartDaemon();
  EncryptLoad load(daemon_->socket_path(), "demo", 4);
  ASSERT_TRUE(load.WaitForMore(200, 100));
  for (int round = 0; round < 5; ++round) {
    // The demo key is format 2: each request is one C_EncryptUpdate of an open operation.
    SetFaults(round % 2 == 0 ? "close-sessions" : "C_EncryptUpdate CKR_DEVICE_ERROR 1");
    ASSERT_TRUE(load.WaitForMore(200, 100));
    SetFaults("up");
  }
  load.Stop();
  const std::vector<Outcome> outcomes = load.Outcomes();
  const std::vector<nlohmann::json> records = AuditRecords(daemon_->audit_dir());
  for (const Outcome& o : outcomes) {
    if (o.status == 200u) continue;
    std::string why;
    for (const auto& record : records) {
      if (record.value("request_id", "") == o.request_id) why += "\n  " + record.dump();
    }
    ADD_FAILURE() << "request " << o.request_id << " failed (" << o.status << " " << o.code
                  << ") on a fault the daemon should have recovered from: " << o.body
                  << "\nits audit records:"
                  << why << "\nthe daemon's log:\n" << daemon_->Log();
  }
  const auto wrong = WrongCiphertexts(daemon_->socket_path(), "demo", outcomes);
  EXPECT_TRUE(wrong.empty()) << wrong.size() << " wrong, first: " << wrong.front();
}

// A slow HSM holds up only the requests that wait for it. Three encryptions sit in a slow
// derivation (one on the I/O thread that read it, two on workers) while another connection asks for
// things that need no HSM: those are answered at once, not after the HSM. (/v1/health is not
// among them: it probes the HSM, and reports it slow by being slow.)
TEST_F(HsmFaultTest, SlowHsmDoesNotStallOtherConnections) {
  StartDaemon();
  constexpr auto kSignDelay = std::chrono::milliseconds(1000);
  // The demo key is format 2: an encryption's derivation is C_EncryptInit, then
  // C_EncryptUpdate of the operation its session keeps open.
  SetFaults("slow C_EncryptInit " + std::to_string(kSignDelay.count()) +
            "\nslow C_EncryptUpdate " + std::to_string(kSignDelay.count()));
  constexpr int kSlow = 3;
  std::atomic<int> finished{0};
  std::vector<unsigned> statuses(kSlow, 0);
  std::vector<std::thread> slow;
  for (int i = 0; i < kSlow; ++i) {
    slow.emplace_back([&, i] {
      HttpClient client(daemon_->socket_path());
      statuses[i] = client.PostJson("/v1/keys/demo/encrypt", {{"vectors", {{0.6, 0.8, 0.0}}}}).status;
      ++finished;
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // into their derivation

  HttpClient other(daemon_->socket_path());
  const auto start = std::chrono::steady_clock::now();
  const unsigned whoami = other.Get("/v1/whoami").status;
  const unsigned metrics = other.Get("/metrics").status;
  const auto waited = std::chrono::steady_clock::now() - start;
  const int finished_meanwhile = finished.load();
  for (auto& thread : slow) thread.join();

  EXPECT_EQ(whoami, 200u);
  EXPECT_EQ(metrics, 200u);
  EXPECT_EQ(finished_meanwhile, 0) << "the encryptions were not in flight: the test proves nothing";
  EXPECT_LT(waited, kSignDelay / 2) << "another connection waited for the HSM";
  for (int i = 0; i < kSlow; ++i) EXPECT_EQ(statuses[i], 200u) << "slow encryption " << i;
  std::cout << "[ figures  ] whoami and metrics answered in "
            << std::chrono::duration_cast<std::chrono::microseconds>(waited).count()
            << " us while " << kSlow << " encryptions waited " << kSignDelay.count()
            << " ms per derivation call\n";
}

}  // namespace
}  // namespace vecseal::reliability
