#include "softhsm_fixture.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

extern char** environ;

namespace vecseal::testing {
namespace {

Status Failed(std::string message) {
  return Status(Code::kInternal, "test_fixture_failed", std::move(message));
}

bool Executable(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::string candidate = dirs.substr(start, end - start) + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return true;
    start = end + 1;
  }
  return false;
}

}  // namespace

std::string SoftHsmUnavailableReason() {
  if (access(kSoftHsmModule, R_OK) != 0) {
    return std::string("SoftHSM2 module not found at ") + kSoftHsmModule;
  }
  if (!Executable("softhsm2-util")) return "softhsm2-util not found in PATH";
  return "";
}

int RunProcess(const std::vector<std::string>& argv,
               const std::map<std::string, std::string>& extra, std::string* output) {
  std::map<std::string, std::string> env;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    std::string text(*entry);
    size_t equals = text.find('=');
    if (equals != std::string::npos) env[text.substr(0, equals)] = text.substr(equals + 1);
  }
  for (const auto& [key, value] : extra) env[key] = value;
  std::vector<std::string> env_strings;
  for (const auto& [key, value] : env) env_strings.push_back(key + "=" + value);
  std::vector<char*> envp;
  for (auto& text : env_strings) envp.push_back(text.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> argp;
  for (auto& arg : args) argp.push_back(arg.data());
  argp.push_back(nullptr);

  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return -1;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 2);
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, argp[0], &actions, nullptr, argp.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(pipe_fds[1]);
  std::string collected;
  if (rc == 0) {
    char buffer[4096];
    ssize_t n;
    while ((n = read(pipe_fds[0], buffer, sizeof buffer)) > 0 || (n < 0 && errno == EINTR)) {
      if (n > 0) collected.append(buffer, static_cast<size_t>(n));
    }
  }
  close(pipe_fds[0]);
  if (output != nullptr) *output = collected;
  if (rc != 0) return -1;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

Result<std::unique_ptr<SoftHsmToken>> SoftHsmToken::Create(const Options& options) {
  std::string reason = SoftHsmUnavailableReason();
  if (!reason.empty()) return Failed(reason);
  std::string pattern = (std::filesystem::temp_directory_path() / "vecseal-softhsm-XXXXXX");
  if (mkdtemp(pattern.data()) == nullptr) return Failed("mkdtemp failed");
  std::unique_ptr<SoftHsmToken> token(new SoftHsmToken());
  token->options_ = options;
  token->dir_ = pattern;
  token->conf_path_ = token->dir_ + "/softhsm2.conf";
  std::filesystem::create_directory(token->dir_ + "/tokens");
  {
    std::ofstream conf(token->conf_path_);
    conf << "directories.tokendir = " << token->dir_ << "/tokens\n"
         << "objectstore.backend = file\n"
         << "log.level = ERROR\n"
         << "slots.removable = false\n";
    if (!conf) return Failed("cannot write " + token->conf_path_);
  }
  setenv("SOFTHSM2_CONF", token->conf_path_.c_str(), 1);
  std::string output;
  int status = RunProcess({"softhsm2-util", "--init-token", "--free", "--label", options.label,
                           "--so-pin", options.so_pin, "--pin", options.user_pin},
                          token->Environment(), &output);
  if (status != 0) return Failed("softhsm2-util --init-token failed: " + output);
  auto pin = token->WriteFile("user.pin", options.user_pin + "\n");
  if (!pin.ok()) return std::move(pin).TakeStatus();
  token->pin_file_ = *pin;
  return token;
}

Result<std::string> SoftHsmToken::AddToken(const Options& options) const {
  std::string output;
  const int status = RunProcess({"softhsm2-util", "--init-token", "--free", "--label",
                                 options.label, "--so-pin", options.so_pin, "--pin",
                                 options.user_pin},
                                Environment(), &output);
  if (status != 0) return Failed("softhsm2-util --init-token failed: " + output);
  return WriteFile(options.label + ".pin", options.user_pin + "\n");
}

SoftHsmToken::~SoftHsmToken() {
  const char* current = std::getenv("SOFTHSM2_CONF");
  if (current != nullptr && conf_path_ == current) unsetenv("SOFTHSM2_CONF");
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

std::map<std::string, std::string> SoftHsmToken::Environment() const {
  return {{"SOFTHSM2_CONF", conf_path_}};
}

pkcs11::HsmConfig SoftHsmToken::Config() const {
  pkcs11::HsmConfig config;
  config.module_path = kSoftHsmModule;
  config.token_label = options_.label;
  config.pin.file = pin_file_;
  config.initial_backoff = std::chrono::milliseconds(1);
  config.max_backoff = std::chrono::milliseconds(4);
  return config;
}

Result<std::string> SoftHsmToken::WriteFile(const std::string& name, const std::string& content,
                                            int mode) const {
  std::string path = dir_ + "/" + name;
  std::string temporary = path + ".tmp";
  int fd = open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Failed("cannot create " + temporary + ": " + std::strerror(errno));
  bool ok = write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
  ok = fchmod(fd, static_cast<mode_t>(mode)) == 0 && ok;
  ok = close(fd) == 0 && ok;
  if (!ok || rename(temporary.c_str(), path.c_str()) != 0) return Failed("cannot write " + path);
  return path;
}

// FaultyModule

FaultyModule::FaultyModule(const SoftHsmToken& token)
    : token_(token), control_path_(token.dir() + "/faulty.control") {
  setenv("VECSEAL_FAULTY_REAL_MODULE", kSoftHsmModule, 1);
  setenv("VECSEAL_FAULTY_CONTROL", control_path_.c_str(), 1);
}

FaultyModule::~FaultyModule() {
  unsetenv("VECSEAL_FAULTY_CONTROL");
  unsetenv("VECSEAL_FAULTY_REAL_MODULE");
}

std::string FaultyModule::Path() { return VECSEAL_FAULTY_MODULE_PATH; }

Status FaultyModule::Set(const std::string& commands) {
  // A fresh name every time gives a fresh inode, so readers see the change even within one
  // mtime tick.
  auto written = token_.WriteFile("faulty.control." + std::to_string(++generation_), commands);
  if (!written.ok()) return std::move(written).TakeStatus();
  if (rename(written->c_str(), control_path_.c_str()) != 0) {
    return Failed("cannot replace " + control_path_);
  }
  return Status::Ok();
}

std::map<std::string, std::string> FaultyModule::Environment() const {
  auto env = token_.Environment();
  env["VECSEAL_FAULTY_REAL_MODULE"] = kSoftHsmModule;
  env["VECSEAL_FAULTY_CONTROL"] = control_path_;
  return env;
}

pkcs11::HsmConfig FaultyModule::Config() const {
  pkcs11::HsmConfig config = token_.Config();
  config.module_path = Path();
  return config;
}

}  // namespace vecseal::testing
