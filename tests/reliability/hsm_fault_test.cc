// The HSM failing under the real daemon, through the fault-injecting PKCS#11 module in front of
// SoftHSM2: down at start, lost mid-load, recovered without a restart. Every ciphertext the
// daemon returned, during the fault too, is decrypted afterwards with its token: a wrong noise
// seed would not give back the plaintext, so "zero wrong ciphertexts" is checked, not assumed.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

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

struct StartFault {
  const char* rules;     // for the faulty module's control file
  const char* log_line;  // what the daemon must log before exiting 1
};

// The daemon refuses to start (exit 1, so that systemd's Restart= retries) with a typed reason,
// rather than crashing or serving without its HSM.
TEST_F(HsmFaultTest, DownAtStartIsATypedFailureNotACrash) {
  StartDaemon();  // creates the token, keys and audit key while the HSM is up
  ASSERT_EQ(daemon_->KillAndWait(SIGTERM), 0);

  const StartFault faults[] = {
      {"down", "event=start_failed reason=hsm_module_unloadable message=\"cannot load the PKCS#11 "
               "module " VECSEAL_FAULTY_MODULE_PATH ": C_Initialize failed: CKR_DEVICE_REMOVED"},
      {"C_GetSlotList CKR_DEVICE_ERROR", "event=start_failed reason=hsm_unavailable"},
      {"C_OpenSession CKR_DEVICE_REMOVED", "event=start_failed reason=hsm_unavailable"},
      {"C_Login CKR_DEVICE_ERROR", "event=start_failed reason=hsm_unavailable"},
  };
  for (const StartFault& fault : faults) {
    SetFaults(fault.rules);
    const size_t log_before = daemon_->Log().size();
    const int status = daemon_->StartExpectingExit();
    ASSERT_TRUE(WIFEXITED(status)) << fault.rules << ": died of signal " << WTERMSIG(status);
    EXPECT_EQ(WEXITSTATUS(status), 1) << fault.rules;
    const std::string log = daemon_->Log().substr(log_before);
    EXPECT_NE(log.find(fault.log_line), std::string::npos) << fault.rules << ":\n" << log;
  }

  SetFaults("up");
  StartDaemon();
  HttpClient client(daemon_->socket_path());
  EXPECT_EQ(client.Get("/v1/health").status, 200u);
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
    SetFaults(round % 2 == 0 ? "close-sessions" : "C_Sign CKR_DEVICE_ERROR 1");
    ASSERT_TRUE(load.WaitForMore(200, 100));
    SetFaults("up");
  }
  load.Stop();
  const std::vector<Outcome> outcomes = load.Outcomes();
  for (const Outcome& o : outcomes) {
    EXPECT_EQ(o.status, 200u) << "request " << o.request_id << " failed (" << o.code
                              << ") on a fault the daemon should have recovered from";
  }
  const auto wrong = WrongCiphertexts(daemon_->socket_path(), "demo", outcomes);
  EXPECT_TRUE(wrong.empty()) << wrong.size() << " wrong, first: " << wrong.front();
}

// A slow HSM holds up only the requests that wait for it. Three encryptions sit in a slow
// C_Sign (one on the I/O thread that read it, two on workers) while another connection asks for
// things that need no HSM: those are answered at once, not after the HSM. (/v1/health is not
// among them: it probes the HSM, and reports it slow by being slow.)
TEST_F(HsmFaultTest, SlowHsmDoesNotStallOtherConnections) {
  StartDaemon();
  constexpr auto kSignDelay = std::chrono::milliseconds(1000);
  SetFaults("slow C_Sign " + std::to_string(kSignDelay.count()));
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
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // into their C_Sign

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
            << " ms per C_Sign\n";
}

}  // namespace
}  // namespace vecseal::reliability
