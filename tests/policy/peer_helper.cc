// A real peer for the identity tests.
//   peer_helper connect SOCKET [PROGRAM ARGS...]
//     Connects, sends 'A', waits for one byte from the server, then either execs PROGRAM (the
//     socket stays open across exec, its fd number in VECSEAL_TEST_FD) or holds the connection.
//   peer_helper hold
//     Sends 'R' on fd $VECSEAL_TEST_FD and holds the connection until the server closes it.
//   peer_helper again
//     Connects to $VECSEAL_TEST_SOCKET like `connect`, then execs itself with the very same
//     arguments; the second run finds $VECSEAL_TEST_FD set and holds like `hold`.
//   peer_helper ANYTHING-ELSE (with $VECSEAL_TEST_SOCKET set)
//     Connects to $VECSEAL_TEST_SOCKET and holds: the helper copied as "python3" and run with a
//     script path as its first argument, an impostor interpreter.
// With $VECSEAL_TEST_DLOPEN set, it first dlopens that library, as a plugin loader would.
#include <dlfcn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

// Under LeakSanitizer: this helper is exec'd setuid and as other uids, which makes it not
// dumpable, so LeakSanitizer cannot stop its threads at exit and reports that instead of leaks
// (it allocates nothing worth checking).
extern "C" int __lsan_is_turned_off() { return 1; }

namespace {

int Hold(int fd, char greeting) {
  if (write(fd, &greeting, 1) != 1) return 3;
  char byte;
  while (read(fd, &byte, 1) > 0) {
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "hold") == 0) {
    const char* fd_text = std::getenv("VECSEAL_TEST_FD");
    if (fd_text == nullptr) return 2;
    return Hold(std::atoi(fd_text), 'R');
  }
  if (const char* library = std::getenv("VECSEAL_TEST_DLOPEN");
      library != nullptr && dlopen(library, RTLD_NOW) == nullptr) {
    return 5;
  }
  bool again = argc == 2 && std::strcmp(argv[1], "again") == 0;
  bool impostor = argc >= 2 && !again && std::strcmp(argv[1], "connect") != 0 &&
                  std::getenv("VECSEAL_TEST_SOCKET") != nullptr;
  if (again && std::getenv("VECSEAL_TEST_FD") != nullptr) {
    return Hold(std::atoi(std::getenv("VECSEAL_TEST_FD")), 'R');
  }
  const char* socket_path =
      again || impostor ? std::getenv("VECSEAL_TEST_SOCKET") : argc >= 3 ? argv[2] : "";
  if (socket_path == nullptr ||
      (!again && !impostor && (argc < 3 || std::strcmp(argv[1], "connect") != 0))) {
    std::fprintf(stderr, "usage: peer_helper connect SOCKET [PROGRAM ARGS...] | hold | again\n");
    return 2;
  }
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);  // no SOCK_CLOEXEC: it must survive exec
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_path, sizeof addr.sun_path - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return 3;
  char byte = 'A';
  if (write(fd, &byte, 1) != 1) return 3;
  if (read(fd, &byte, 1) != 1) return 0;
  if (impostor || (!again && argc == 3)) return Hold(fd, 'R');
  std::string fd_text = std::to_string(fd);
  setenv("VECSEAL_TEST_FD", fd_text.c_str(), 1);
  if (again) {
    execv("/proc/self/exe", argv);
  } else {
    execv(argv[3], argv + 3);
  }
  return 4;
}
