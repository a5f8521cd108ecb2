#include "vecseal/wire/http_status.h"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

namespace vecseal::wire {
namespace {

constexpr Code kErrorCodes[] = {
    Code::kInvalidArgument, Code::kAuthenticationFailed, Code::kPermissionDenied,
    Code::kNotFound,        Code::kAlreadyExists,        Code::kFailedPrecondition,
    Code::kResourceExhausted, Code::kUnavailable,        Code::kInternal};

TEST(WireHttpStatus, EachCodeHasItsStatus) {
  const std::map<Code, unsigned> expected = {
      {Code::kInvalidArgument, 400},   {Code::kAuthenticationFailed, 400},
      {Code::kPermissionDenied, 403},  {Code::kNotFound, 404},
      {Code::kAlreadyExists, 409},     {Code::kFailedPrecondition, 409},
      {Code::kResourceExhausted, 413}, {Code::kUnavailable, 503},
      {Code::kInternal, 500}};
  ASSERT_EQ(expected.size(), std::size(kErrorCodes));
  for (const auto& [code, status] : expected) {
    EXPECT_EQ(HttpStatusFor(code, "some_reason"), status) << static_cast<int>(code);
  }
  EXPECT_EQ(HttpStatusFor(Code::kOk, ""), 200u);
}

TEST(WireHttpStatus, AReasonOfTheTableWinsOverItsCode) {
  EXPECT_EQ(HttpStatusFor(Code::kResourceExhausted, "request_timeout"), 408u);
  EXPECT_EQ(HttpStatusFor(Code::kResourceExhausted, "too_many_connections"), 503u);
  EXPECT_EQ(HttpStatusFor(Code::kResourceExhausted, "derivation_rate_limited"), 429u);
  EXPECT_EQ(HttpStatusFor(Code::kPermissionDenied, "budget_exhausted"), 429u);
  EXPECT_EQ(HttpStatusFor(Code::kInvalidArgument, "unsupported_transfer_coding"), 501u);
  for (const ReasonStatus& row : kReasonStatuses) {
    for (Code code : kErrorCodes) EXPECT_EQ(HttpStatusFor(code, row.reason), row.http_status);
  }
}

TEST(WireHttpStatus, EachStatusHasTheClientsCode) {
  const std::map<unsigned, Code> expected = {
      {400, Code::kInvalidArgument},   {403, Code::kPermissionDenied},
      {404, Code::kNotFound},          {405, Code::kInvalidArgument},
      {408, Code::kUnavailable},       {409, Code::kAlreadyExists},
      {411, Code::kInvalidArgument},   {413, Code::kResourceExhausted},
      {415, Code::kInvalidArgument},   {429, Code::kResourceExhausted},
      {431, Code::kInternal},          {500, Code::kInternal},
      {501, Code::kInternal},          {503, Code::kUnavailable}};
  for (const auto& [status, code] : expected) {
    EXPECT_EQ(CodeForHttpStatus(status), code) << status;
  }
  for (unsigned status : {0u, 200u, 201u, 302u, 418u, 502u, 999u}) {
    EXPECT_EQ(CodeForHttpStatus(status), Code::kInternal) << status;
  }
}

TEST(WireHttpStatus, TableIsComplete) {
  std::set<unsigned> client_statuses;
  for (const CodeStatus& row : kCodeStatuses) client_statuses.insert(row.http_status);
  // Every error Code has a status, and the client reads it back as a Code of that status.
  for (Code code : kErrorCodes) {
    const unsigned status = HttpStatusFor(code, "");
    EXPECT_TRUE(client_statuses.count(status)) << static_cast<int>(code);
    EXPECT_EQ(HttpStatusFor(CodeForHttpStatus(status), ""), status) << static_cast<int>(code);
  }
  // Every status a reason produces is one the client maps on purpose.
  for (const ReasonStatus& row : kReasonStatuses) {
    EXPECT_TRUE(client_statuses.count(row.http_status)) << row.reason;
  }
}

// docs/api.md's error table ("| 404 | `key_not_found` | ...") agrees with the table: each reason
// listed here has its documented status, and each documented status is one the client maps.
TEST(WireHttpStatus, AgreesWithTheApiDocsErrorTable) {
  std::ifstream file(std::string(VECSEAL_SOURCE_DIR) + "/docs/api.md");
  ASSERT_TRUE(file.good());
  std::stringstream text;
  text << file.rdbuf();
  const std::string docs = text.str();
  std::map<std::string, unsigned> documented;
  const std::regex table_row(R"(\n\| (\d{3}) \| ((?:`[a-z_]+`(?:, )?)+) \|)");
  const std::regex code_name("`([a-z_]+)`");
  for (auto it = std::sregex_iterator(docs.begin(), docs.end(), table_row); it != std::sregex_iterator();
       ++it) {
    const unsigned status = static_cast<unsigned>(std::stoul((*it)[1].str()));
    const std::string codes = (*it)[2].str();
    for (auto c = std::sregex_iterator(codes.begin(), codes.end(), code_name);
         c != std::sregex_iterator(); ++c) {
      documented[(*c)[1].str()] = status;
    }
  }
  ASSERT_GT(documented.size(), 30u);
  std::set<unsigned> client_statuses;
  for (const CodeStatus& row : kCodeStatuses) client_statuses.insert(row.http_status);
  for (const auto& [reason, status] : documented) {
    EXPECT_TRUE(client_statuses.count(status)) << reason << " " << status;
  }
  for (const ReasonStatus& row : kReasonStatuses) {
    ASSERT_TRUE(documented.count(std::string(row.reason))) << row.reason << " is not documented";
    EXPECT_EQ(documented[std::string(row.reason)], row.http_status) << row.reason;
  }
}

}  // namespace
}  // namespace vecseal::wire
