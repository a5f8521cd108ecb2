// Stand-in for `vecseal calibrate` until the CLI's main dispatches to it: same arguments, same
// exit codes.
#include <iostream>
#include <string>
#include <vector>

#include "calibrate_command.h"

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  return vecseal::calibrate::RunCalibrateCommand(args, std::cout, std::cerr);
}
