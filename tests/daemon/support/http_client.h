// A small HTTP/1.1 client over a Unix socket, and raw-socket helpers, for tests of the daemon
// (a `vecseald --dev` process or the in-process harness).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace vecseal::daemon::testing {

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

// Every record of the audit files (*.jsonl) in `dir`, oldest file first, parsed.
std::vector<nlohmann::json> ReadAuditRecords(const std::string& dir);

}  // namespace vecseal::daemon::testing
