#include <string>
#include <vector>

#include "vecseal/daemon/daemon.h"

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  return vecseal::daemon::Main(args);
}
