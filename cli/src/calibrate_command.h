// `vecseal calibrate`: measures accuracy and leakage against β on the user's own vectors, under
// an ephemeral in-memory key (never a production key), and recommends a β.
#pragma once

#include <ostream>
#include <span>
#include <string>

namespace vecseal::calibrate {

// ARGS are those after "calibrate":
//   --sample S.npy [--labels L.npy|L.txt] [--queries Q.npy] [--betas 0.25,0.5,1,...]
//   [--transform rotate|permute] [--out PREFIX] [--seed N]
// Prints the table to `out`, writes PREFIX.json and PREFIX.svg (default PREFIX "report").
// Returns the process exit code: 0 done, 1 the data or files could not be used, 2 usage error.
// Every error is one line on `err`.
int RunCalibrateCommand(std::span<const std::string> args, std::ostream& out, std::ostream& err);

}  // namespace vecseal::calibrate
