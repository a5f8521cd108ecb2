// The C++ client of vecseald's HTTP API v1 over its Unix socket (docs/cli.md, "Library").
//
//   auto client = vecseal::client::Client::Connect({});        // $VECSEAL_SOCKET or the default
//   if (!client.ok()) { ...client.status().message()... }
//   auto sealed = (*client)->Encrypt("support-v1", vectors, 768);
//
// Vectors travel in the binary form (little-endian float32) on one keep-alive connection. Plain
// POSIX sockets and a small HTTP/1.1 reader: a service that links this library does not inherit
// Boost. A Client is one connection and is not thread-safe; use one per thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "vecseal/core/status.h"

namespace vecseal::client {

inline constexpr std::string_view kDefaultSocketPath = "/run/vecseal/vecseald.sock";
inline constexpr size_t kTokenSize = 41;

// `explicit_path` if non-empty, else $VECSEAL_SOCKET if set and non-empty, else the default.
std::string ResolveSocketPath(std::string_view explicit_path = {});

enum class Wire : uint8_t { kBinary, kJson };

struct ClientOptions {
  std::string socket_path;  // empty: ResolveSocketPath()
  // Bounds every wait for the daemon (connect, each send and receive), so a wedged daemon
  // yields an error instead of a hang.
  std::chrono::milliseconds timeout{60000};
  Wire wire = Wire::kBinary;  // JSON exists for comparison and debugging
  // When set and true, a wait interrupted by a signal gives up with reason "interrupted"
  // instead of waiting on (the CLI sets it from SIGINT/SIGTERM).
  const std::atomic<bool>* cancel = nullptr;
};

struct HttpResponse {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  std::string body;

  std::optional<std::string_view> Header(std::string_view lower_case_name) const;
};

struct EncryptResult {
  uint32_t key_version = 0;
  size_t dimension = 0;
  std::vector<float> vectors;   // n × dimension
  std::vector<uint8_t> tokens;  // n × kTokenSize when reversible, else empty
};

struct DecryptResult {
  uint32_t key_version = 0;
  size_t dimension = 0;
  std::vector<float> vectors;
};

struct KeyInfo {
  std::string name;
  uint32_t version = 0;
  std::vector<uint32_t> versions;
  double approximation_factor = 0;
  std::string transform;  // "rotate" | "permute"
  std::optional<size_t> dimension;
  std::string created;  // RFC 3339, UTC
  // The newest version's ciphertext format (1 or 2) and derivation ("hmac" or "aes"), and the
  // format of each of `versions`; a daemon older than format v2 reports none (0, "", empty).
  int format = 0;
  std::string derivation;
  std::vector<int> formats;
  // From GetKey and ConfigureKey only (0 and empty from ListKeys, CreateKey, RotateKey): the
  // key's minimum versions and, for each of `versions`, "active", "decrypt_only" or "retired".
  uint32_t min_encryption_version = 0;
  uint32_t min_decryption_version = 0;
  std::vector<std::string> states;
};

struct KeySpec {
  std::string name;
  double approximation_factor = 0;
  std::string transform = "rotate";
  std::optional<size_t> dimension;
  std::string derivation;  // "aes" or "hmac"; empty: the daemon's derivation.new_keys
};

// Errors. The daemon's error body becomes the Status: its "code" is the reason, its "message"
// the message, its "vector_index" the vector index, and the HTTP status picks the Code.
// Transport failures have these reasons:
//   connect_failed   the socket is missing, refused or not permitted (the message says which)
//   daemon_timeout   no progress within ClientOptions::timeout
//   connection_lost  the daemon closed the connection mid-response
//   bad_response     the daemon answered something this client cannot parse
//   interrupted      ClientOptions::cancel became true during a wait
class Client {
 public:
  static Result<std::unique_ptr<Client>> Connect(ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  const std::string& socket_path() const { return options_.socket_path; }

  // `vectors` holds n × dimension floats; the daemon caps n per request (413 too_many_vectors),
  // so callers with large inputs send batches (the CLI sends --batch rows at a time).
  // `key_version` empty: the newest version. A model trained on vectors of one version needs
  // that version at inference, after a rotation too (docs/api.md, "Encrypt").
  Result<EncryptResult> Encrypt(std::string_view key, std::span<const float> vectors,
                                size_t dimension, bool reversible = false,
                                std::optional<uint32_t> key_version = std::nullopt);
  // Encrypt without allocating, for hot paths: the ciphertexts go to `out` (as many floats as
  // `vectors`; it may be `vectors` itself) and, when `tokens` is not empty, the encryption is
  // reversible and one kTokenSize token per vector goes there. Returns the key version.
  Result<uint32_t> EncryptInto(std::string_view key, std::span<const float> vectors,
                               size_t dimension, std::span<float> out,
                               std::span<uint8_t> tokens = {},
                               std::optional<uint32_t> key_version = std::nullopt);
  // `tokens` holds one kTokenSize token per vector, as Encrypt returned them.
  Result<DecryptResult> Decrypt(std::string_view key, std::span<const float> vectors,
                                size_t dimension, std::span<const uint8_t> tokens);

  Result<std::vector<KeyInfo>> ListKeys();
  Result<KeyInfo> CreateKey(const KeySpec& spec);
  Result<KeyInfo> RotateKey(std::string_view key);
  // GET /v1/keys/{name}: the key with its minimum versions and version states.
  Result<KeyInfo> GetKey(std::string_view key);
  // Sets the minimums given (docs/api.md, "Retiring versions"); one left empty keeps its value.
  Result<KeyInfo> ConfigureKey(std::string_view key,
                               std::optional<uint32_t> min_encryption_version,
                               std::optional<uint32_t> min_decryption_version);
  // Destroys every version of the key; `force` deletes it although the policy names it.
  // Returns the versions destroyed.
  Result<std::vector<uint32_t>> DeleteKey(std::string_view key, bool force = false);
  // Re-encrypts reversible ciphertexts (with their tokens, all of one version) under the key's
  // newest version inside the daemon: new ciphertexts and tokens, never the plaintext. Sent as
  // JSON whatever the wire.
  Result<EncryptResult> Rewrap(std::string_view key, std::span<const float> vectors,
                               size_t dimension, std::span<const uint8_t> tokens);

  // The raw JSON bodies of GET /v1/whoami and GET /v1/health. Health returns the body for 200
  // and for 503 alike (it names the failing part); other statuses are errors.
  Result<std::string> Whoami();
  Result<HttpResponse> Health();

  // Any request: for endpoints this class does not wrap. Non-2xx statuses are not errors here.
  Result<HttpResponse> Request(std::string_view method, std::string_view target,
                               std::string_view content_type, std::string_view body,
                               std::span<const std::pair<std::string, std::string>> headers = {});

 private:
  class Connection;
  // Where a response body of a known size goes instead of HttpResponse::body: `first`, then
  // `second` (vectors, then tokens).
  struct BodyTarget {
    std::span<char> first;
    std::span<char> second;
    size_t size() const { return first.size() + second.size(); }
  };
  explicit Client(ClientOptions options);
  Result<HttpResponse> Call(std::string_view method, std::string_view target,
                            std::string_view content_type, std::string_view body,
                            std::span<const std::pair<std::string, std::string>> headers,
                            const BodyTarget* response_target = nullptr);

  ClientOptions options_;
  std::unique_ptr<Connection> connection_;
};

// The Status for a non-2xx response: from its JSON error body when it has one.
Status StatusFromResponse(const HttpResponse& response);

}  // namespace vecseal::client
