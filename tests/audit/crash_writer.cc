// A child process for the kill -9 test: appends audit records from several threads until it is
// killed. Usage: audit_crash_writer DIR PRIVATE_KEY_PEM_FILE
#include <cstdio>
#include <thread>
#include <vector>

#include "support/audit_test_util.h"
#include "support/software_signer.h"
#include "vecseal/audit/log.h"

int main(int argc, char** argv) {
  using namespace vecseal::audit;
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s DIR KEY.pem\n", argv[0]);
    return 2;
  }
  auto signer = testing::SoftwareSigner::FromPrivatePem(testing::ReadFileText(argv[2]));
  if (!signer) return 2;
  LogOptions options = testing::TestOptions(argv[1]);
  options.rotate_bytes = 32 << 10;
  options.seal_every_records = 50;
  options.sync_interval = std::chrono::milliseconds(1);
  auto log = Log::Open(options, signer);
  if (!log.ok()) {
    std::fprintf(stderr, "%s\n", log.status().ToString().c_str());
    return 1;
  }
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&log, t] {
      for (int i = 0;; ++i) {
        if (!(*log)->Append(testing::SampleEvent(t * 1000000 + i)).ok()) std::_Exit(1);
      }
    });
  }
  for (auto& thread : threads) thread.join();
}
