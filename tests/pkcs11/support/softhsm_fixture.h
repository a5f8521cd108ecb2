// A hermetic SoftHSM2 token for tests and benchmarks: its own SOFTHSM2_CONF and token directory
// under a fresh temporary directory, initialised with softhsm2-util. Nothing touches the system
// token store. Also the controls of the fault-injecting module (faulty_module/).
#pragma once

#include <map>
#include <memory>
#include <string>

#include "vecseal/core/status.h"
#include "vecseal/pkcs11/hsm.h"

namespace vecseal::testing {

inline constexpr const char* kSoftHsmModule = "/usr/lib/softhsm/libsofthsm2.so";

// Why SoftHSM2 tests cannot run here (module or softhsm2-util missing), or empty.
std::string SoftHsmUnavailableReason();

class SoftHsmToken {
 public:
  struct Options {
    std::string label = "vecseal-test";
    std::string user_pin = "1234-user";
    std::string so_pin = "5678-so";
  };

  // Creates the directory and token and points SOFTHSM2_CONF at it (SoftHSM2 reads the variable
  // in C_Initialize, so at most one SoftHsmToken per process should be live at a time).
  static Result<std::unique_ptr<SoftHsmToken>> Create(const Options& options);
  static Result<std::unique_ptr<SoftHsmToken>> Create() { return Create(Options{}); }
  ~SoftHsmToken();  // removes the directory and unsets SOFTHSM2_CONF

  const std::string& dir() const { return dir_; }
  const std::string& conf_path() const { return conf_path_; }
  const std::string& label() const { return options_.label; }
  const std::string& user_pin() const { return options_.user_pin; }
  const std::string& so_pin() const { return options_.so_pin; }
  // A file holding the user PIN and a newline, mode 0600.
  const std::string& pin_file() const { return pin_file_; }

  // For child processes: SOFTHSM2_CONF (and nothing else).
  std::map<std::string, std::string> Environment() const;
  // An HsmConfig for this token through SoftHSM2 directly, fast backoff for tests.
  pkcs11::HsmConfig Config() const;

  // Initialises one more token in this one's directory (the same SOFTHSM2_CONF serves both), with
  // the label and PINs of `options`, and returns the path of a file holding its user PIN (mode
  // 0600), named after the label.
  Result<std::string> AddToken(const Options& options) const;

  // Writes `content` to dir()/name with `mode` and returns its path.
  Result<std::string> WriteFile(const std::string& name, const std::string& content,
                                int mode = 0600) const;

 private:
  SoftHsmToken() = default;
  Options options_;
  std::string dir_;
  std::string conf_path_;
  std::string pin_file_;
};

// The fault-injecting module (tests/pkcs11/faulty_module) forwarding to SoftHSM2, controlled
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

}  // namespace vecseal::testing
