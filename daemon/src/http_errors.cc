// Errors as HTTP answers: the status from wire/'s table, and the JSON body of docs/api.md.

#include <boost/beast/http/field.hpp>
#include <nlohmann/json.hpp>

#include "vecseal/daemon/http_server.h"
#include "vecseal/wire/http_status.h"

namespace vecseal::daemon {
namespace http = boost::beast::http;

unsigned HttpStatusFor(const Status& status) {
  return wire::HttpStatusFor(status.code(), status.reason());
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
