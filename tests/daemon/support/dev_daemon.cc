// GCC 12 reports a -Wnull-dereference false positive inside Boost.Asio 1.74's scheduler once it
// is inlined here; the pragma must precede the includes to cover the inlined code.
#pragma GCC diagnostic ignored "-Wnull-dereference"

#include "support/dev_daemon.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

extern char** environ;

namespace vecseal::daemon::testing {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;

// A guard against a daemon that never becomes ready; not a performance expectation.
constexpr int kReadyDeadlineMs = 120'000;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string Lower(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

// Run as root, a dev daemon makes its audit files append-only, which remove_all cannot delete.
void ClearAppendOnly(const std::string& root) {
  std::error_code error;
  for (auto it = std::filesystem::recursive_directory_iterator(root, error);
       !error && it != std::filesystem::recursive_directory_iterator(); it.increment(error)) {
    if (!it->is_regular_file(error)) continue;
    const int fd = open(it->path().c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) continue;
    int flags = 0;
    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0 && (flags & FS_APPEND_FL) != 0) {
      flags &= ~FS_APPEND_FL;
      ioctl(fd, FS_IOC_SETFLAGS, &flags);
    }
    close(fd);
  }
}

}  // namespace

std::unique_ptr<DevDaemon> DevDaemon::Start(const DevDaemonOptions& options, std::string* error) {
  std::unique_ptr<DevDaemon> daemon(new DevDaemon());
  char root_template[] = "/tmp/vecseald-test-XXXXXX";
  if (mkdtemp(root_template) == nullptr) {
    *error = std::string("mkdtemp: ") + std::strerror(errno);
    return nullptr;
  }
  daemon->root_ = root_template;
  daemon->state_dir_ = daemon->root_ + "/state";
  std::vector<std::string> args = {VECSEALD_PATH, "--dev", "--state-dir", daemon->state_dir_};
  if (!options.overlay_json.empty()) {
    daemon->overlay_path_ = daemon->root_ + "/overlay.json";
    std::ofstream(daemon->overlay_path_) << options.overlay_json;
    chmod(daemon->overlay_path_.c_str(), 0600);
    args.push_back("--config");
    args.push_back(daemon->overlay_path_);
  }

  int out_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) {
    *error = "pipe failed";
    return nullptr;
  }
  const std::string log_path = daemon->root_ + "/stderr.log";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, log_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0600);
  std::vector<char*> argv;
  for (auto& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  const int spawned =
      posix_spawn(&daemon->pid_, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(out_pipe[1]);
  if (spawned != 0) {
    close(out_pipe[0]);
    *error = std::string("posix_spawn ") + VECSEALD_PATH + ": " + std::strerror(spawned);
    daemon->pid_ = -1;
    return nullptr;
  }

  std::string output;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kReadyDeadlineMs);
  const std::string marker = "vecseald ready: socket ";
  while (output.find('\n', output.find(marker)) == std::string::npos ||
         output.find(marker) == std::string::npos) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd poll_fd{.fd = out_pipe[0], .events = POLLIN, .revents = 0};
    if (left.count() <= 0 || poll(&poll_fd, 1, static_cast<int>(left.count())) <= 0) break;
    char buffer[512];
    const ssize_t n = read(out_pipe[0], buffer, sizeof(buffer));
    if (n <= 0) break;
    output.append(buffer, static_cast<size_t>(n));
  }
  close(out_pipe[0]);
  const size_t at = output.find(marker);
  if (at == std::string::npos) {
    *error = "vecseald did not become ready; stdout: " + output + "\nstderr: " + ReadFile(log_path);
    return nullptr;  // the destructor stops the process
  }
  const size_t start = at + marker.size();
  daemon->socket_path_ = output.substr(start, output.find('\n', start) - start);
  return daemon;
}

DevDaemon::~DevDaemon() {
  if (pid_ > 0) Stop();
  if (!root_.empty()) {
    ClearAppendOnly(root_);
    std::error_code ignored;
    std::filesystem::remove_all(root_, ignored);
  }
}

void DevDaemon::Signal(int signal_number) const {
  if (pid_ > 0) kill(pid_, signal_number);
}

int DevDaemon::Stop() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

std::string DevDaemon::Log() const { return ReadFile(root_ + "/stderr.log"); }

std::vector<nlohmann::json> DevDaemon::AuditRecords() const {
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(state_dir_ + "/audit")) {
    if (entry.path().extension() == ".jsonl") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  std::vector<nlohmann::json> records;
  for (const auto& file : files) {
    std::istringstream lines(ReadFile(file.string()));
    std::string line;
    while (std::getline(lines, line)) {
      auto record = nlohmann::json::parse(line, nullptr, false);
      if (!record.is_discarded()) records.push_back(std::move(record));
    }
  }
  return records;
}

nlohmann::json HttpResult::Json() const { return nlohmann::json::parse(body, nullptr, false); }

std::string HttpResult::ErrorCode() const {
  const auto json = Json();
  if (!json.is_object() || !json.contains("error")) return "";
  return json["error"].value("code", "");
}

struct HttpClient::Impl {
  explicit Impl(std::string path) : socket_path(std::move(path)), socket(io) {}
  std::string socket_path;
  asio::io_context io;
  asio::local::stream_protocol::socket socket;
  beast::flat_buffer buffer;
};

HttpClient::HttpClient(std::string socket_path)
    : impl_(std::make_unique<Impl>(std::move(socket_path))) {}
HttpClient::~HttpClient() = default;

HttpResult HttpClient::Send(const HttpCall& call) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    boost::system::error_code ec;
    if (!impl_->socket.is_open()) {
      impl_->buffer.clear();
      impl_->socket.connect(asio::local::stream_protocol::endpoint(impl_->socket_path), ec);
      if (ec) return HttpResult{};
    }
    http::request<http::string_body> request(http::string_to_verb(call.method), call.target, 11);
    request.set(http::field::host, "localhost");
    if (!call.content_type.empty()) request.set(http::field::content_type, call.content_type);
    for (const auto& [name, value] : call.headers) request.set(name, value);
    request.body() = call.body;
    request.prepare_payload();
    // A connection refused at accept is answered and closed before the request is read, so the
    // write may fail (EPIPE) while the answer waits to be read: read it all the same.
    boost::system::error_code write_ec;
    http::write(impl_->socket, request, write_ec);
    http::response_parser<http::string_body> parser;
    parser.body_limit(boost::none);
    http::read(impl_->socket, impl_->buffer, parser, ec);
    if (ec) {
      // A keep-alive connection the daemon closed: retry once on a fresh one.
      impl_->socket.close(ec);
      continue;
    }
    auto response = parser.release();
    HttpResult result;
    result.status = response.result_int();
    for (const auto& field : response) {
      result.headers[Lower(std::string(field.name_string()))] = std::string(field.value());
    }
    result.body = std::move(response.body());
    if (!response.keep_alive()) impl_->socket.close(ec);
    return result;
  }
  return HttpResult{};
}

HttpResult HttpClient::Get(const std::string& target) {
  return Send(HttpCall{.method = "GET", .target = target, .body = {}, .content_type = {},
                       .headers = {}});
}

HttpResult HttpClient::PostJson(const std::string& target, const nlohmann::json& body) {
  return Send(HttpCall{.method = "POST", .target = target, .body = body.dump(),
                       .content_type = "application/json", .headers = {}});
}

HttpResult HttpClient::PostBinary(const std::string& target, const std::string& body,
                                  std::map<std::string, std::string> headers) {
  return Send(HttpCall{.method = "POST", .target = target, .body = body,
                       .content_type = "application/octet-stream",
                       .headers = std::move(headers)});
}

int ConnectUnix(const std::string& socket_path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, socket_path.c_str(), sizeof(address.sun_path) - 1);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    const int connect_errno = errno;  // for the caller, e.g. to retry ECONNREFUSED
    close(fd);
    errno = connect_errno;
    return -1;
  }
  return fd;
}

std::string ReadToEof(int fd) {
  std::string data;
  char buffer[4096];
  for (;;) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    data.append(buffer, static_cast<size_t>(n));
  }
  return data;
}

unsigned StatusOf(const std::string& raw) {
  if (raw.rfind("HTTP/1.1 ", 0) != 0 || raw.size() < 12) return 0;
  return static_cast<unsigned>(std::stoul(raw.substr(9, 3)));
}

std::string FloatsToBytes(const std::vector<float>& values) {
  static_assert(std::endian::native == std::endian::little, "tests assume a little-endian host");
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

std::vector<float> BytesToFloats(const std::string& bytes, size_t count) {
  std::vector<float> values(count);
  std::memcpy(values.data(), bytes.data(), std::min(bytes.size(), count * sizeof(float)));
  return values;
}

}  // namespace vecseal::daemon::testing
