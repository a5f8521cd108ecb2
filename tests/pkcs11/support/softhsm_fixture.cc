#include "softhsm_fixture.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>
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

// Where Debian puts p11-kit-client.so and opencryptoki; VECSEAL_LIBDIR is
// /usr/lib/<multiarch> (tests/pkcs11/CMakeLists.txt).
constexpr const char* kP11KitClientModule = VECSEAL_LIBDIR "/pkcs11/p11-kit-client.so";
constexpr const char* kOpenCryptokiModule = VECSEAL_LIBDIR "/opencryptoki/libopencryptoki.so.0";

// opencryptoki's compiled-in places (3.8): the soft token's store (slot 3), its shared memory
// segment, and pkcsslotd's pid file.
constexpr const char* kOckStore = "/var/lib/opencryptoki/swtok";
constexpr const char* kOckShm = "/dev/shm/var.lib.opencryptoki.swtok";
constexpr const char* kOckPidFile = "/run/pkcsslotd.pid";
constexpr const char* kOckSocket = "/run/pkcsslotd.socket";
constexpr const char* kOckSlot = "3";
constexpr const char* kOckDefaultSoPin = "87654321";
// Left in the store by this fixture, so that it knows the store is its own to wipe.
constexpr const char* kOckMarker = "/var/lib/opencryptoki/swtok/.vecseal-test-fixture";

std::string ReadSmall(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Whether `pid` runs: a zombie (state Z) does not, and where PID 1 does not reap orphans (a
// container), a stopped pkcsslotd stays one.
bool Running(const std::string& pid) {
  const std::string stat = ReadSmall("/proc/" + pid + "/stat");
  const size_t close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] != 'Z';
}

// The pid of a live pkcsslotd, or -1.
pid_t RunningSlotDaemon() {
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    if (ReadSmall(entry.path() / "comm") == "pkcsslotd\n" && Running(name)) {
      return std::stoi(name);
    }
  }
  return -1;
}

// The pkcsslotd this fixture started last, as its marker records it, or -1: one a killed test
// process left running is stopped by the next fixture rather than blocking it.
pid_t OurSlotDaemon() {
  std::istringstream marker(ReadSmall(kOckMarker));
  std::string word;
  pid_t pid = -1;
  while (marker >> word) {
    if (word.starts_with("pkcsslotd=")) pid = std::atoi(word.c_str() + 10);
  }
  return pid;
}

// Leaves the marker, naming `slotd` (the pkcsslotd serving the store, or -1).
void MarkOpenCryptokiStore(pid_t slotd) {
  std::ofstream(kOckMarker) << "made by vecseal's test fixture (tests/pkcs11/support) pkcsslotd="
                            << slotd << "\n";
}

// Wipes the soft token store (keeping its directories) and the shared memory that caches it,
// and leaves the marker.
void WipeOpenCryptokiStore(pid_t slotd) {
  std::error_code ignored;
  for (const auto& entry : std::filesystem::directory_iterator(kOckStore, ignored)) {
    if (entry.is_directory()) {
      for (const auto& object : std::filesystem::directory_iterator(entry.path(), ignored)) {
        std::filesystem::remove_all(object.path(), ignored);
      }
    } else {
      std::filesystem::remove(entry.path(), ignored);
    }
  }
  std::filesystem::remove(kOckShm, ignored);
  MarkOpenCryptokiStore(slotd);
}

bool WaitFor(const std::function<bool()>& ready, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!ready()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

void StopProcess(pid_t pid, bool is_child) {
  if (pid <= 0) return;
  kill(pid, SIGTERM);
  if (is_child) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return;
  }
  // pkcsslotd does not stop while a client holds its socket, and a process that used
  // opencryptoki keeps it initialised (cryptoki.cc, KeepsInitialised): give it half a second.
  if (!WaitFor([pid] { return !Running(std::to_string(pid)); }, std::chrono::milliseconds(500))) {
    kill(pid, SIGKILL);
    WaitFor([pid] { return !Running(std::to_string(pid)); }, std::chrono::seconds(5));
  }
}

// opencryptoki takes PINs of 4 to 8 bytes; a longer one is cut to its first 8.
std::string OpenCryptokiPin(const std::string& pin) {
  return pin.size() > 8 ? pin.substr(0, 8) : pin;
}

}  // namespace

TestModule SelectedTestModule() {
  const char* name = std::getenv("VECSEAL_TEST_MODULE");
  std::string_view chosen = name != nullptr ? name : "";
  if (chosen == "p11-kit") return TestModule::kP11KitServer;
  if (chosen == "opencryptoki") return TestModule::kOpenCryptoki;
  return TestModule::kSoftHsm;
}

std::string_view TestModuleName(TestModule module) {
  switch (module) {
    case TestModule::kSoftHsm: return "softhsm";
    case TestModule::kP11KitServer: return "p11-kit";
    case TestModule::kOpenCryptoki: return "opencryptoki";
  }
  return "softhsm";
}

std::string TestModulePath(TestModule module) {
  switch (module) {
    case TestModule::kSoftHsm: return kSoftHsmModule;
    case TestModule::kP11KitServer: return kP11KitClientModule;
    case TestModule::kOpenCryptoki: return kOpenCryptokiModule;
  }
  return kSoftHsmModule;
}

std::string SoftHsmUnavailableReason() {
  const char* name = std::getenv("VECSEAL_TEST_MODULE");
  const TestModule module = SelectedTestModule();
  if (name != nullptr && *name != '\0' && TestModuleName(module) != name) {
    return std::string("VECSEAL_TEST_MODULE=") + name +
           " is not one of softhsm, p11-kit, opencryptoki";
  }
  if (access(TestModulePath(module).c_str(), R_OK) != 0) {
    return std::string(TestModuleName(module)) + " module not found at " +
           TestModulePath(module) + " (scripts/install-deps installs it)";
  }
  if (module == TestModule::kOpenCryptoki) {
    if (geteuid() != 0) {
      return "opencryptoki's paths are compiled in (/var/lib/opencryptoki, /run/pkcsslotd.*), so "
             "its fixture starts its own pkcsslotd only as root";
    }
    if (access("/usr/sbin/pkcsslotd", X_OK) != 0 || !Executable("pkcsconf")) {
      return "opencryptoki's pkcsslotd or pkcsconf is missing (scripts/install-deps installs them)";
    }
    if (pid_t running = RunningSlotDaemon(); running > 0 && running != OurSlotDaemon()) {
      return "a pkcsslotd (pid " + std::to_string(running) +
             ") is already running; this fixture starts and stops its own, so stop it first";
    }
    if (access((std::string(kOckStore) + "/NVTOK.DAT").c_str(), F_OK) == 0 &&
        access(kOckMarker, F_OK) != 0) {
      return std::string("the opencryptoki soft token store ") + kOckStore +
             " holds a token this fixture did not make; it is never touched";
    }
  }
  if (module != TestModule::kOpenCryptoki && access(kSoftHsmModule, R_OK) != 0) {
    return std::string("SoftHSM2 module not found at ") + kSoftHsmModule;
  }
  if (module != TestModule::kOpenCryptoki && !Executable("softhsm2-util")) {
    return "softhsm2-util not found in PATH";
  }
  if (module == TestModule::kP11KitServer && !Executable("p11-kit")) {
    return "p11-kit not found in PATH";
  }
  return "";
}

pid_t SpawnProcess(const std::vector<std::string>& argv,
                   const std::map<std::string, std::string>& extra, bool own_group) {
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
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  if (own_group) {
    posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attributes, 0);
  }
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, argp[0], &actions, &attributes, argp.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  return rc == 0 ? pid : -1;
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
  if (options.module == TestModule::kOpenCryptoki) {
    token->options_.user_pin = OpenCryptokiPin(options.user_pin);
    token->options_.so_pin = OpenCryptokiPin(options.so_pin);
    VECSEAL_RETURN_IF_ERROR(token->InitOpenCryptoki());
  } else {
    VECSEAL_RETURN_IF_ERROR(token->InitSoftHsm());
  }
  auto pin = token->WriteFile("user.pin", token->options_.user_pin + "\n");
  if (!pin.ok()) return std::move(pin).TakeStatus();
  token->pin_file_ = *pin;
  if (options.module == TestModule::kP11KitServer) VECSEAL_RETURN_IF_ERROR(token->StartServer());
  return token;
}

Status SoftHsmToken::InitSoftHsm() {
  std::filesystem::create_directory(dir_ + "/tokens");
  {
    std::ofstream conf(conf_path_);
    conf << "directories.tokendir = " << dir_ << "/tokens\n"
         << "objectstore.backend = file\n"
         << "log.level = ERROR\n"
         << "slots.removable = false\n";
    if (!conf) return Failed("cannot write " + conf_path_);
  }
  setenv("SOFTHSM2_CONF", conf_path_.c_str(), 1);
  std::string output;
  int status = RunProcess({"softhsm2-util", "--init-token", "--free", "--label", options_.label,
                           "--so-pin", options_.so_pin, "--pin", options_.user_pin},
                          Environment(), &output);
  if (status != 0) return Failed("softhsm2-util --init-token failed: " + output);
  labels_.push_back(options_.label);
  return Status::Ok();
}

// A fresh store, our own pkcsslotd, and the soft token initialised as C_InitToken does it:
// pkcsconf sets the label with the factory SO PIN, then both PINs.
Status SoftHsmToken::InitOpenCryptoki() {
  if (pid_t left = RunningSlotDaemon(); left > 0 && left == OurSlotDaemon()) {
    StopProcess(left, /*is_child=*/false);
  }
  WipeOpenCryptokiStore(-1);
  unlink(kOckPidFile);
  unlink(kOckSocket);
  // pkcsslotd forks into the background; its first process exits once the daemon runs.
  const pid_t starter = SpawnProcess({"/usr/sbin/pkcsslotd"}, {});
  int started = -1;
  if (starter > 0) {
    while (waitpid(starter, &started, 0) < 0 && errno == EINTR) {
    }
  }
  if (starter < 0 || !WIFEXITED(started) || WEXITSTATUS(started) != 0) {
    return Failed("pkcsslotd did not start");
  }
  std::string output;
  if (!WaitFor([] {
        return access(kOckSocket, F_OK) == 0 && std::atoi(ReadSmall(kOckPidFile).c_str()) > 0;
      }, std::chrono::seconds(10))) {
    return Failed("pkcsslotd started but made no socket at " + std::string(kOckSocket));
  }
  slotd_pid_ = std::atoi(ReadSmall(kOckPidFile).c_str());
  MarkOpenCryptokiStore(slotd_pid_);
  const std::string script = "printf '%s\\n' \"$0\" | pkcsconf -I -c " + std::string(kOckSlot) +
                             " -S " + kOckDefaultSoPin + " >/dev/null && pkcsconf -P -c " +
                             kOckSlot + " -S " + kOckDefaultSoPin + " -n \"$1\" && pkcsconf -u -c " +
                             kOckSlot + " -S \"$1\" -n \"$2\"";
  if (RunProcess({"sh", "-c", script, options_.label, options_.so_pin, options_.user_pin}, {},
                 &output) != 0) {
    return Failed("pkcsconf could not initialise the soft token: " + output);
  }
  labels_.push_back(options_.label);
  return Status::Ok();
}

Status SoftHsmToken::StartServer() {
  server_socket_ = dir_ + "/p11-kit.sock";
  unlink(server_socket_.c_str());
  std::vector<std::string> argv = {"p11-kit", "server", "--foreground", "--provider",
                                   kSoftHsmModule, "--name", server_socket_};
  for (const std::string& label : labels_) argv.push_back("pkcs11:token=" + label);
  // Its own process group: the server forks a p11-kit-remote per connection, which would go on
  // serving its client after the server itself stopped.
  server_pid_ = SpawnProcess(argv, Environment(), /*own_group=*/true);
  if (server_pid_ < 0) return Failed("cannot start p11-kit server");
  // Ready once it accepts a connection: the socket file exists before listen(2).
  const std::string path = server_socket_;
  const auto accepts = [&path] {
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
    const bool ok =
        fd >= 0 && connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
    if (fd >= 0) close(fd);
    return ok;
  };
  if (!WaitFor(accepts, std::chrono::seconds(10))) {
    return Failed("p11-kit server does not accept connections on " + path);
  }
  setenv("P11_KIT_SERVER_ADDRESS", ("unix:path=" + server_socket_).c_str(), 1);
  return Status::Ok();
}

Status SoftHsmToken::StopServer() {
  if (options_.module != TestModule::kP11KitServer) return Failed("no p11-kit server to stop");
  if (server_pid_ <= 0) return Status::Ok();
  kill(-server_pid_, SIGTERM);  // the p11-kit-remote of every connection, too
  StopProcess(server_pid_, /*is_child=*/true);
  server_pid_ = -1;
  unlink(server_socket_.c_str());
  return Status::Ok();
}

Result<std::string> SoftHsmToken::AddToken(const Options& options) {
  if (!SupportsMoreTokens()) {
    return Failed("opencryptoki's soft token store holds exactly one token");
  }
  std::string output;
  const int status = RunProcess({"softhsm2-util", "--init-token", "--free", "--label",
                                 options.label, "--so-pin", options.so_pin, "--pin",
                                 options.user_pin},
                                Environment(), &output);
  if (status != 0) return Failed("softhsm2-util --init-token failed: " + output);
  labels_.push_back(options.label);
  if (options_.module == TestModule::kP11KitServer) {
    VECSEAL_RETURN_IF_ERROR(StopServer());
    VECSEAL_RETURN_IF_ERROR(StartServer());
  }
  return WriteFile(options.label + ".pin", options.user_pin + "\n");
}

SoftHsmToken::~SoftHsmToken() {
  if (server_pid_ > 0) {
    kill(-server_pid_, SIGTERM);
    StopProcess(server_pid_, /*is_child=*/true);
    unsetenv("P11_KIT_SERVER_ADDRESS");
  }
  if (slotd_pid_ > 0) {
    StopProcess(slotd_pid_, /*is_child=*/false);
    WipeOpenCryptokiStore(-1);
  }
  const char* current = std::getenv("SOFTHSM2_CONF");
  if (current != nullptr && conf_path_ == current) unsetenv("SOFTHSM2_CONF");
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

std::map<std::string, std::string> SoftHsmToken::Environment() const {
  std::map<std::string, std::string> env = {{"SOFTHSM2_CONF", conf_path_}};
  if (!server_socket_.empty()) env["P11_KIT_SERVER_ADDRESS"] = "unix:path=" + server_socket_;
  return env;
}

pkcs11::HsmConfig SoftHsmToken::Config() const {
  pkcs11::HsmConfig config;
  config.module_path = module_path();
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
  setenv("VECSEAL_FAULTY_REAL_MODULE", token.module_path().c_str(), 1);
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
  env["VECSEAL_FAULTY_REAL_MODULE"] = token_.module_path();
  env["VECSEAL_FAULTY_CONTROL"] = control_path_;
  return env;
}

pkcs11::HsmConfig FaultyModule::Config() const {
  pkcs11::HsmConfig config = token_.Config();
  config.module_path = Path();
  return config;
}

}  // namespace vecseal::testing
