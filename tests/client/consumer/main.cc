// Writes and reads back a .npy file, then tries the daemon at argv[2]: prints one line per step.
#include <iostream>

#include "vecseal/client/client.h"
#include "vecseal/client/formats.h"

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  const vecseal::client::Matrix m{2, 3, {1, 2, 3, 4, 5, 6}};
  if (!vecseal::client::WriteMatrix(argv[1], m).ok()) return 1;
  auto back = vecseal::client::ReadMatrix(argv[1]);
  if (!back.ok() || back->data != m.data) return 1;
  std::cout << "formats ok\n";
  vecseal::client::ClientOptions options;
  options.socket_path = argv[2];
  auto client = vecseal::client::Client::Connect(options);
  std::cout << (client.ok() ? "connected" : client.status().ToString()) << "\n";
  return 0;
}
