// A token for tests and benchmarks on one of the PKCS#11 implementations of the module matrix
// (docs/hsm.md, "Modules tested"), chosen by the environment variable VECSEAL_TEST_MODULE:
//
//   softhsm       (default) SoftHSM2 loaded directly: its own SOFTHSM2_CONF and token directory
//                 under a fresh temporary directory, initialised with softhsm2-util. Nothing
//                 touches the system token store.
//   p11-kit       the same SoftHSM2 token behind `p11-kit server` (a process of its own, on a
//                 Unix socket in the token's directory), loaded through p11-kit-client.so: every
//                 call an RPC, the shape of a network HSM.
//   opencryptoki  opencryptoki's soft token (slot 3), with a pkcsslotd the fixture starts and
//                 stops itself. opencryptoki's paths are compiled in (/var/lib/opencryptoki,
//                 /run), so this needs root, no other pkcsslotd running, and a soft token store
//                 that is empty or was made by this fixture: a real token is never touched.
//
// Also the controls of the fault-injecting module (faulty_module/), which forwards to the
// selected module.
#pragma once

#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "vecseal/core/status.h"
#include "vecseal/pkcs11/hsm.h"

namespace vecseal::testing {

inline constexpr const char* kSoftHsmModule = "/usr/lib/softhsm/libsofthsm2.so";

enum class TestModule { kSoftHsm, kP11KitServer, kOpenCryptoki };
// VECSEAL_TEST_MODULE's choice (softhsm when unset); an unknown name is kSoftHsm, and
// SoftHsmUnavailableReason() then says so.
TestModule SelectedTestModule();
std::string_view TestModuleName(TestModule module);  // "softhsm", "p11-kit", "opencryptoki"
// The library vecseald loads for `module`.
std::string TestModulePath(TestModule module);

// Why tests of the selected module cannot run here (a package missing, not root, ...), or empty.
std::string SoftHsmUnavailableReason();

class SoftHsmToken {
 public:
  struct Options {
    std::string label = "vecseal-test";
    std::string user_pin = "1234-user";
    std::string so_pin = "5678-so";
    TestModule module = SelectedTestModule();
  };

  // Creates the directory and token and points SOFTHSM2_CONF at it (SoftHSM2 reads the variable
  // in C_Initialize, so at most one SoftHsmToken per process should be live at a time).
  static Result<std::unique_ptr<SoftHsmToken>> Create(const Options& options);
  static Result<std::unique_ptr<SoftHsmToken>> Create() { return Create(Options{}); }
  ~SoftHsmToken();  // removes the directory and unsets SOFTHSM2_CONF

  const std::string& dir() const { return dir_; }
  const std::string& conf_path() const { return conf_path_; }
  TestModule module() const { return options_.module; }
  // The library to load (TestModulePath(module())).
  std::string module_path() const { return TestModulePath(options_.module); }
  const std::string& label() const { return options_.label; }
  const std::string& user_pin() const { return options_.user_pin; }
  const std::string& so_pin() const { return options_.so_pin; }
  // A file holding the user PIN and a newline, mode 0600.
  const std::string& pin_file() const { return pin_file_; }

  // For child processes: SOFTHSM2_CONF, and P11_KIT_SERVER_ADDRESS behind p11-kit server.
  std::map<std::string, std::string> Environment() const;
  // An HsmConfig for this token through module_path(), fast backoff for tests.
  pkcs11::HsmConfig Config() const;

  // Whether AddToken works: opencryptoki's soft token is one token per store.
  bool SupportsMoreTokens() const { return options_.module != TestModule::kOpenCryptoki; }
  // Initialises one more token in this one's directory (the same SOFTHSM2_CONF serves both), with
  // the label and PINs of `options`, and returns the path of a file holding its user PIN (mode
  // 0600), named after the label. Behind p11-kit server, the server is restarted to export it.
  Result<std::string> AddToken(const Options& options);

  // p11-kit server only: stops the server (every client's connection drops) and, with `start`,
  // starts a new one on the same socket, as when the remote HSM's server restarts.
  Status StopServer();
  Status StartServer();
  const std::string& server_socket() const { return server_socket_; }

  // Writes `content` to dir()/name with `mode` and returns its path.
  Result<std::string> WriteFile(const std::string& name, const std::string& content,
                                int mode = 0600) const;

 private:
  SoftHsmToken() = default;
  Status InitSoftHsm();
  Status InitOpenCryptoki();
  Options options_;
  std::string dir_;
  std::string conf_path_;
  std::string pin_file_;
  std::vector<std::string> labels_;  // every token made, for p11-kit server's token URIs
  std::string server_socket_;
  pid_t server_pid_ = -1;
  pid_t slotd_pid_ = -1;
};

// The fault-injecting module (tests/pkcs11/faulty_module) forwarding to the token's module, controlled
// through a file. Construct after the SoftHsmToken; sets VECSEAL_FAULTY_REAL_MODULE and
// VECSEAL_FAULTY_CONTROL for this process (the module reads them in C_GetFunctionList and
// C_Initialize), and Environment() gives them to child processes.
class FaultyModule {
 public:
  explicit FaultyModule(const SoftHsmToken& token);
  ~FaultyModule();

  static std::string Path();  // absolute path of the built .so
  const std::string& control_path() const { return control_path_; }

  // Replaces the control file atomically (rename), e.g. "C_Sign CKR_DEVICE_ERROR 1", "down",
  // "up", "close-sessions".
  Status Set(const std::string& commands);

  std::map<std::string, std::string> Environment() const;
  // token.Config() with module_path pointing at the faulty module.
  pkcs11::HsmConfig Config() const;

 private:
  const SoftHsmToken& token_;
  std::string control_path_;
  int generation_ = 0;
};

// Runs argv[0] (searched in PATH) with argv, environment = this process's plus `extra`, and
// waits. Returns the exit status (or -1) and the combined stdout+stderr in *output.
int RunProcess(const std::vector<std::string>& argv,
               const std::map<std::string, std::string>& extra, std::string* output);
// Starts argv[0] the same way without waiting, its output to /dev/null, in a process group of
// its own when `own_group` (so that kill(-pid) reaches what it forks); the pid, or -1.
pid_t SpawnProcess(const std::vector<std::string>& argv,
                   const std::map<std::string, std::string>& extra, bool own_group = false);

}  // namespace vecseal::testing
