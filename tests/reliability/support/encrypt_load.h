// Encrypt requests on several connections until stopped, each outcome kept, so that a test can
// inject a fault mid-load and then check every single answer: what it was, that its audit record
// exists, and that its ciphertext is the right one.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

namespace vecseal::reliability {

struct Outcome {
  uint64_t seed = 0;  // the plaintext is Plaintext(seed, vectors)
  size_t vectors = 0;
  unsigned status = 0;  // 0: the connection failed (no HTTP answer)
  std::string code;     // the error body's code, if any
  std::string request_id;
  std::string body;  // a 200's: ciphertexts then tokens (reversible binary encrypt); else the error
};

inline constexpr size_t kDimension = 16;
inline constexpr size_t kTokenBytes = 41;

std::vector<float> Plaintext(uint64_t seed, size_t vectors);

class EncryptLoad {
 public:
  // `threads` connections, each sending reversible binary encrypts of 1..4 vectors of
  // kDimension to `key`, back to back; after an answer other than 200 a connection waits
  // `pause_after_error`, so that a fault lasting seconds does not fill the audit log with refusals.
  EncryptLoad(std::string socket_path, std::string key, size_t threads,
              std::chrono::milliseconds pause_after_error = std::chrono::milliseconds(0));
  ~EncryptLoad();  // Stop()

  void Stop();
  // Waits until `predicate` holds over the outcomes so far; false when `deadline` passed first
  // (a guard against a hang, never the expected path).
  bool WaitFor(const std::function<bool(const std::vector<Outcome>&)>& predicate,
               std::chrono::seconds deadline = std::chrono::seconds(120));
  // Waits for `n` more outcomes with `status` than there are now.
  bool WaitForMore(unsigned status, size_t n);
  std::vector<Outcome> Outcomes() const;

 private:
  void Run(size_t thread_index);

  std::string socket_path_;
  std::string key_;
  std::chrono::milliseconds pause_after_error_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mutex_;
  std::vector<Outcome> outcomes_;
  std::vector<std::thread> threads_;
};

size_t CountStatus(const std::vector<Outcome>& outcomes, unsigned status,
                   const std::string& code = "");

// Decrypts every 200 outcome's ciphertexts through the daemon with their tokens, in large
// batches, and returns a description of each one that does not give back its plaintext (empty:
// all correct). The decrypting daemon must be healthy.
std::vector<std::string> WrongCiphertexts(const std::string& socket_path, const std::string& key,
                                          const std::vector<Outcome>& outcomes);

// The request ids of 200 outcomes that have no encrypt record in `records` (empty: every
// vector returned has its record).
std::vector<std::string> ServedWithoutRecord(const std::vector<Outcome>& outcomes,
                                             const std::vector<nlohmann::json>& records);

}  // namespace vecseal::reliability
