// The one table between error codes and HTTP statuses (docs/api.md, "Errors"). The daemon reads
// it from error to status (HttpStatusFor), the client from status back to a typed error
// (CodeForHttpStatus), so the two cannot drift apart.
#pragma once

#include <string_view>

#include "vecseal/core/status.h"

namespace vecseal::wire {

struct CodeStatus {
  Code code;
  unsigned http_status;
};

struct ReasonStatus {
  std::string_view reason;
  unsigned http_status;
};

// Read by first match both ways: a Code's status is that of its first row, and a status's Code
// (what the client reports) that of the first row with the status. The first block gives each
// error Code its status; the second, statuses that only reasons (kReasonStatuses) produce.
inline constexpr CodeStatus kCodeStatuses[] = {
    {Code::kInvalidArgument, 400},      {Code::kAuthenticationFailed, 400},
    {Code::kPermissionDenied, 403},     {Code::kNotFound, 404},
    {Code::kAlreadyExists, 409},        {Code::kFailedPrecondition, 409},
    {Code::kResourceExhausted, 413},    {Code::kUnavailable, 503},
    {Code::kInternal, 500},
    {Code::kInvalidArgument, 405},      {Code::kUnavailable, 408},
    {Code::kInvalidArgument, 411},      {Code::kInvalidArgument, 415},
    {Code::kResourceExhausted, 429},    {Code::kInternal, 431},
    {Code::kInternal, 501},
};

// Reasons whose status is not their Code's: a row here wins over kCodeStatuses.
inline constexpr ReasonStatus kReasonStatuses[] = {
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

// The HTTP status of an answer with `code` and `reason`: 200 for kOk.
unsigned HttpStatusFor(Code code, std::string_view reason);

// The Code a client reports for an error answer with `http_status`; kInternal for a status the
// API does not answer errors with.
Code CodeForHttpStatus(unsigned http_status);

}  // namespace vecseal::wire
