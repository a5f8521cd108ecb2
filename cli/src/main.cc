// vecseal: the command-line client of vecseald (docs/cli.md).
#include <signal.h>

#include <atomic>
#include <iostream>
#include <string>
#include <vector>

#include "cli.h"

namespace {

std::atomic<bool> interrupted{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the signal handler needs a lock-free flag");

void OnSignal(int) { interrupted.store(true); }

}  // namespace

int main(int argc, char** argv) {
  // No SA_RESTART: a blocking wait returns early, and the command stops at the next batch,
  // removing its temporary outputs instead of dying with them on disk.
  struct sigaction action {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  for (int signal : {SIGINT, SIGTERM, SIGHUP}) sigaction(signal, &action, nullptr);

  const std::vector<std::string> args(argv + 1, argv + argc);
  return vecseal::cli::Run(args, std::cout, std::cerr, interrupted);
}
