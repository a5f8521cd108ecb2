// A caller of vecseald that the security tests run as a real child process, under the uid, gids
// and cgroup the test gives it. It speaks just enough HTTP/1.1 to send vector requests.
//
//   security_caller request SOCKET KEY/ACTION [--then-exec PROGRAM]
//     Connects, sends one POST /v1/keys/KEY/ACTION (encrypt, decrypt) with a small vector body
//     and prints its answer. With --then-exec it then execs PROGRAM as
//     `PROGRAM on-fd FD KEY/ACTION`, keeping the connection open across exec.
//   security_caller on-fd FD KEY/ACTION
//     Prints "euid N" (a setuid image raises it), then sends the same request on the already
//     connected FD and prints its answer.
//   security_caller whoami SOCKET
//     Connects, asks GET /v1/whoami and prints the answer.
//   security_caller get SOCKET PATH
//     Connects, asks GET PATH (/metrics, say) and prints the answer, whose body may span lines.
//   security_caller connect SOCKET
//     Only connects; prints "connected" or the errno name (e.g. "EACCES"), exit 0 or 1.
//
// An answer is printed as one line: "STATUS REQUEST_ID BODY" (the daemon's bodies are one line).
// The tests' own HTTP client is not used here: this program must stay a small, separate image
// whose digest the policy pins.
#include <errno.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

constexpr char kBody[] = R"({"vectors": [[0.25, -0.5, 0.75]]})";

std::string Lower(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

int Connect(const char* path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);  // no SOCK_CLOEXEC: it may survive an exec
  if (fd < 0) return -1;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, path, sizeof(address.sun_path) - 1);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    const int error = errno;
    close(fd);
    errno = error;
    return -1;
  }
  return fd;
}

bool WriteAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// Header value of `name` (lower case) in the raw header block, or "".
std::string Header(const std::string& head, const std::string& name) {
  const std::string lower = Lower(head);
  const size_t at = lower.find("\r\n" + name + ":");
  if (at == std::string::npos) return "";
  size_t start = at + name.size() + 3;
  while (start < head.size() && head[start] == ' ') ++start;
  return head.substr(start, head.find("\r\n", start) - start);
}

std::string Post(const std::string& key_action) {
  const std::string body = kBody;
  return "POST /v1/keys/" + key_action + " HTTP/1.1\r\nHost: localhost\r\n" +
         "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\n\r\n" + body;
}

std::string Get(const std::string& path) {
  return "GET " + path + " HTTP/1.1\r\nHost: localhost\r\n\r\n";
}

// Sends one request and prints its answer; false when no complete answer came back.
bool Exchange(int fd, const std::string& request) {
  if (!WriteAll(fd, request)) return false;
  std::string data;
  char buffer[4096];
  size_t head_end = std::string::npos;
  size_t want = 0;
  for (;;) {
    if (head_end == std::string::npos) {
      head_end = data.find("\r\n\r\n");
      if (head_end != std::string::npos) {
        want = head_end + 4 + std::strtoul(Header(data, "content-length").c_str(), nullptr, 10);
      }
    }
    if (head_end != std::string::npos && data.size() >= want) break;
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.append(buffer, static_cast<size_t>(n));
  }
  if (data.rfind("HTTP/1.1 ", 0) != 0) return false;
  std::string answer = data.substr(head_end + 4, want - head_end - 4);
  while (!answer.empty() && answer.back() == '\n') answer.pop_back();
  std::printf("%s %s %s\n", data.substr(9, 3).c_str(), Header(data, "vecseal-request-id").c_str(),
              answer.c_str());
  std::fflush(stdout);
  return true;
}

int Usage() {
  std::fprintf(stderr,
               "usage: security_caller request SOCKET KEY/ACTION [--then-exec PROGRAM]\n"
               "       security_caller on-fd FD KEY/ACTION\n"
               "       security_caller connect SOCKET\n"
               "       security_caller whoami SOCKET\n"
               "       security_caller get SOCKET PATH\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return Usage();
  const std::string mode = argv[1];
  if (mode == "connect" && argc == 3) {
    const int fd = Connect(argv[2]);
    if (fd < 0) {
      std::printf("%s\n", strerrorname_np(errno));
      return 1;
    }
    std::printf("connected\n");
    return 0;
  }
  if (mode == "on-fd" && argc == 4) {
    std::printf("euid %u\n", static_cast<unsigned>(geteuid()));
    return Exchange(std::atoi(argv[2]), Post(argv[3])) ? 0 : 1;
  }
  if ((mode == "whoami" && argc == 3) || (mode == "get" && argc == 4)) {
    const int fd = Connect(argv[2]);
    return fd >= 0 && Exchange(fd, Get(mode == "get" ? argv[3] : "/v1/whoami")) ? 0 : 1;
  }
  const bool then_exec = argc == 6 && std::strcmp(argv[4], "--then-exec") == 0;
  if (mode != "request" || (argc != 4 && !then_exec)) return Usage();
  const int fd = Connect(argv[2]);
  if (fd < 0) {
    std::printf("connect %s\n", strerrorname_np(errno));
    return 1;
  }
  if (!Exchange(fd, Post(argv[3]))) return 1;
  if (!then_exec) return 0;
  const std::string fd_text = std::to_string(fd);
  char on_fd[] = "on-fd";
  char* next[] = {argv[5], on_fd, const_cast<char*>(fd_text.c_str()), argv[3], nullptr};
  execv(argv[5], next);
  std::printf("exec %s\n", strerrorname_np(errno));
  return 1;
}
