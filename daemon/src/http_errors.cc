// The one table from Status to HTTP status. A reason listed here wins over its code's default.
#include <string_view>

#include <boost/beast/http/field.hpp>
#include <nlohmann/json.hpp>

#include "vecseal/daemon/http_server.h"

namespace vecseal::daemon {
namespace {

namespace http = boost::beast::http;

struct ReasonStatus {
  std::string_view reason;
  unsigned http_status;
};

constexpr ReasonStatus kReasonTable[] = {
    {"method_not_allowed", 405},   {"length_required", 411},
    {"request_timeout", 408},      {"body_too_large", 413},
    {"too_many_vectors", 413},     {"unsupported_media_type", 415},
    {"header_too_large", 431},     {"too_many_connections", 503},
    {"key_not_found", 404},        {"not_found", 404},
    {"too_many_connections_for_user", 503},
    {"body_memory_exhausted", 503},
    {"unsupported_transfer_coding", 501},
    {"derivation_rate_limited", 429},
    {"budget_exhausted", 429},
    {"budget_unavailable", 503},
};

unsigned DefaultFor(Code code) {
  switch (code) {
    case Code::kOk: return 200;
    case Code::kInvalidArgument: return 400;
    case Code::kAuthenticationFailed: return 400;
    case Code::kPermissionDenied: return 403;
    case Code::kNotFound: return 404;
    case Code::kAlreadyExists: return 409;
    case Code::kFailedPrecondition: return 409;
    case Code::kResourceExhausted: return 413;
    case Code::kUnavailable: return 503;
    case Code::kInternal: return 500;
  }
  return 500;
}

}  // namespace

unsigned HttpStatusFor(const Status& status) {
  for (const auto& entry : kReasonTable) {
    if (entry.reason == status.reason()) return entry.http_status;
  }
  return DefaultFor(status.code());
}

HttpResponse ErrorResponse(const Status& status, unsigned version) {
  nlohmann::json error = {{"code", status.ok() ? "internal" : status.reason()},
                          {"message", status.ok() ? "error reported without a cause"
                                                  : status.message()}};
  if (status.vector_index()) error["vector_index"] = *status.vector_index();
  HttpResponse response(static_cast<http::status>(status.ok() ? 500 : HttpStatusFor(status)),
                        version);
  response.set(http::field::content_type, "application/json");
  response.body().text = nlohmann::json{{"error", std::move(error)}}.dump(
      -1, ' ', false, nlohmann::json::error_handler_t::replace);
  response.body().text += '\n';
  response.prepare_payload();
  return response;
}

}  // namespace vecseal::daemon
