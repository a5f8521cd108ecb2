// A real `vecseald --dev` process for tests, and a small HTTP/1.1 client over its Unix socket.
#pragma once

#include <sys/types.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace vecseal::daemon::testing {

struct DevDaemonOptions {
  std::string overlay_json;  // written to a file and passed as --config; empty: none
};

class DevDaemon {
 public:
  // Starts the daemon and waits for its "vecseald ready" line. On failure returns null and
  // fills `error` (including the daemon's stderr).
  static std::unique_ptr<DevDaemon> Start(const DevDaemonOptions& options, std::string* error);
  ~DevDaemon();

  const std::string& socket_path() const { return socket_path_; }
  const std::string& state_dir() const { return state_dir_; }
  const std::string& root() const { return root_; }
  const std::string& overlay_path() const { return overlay_path_; }
  pid_t pid() const { return pid_; }

  void Signal(int signal_number) const;
  // SIGTERM, then the exit status (or 128+signal).
  int Stop();
  // Whatever the daemon wrote to stderr so far.
  std::string Log() const;
  // Every record of the audit log, parsed.
  std::vector<nlohmann::json> AuditRecords() const;

 private:
  DevDaemon() = default;

  std::string root_;
  std::string state_dir_;
  std::string socket_path_;
  std::string overlay_path_;
  pid_t pid_ = -1;
};

struct HttpResult {
  unsigned status = 0;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
  nlohmann::json Json() const;
  std::string ErrorCode() const;  // body's error.code, or "" when not an error body
};

struct HttpCall {
  std::string method = "GET";
  std::string target;
  std::string body;
  std::string content_type;  // empty: no Content-Type header
  std::map<std::string, std::string> headers;
};

// One keep-alive connection; reconnects when the daemon closed it.
class HttpClient {
 public:
  explicit HttpClient(std::string socket_path);
  ~HttpClient();
  HttpResult Send(const HttpCall& call);
  HttpResult Get(const std::string& target);
  HttpResult PostJson(const std::string& target, const nlohmann::json& body);
  HttpResult PostBinary(const std::string& target, const std::string& body,
                        std::map<std::string, std::string> headers);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A connected raw socket, for clients that misbehave on purpose. -1 on failure.
int ConnectUnix(const std::string& socket_path);
// Reads until EOF.
std::string ReadToEof(int fd);
// Status code of the first HTTP response in `raw`, 0 when none.
unsigned StatusOf(const std::string& raw);

// n×d float32 little-endian bytes, and back.
std::string FloatsToBytes(const std::vector<float>& values);
std::vector<float> BytesToFloats(const std::string& bytes, size_t count);

}  // namespace vecseal::daemon::testing
