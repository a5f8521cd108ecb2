// GCC 12 reports a -Wnull-dereference false positive inside Boost.Asio 1.74's scheduler once it
// is inlined here; the pragma must precede the includes to cover the inlined code.
#pragma GCC diagnostic ignored "-Wnull-dereference"

#include "support/http_client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

namespace vecseal::daemon::testing {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string Lower(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

}  // namespace

nlohmann::json HttpResult::Json() const { return nlohmann::json::parse(body, nullptr, false); }

std::string HttpResult::ErrorCode() const {
  const auto json = Json();
  if (!json.is_object() || !json.contains("error")) return "";
  return json["error"].value("code", "");
}

struct HttpClient::Impl {
  explicit Impl(std::string path) : socket_path(std::move(path)), socket(io) {}
  std::string socket_path;
  asio::io_context io;
  asio::local::stream_protocol::socket socket;
  beast::flat_buffer buffer;
};

HttpClient::HttpClient(std::string socket_path)
    : impl_(std::make_unique<Impl>(std::move(socket_path))) {}
HttpClient::~HttpClient() = default;

HttpResult HttpClient::Send(const HttpCall& call) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    boost::system::error_code ec;
    if (!impl_->socket.is_open()) {
      impl_->buffer.clear();
      impl_->socket.connect(asio::local::stream_protocol::endpoint(impl_->socket_path), ec);
      if (ec) return HttpResult{};
    }
    http::request<http::string_body> request(http::string_to_verb(call.method), call.target, 11);
    request.set(http::field::host, "localhost");
    if (!call.content_type.empty()) request.set(http::field::content_type, call.content_type);
    for (const auto& [name, value] : call.headers) request.set(name, value);
    request.body() = call.body;
    request.prepare_payload();
    // A connection refused at accept is answered and closed before the request is read, so the
    // write may fail (EPIPE) while the answer waits to be read: read it all the same.
    boost::system::error_code write_ec;
    http::write(impl_->socket, request, write_ec);
    http::response_parser<http::string_body> parser;
    parser.body_limit(boost::none);
    http::read(impl_->socket, impl_->buffer, parser, ec);
    if (ec) {
      // A keep-alive connection the daemon closed: retry once on a fresh one.
      impl_->socket.close(ec);
      continue;
    }
    auto response = parser.release();
    HttpResult result;
    result.status = response.result_int();
    for (const auto& field : response) {
      result.headers[Lower(std::string(field.name_string()))] = std::string(field.value());
    }
    result.body = std::move(response.body());
    if (!response.keep_alive()) impl_->socket.close(ec);
    return result;
  }
  return HttpResult{};
}

HttpResult HttpClient::Get(const std::string& target) {
  return Send(HttpCall{.method = "GET", .target = target, .body = {}, .content_type = {},
                       .headers = {}});
}

HttpResult HttpClient::PostJson(const std::string& target, const nlohmann::json& body) {
  return Send(HttpCall{.method = "POST", .target = target, .body = body.dump(),
                       .content_type = "application/json", .headers = {}});
}

HttpResult HttpClient::PostBinary(const std::string& target, const std::string& body,
                                  std::map<std::string, std::string> headers) {
  return Send(HttpCall{.method = "POST", .target = target, .body = body,
                       .content_type = "application/octet-stream",
                       .headers = std::move(headers)});
}

int ConnectUnix(const std::string& socket_path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, socket_path.c_str(), sizeof(address.sun_path) - 1);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    const int connect_errno = errno;  // for the caller, e.g. to retry ECONNREFUSED
    close(fd);
    errno = connect_errno;
    return -1;
  }
  return fd;
}

std::string ReadToEof(int fd) {
  std::string data;
  char buffer[4096];
  for (;;) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    data.append(buffer, static_cast<size_t>(n));
  }
  return data;
}

unsigned StatusOf(const std::string& raw) {
  if (raw.rfind("HTTP/1.1 ", 0) != 0 || raw.size() < 12) return 0;
  return static_cast<unsigned>(std::stoul(raw.substr(9, 3)));
}

std::string FloatsToBytes(const std::vector<float>& values) {
  static_assert(std::endian::native == std::endian::little, "tests assume a little-endian host");
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

std::vector<float> BytesToFloats(const std::string& bytes, size_t count) {
  std::vector<float> values(count);
  std::memcpy(values.data(), bytes.data(), std::min(bytes.size(), count * sizeof(float)));
  return values;
}

std::vector<nlohmann::json> ReadAuditRecords(const std::string& dir) {
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() == ".jsonl") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  std::vector<nlohmann::json> records;
  for (const auto& file : files) {
    std::istringstream lines(ReadWholeFile(file.string()));
    std::string line;
    while (std::getline(lines, line)) {
      auto record = nlohmann::json::parse(line, nullptr, false);
      if (!record.is_discarded()) records.push_back(std::move(record));
    }
  }
  return records;
}

}  // namespace vecseal::daemon::testing
