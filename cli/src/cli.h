// The `vecseal` command: argument handling and the commands over vecseal::client.
#pragma once

#include <atomic>
#include <ostream>
#include <span>
#include <string>

#include "vecseal/core/status.h"

namespace vecseal::cli {

// Exit codes, listed by `vecseal --help` and docs/cli.md. `vecseal audit` and `vecseal
// calibrate` return their own modules' codes.
enum ExitCode : int {
  kExitOk = 0,
  kExitFailure = 1,       // anything not below (a bug, an unexpected daemon answer)
  kExitUsage = 2,         // bad command line
  kExitUnreachable = 3,   // cannot reach vecseald (socket missing, refused, timeout, lost)
  kExitDenied = 4,        // the policy grants no such operation to this caller
  kExitBadInput = 5,      // a file or vector was rejected (format, dimension, value, token)
  kExitNoKey = 6,         // no such key, or it already exists
  kExitUnavailable = 7,   // vecseald is up but cannot serve (HSM or audit log down, busy)
  kExitFileError = 8,     // a local file cannot be read or written
  kExitInterrupted = 130, // SIGINT/SIGTERM: outputs removed
};

ExitCode ExitCodeFor(const Status& status);
// The single line printed for an error (without "vecseal: "), with a hint where one helps.
std::string ErrorLine(const Status& status);

// `args` excludes the program name. `interrupted` is polled between batches; when it becomes
// true the command stops, removes its temporary outputs and returns kExitInterrupted.
int Run(std::span<const std::string> args, std::ostream& out, std::ostream& err,
        const std::atomic<bool>& interrupted);

}  // namespace vecseal::cli
