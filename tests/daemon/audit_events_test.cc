// The daemon's own audit records, read back from a real dev daemon's log: `start` (with the
// daemon's version), key creation and rotation (events named after their operations,
// `keys.create` and `keys.rotate`, as docs/audit.md lists them), a failed rotation, and `stop`
// followed by the final seal. Each record must hold what an auditor needs: who, which key and
// version, the decision and the rule. (That no endpoint serves the log is service_routes_test.cc.)
#include <unistd.h>

#include <climits>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support/dev_daemon.h"
#include "test_util.h"

namespace vecseal::daemon::testing {
namespace {

using nlohmann::json;

// The one record with this event (and, when given, this request id); null when there is none.
json Find(const std::vector<json>& records, const std::string& event,
          const std::string& request_id = "") {
  json found;
  for (const json& record : records) {
    if (record.value("event", "") != event) continue;
    if (!request_id.empty() && record.value("request_id", "") != request_id) continue;
    EXPECT_TRUE(found.is_null()) << "two '" << event << "' records: " << found << record;
    found = record;
  }
  return found;
}

std::string SelfExe() {
  char path[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
  return n > 0 ? std::string(path, static_cast<size_t>(n)) : "";
}

TEST(AuditEventsTest, StartKeyCreateRotateAndStopAreRecordedWithTheirFields) {
  std::string error;
  auto daemon = DevDaemon::Start(DevDaemonOptions{}, &error);
  ASSERT_NE(daemon, nullptr) << error;
  HttpClient client(daemon->socket_path());
  const auto health = client.Get("/v1/health");
  ASSERT_EQ(health.status, 200u) << health.body;
  const auto created =
      client.PostJson("/v1/keys", {{"name", "ratings"}, {"approximation_factor", 1.5}});
  ASSERT_EQ(created.status, 201u) << created.body;
  const HttpCall rotate = {.method = "POST", .target = "/v1/keys/ratings/rotate", .body = {},
                           .content_type = {}, .headers = {}};
  const auto rotated = client.Send(rotate);
  ASSERT_EQ(rotated.status, 200u) << rotated.body;
  HttpCall rotate_missing = rotate;
  rotate_missing.target = "/v1/keys/missing/rotate";
  const auto failed = client.Send(rotate_missing);
  ASSERT_EQ(failed.status, 404u) << failed.body;
  ASSERT_EQ(daemon->Stop(), 0) << daemon->Log();

  const std::vector<json> records = daemon->AuditRecords();
  const json start = Find(records, "start");
  ASSERT_TRUE(start.is_object()) << "no start record";
  EXPECT_EQ(start["operation"], "start");
  EXPECT_EQ(start["extra"], json({{"version", health.Json()["version"]}}));
  EXPECT_FALSE(start.contains("caller")) << "the daemon's own event names no caller: " << start;

  const std::string rule = "dev-user-" + std::to_string(geteuid());
  const std::string exe = SelfExe();
  const auto expect_key_record = [&](const json& record, const std::string& event, int version) {
    SCOPED_TRACE(event);
    ASSERT_TRUE(record.is_object()) << "no " << event << " record";
    EXPECT_EQ(record["operation"], event);
    EXPECT_EQ(record["key"], "ratings");
    EXPECT_EQ(record["key_version"], version);
    EXPECT_EQ(record["decision"], "granted");
    EXPECT_EQ(record["rule_id"], rule);
    EXPECT_FALSE(record.contains("error_code")) << record;
    const json& caller = record["caller"];
    EXPECT_EQ(caller["pid"], getpid());
    EXPECT_EQ(caller["uid"], geteuid());
    EXPECT_EQ(caller["gid"], getegid());
    EXPECT_EQ(caller["exe"], exe);
    // The dev policy tests no digest, so none was computed, and the record says so.
    EXPECT_FALSE(caller.contains("exe_sha256")) << caller;
    EXPECT_EQ(caller["exe_sha256_unknown"], "not_needed");
  };
  const json create_record =
      Find(records, "keys.create", created.headers.at("vecseal-request-id"));
  expect_key_record(create_record, "keys.create", 1);
  const json rotate_record =
      Find(records, "keys.rotate", rotated.headers.at("vecseal-request-id"));
  expect_key_record(rotate_record, "keys.rotate", 2);

  // A rotation that fails is an `error` record that still says what was asked, on which key.
  const json failed_record = Find(records, "error", failed.headers.at("vecseal-request-id"));
  ASSERT_TRUE(failed_record.is_object()) << "no record of the failed rotation";
  EXPECT_EQ(failed_record["operation"], "keys.rotate");
  EXPECT_EQ(failed_record["key"], "missing");
  EXPECT_EQ(failed_record["decision"], "granted");
  EXPECT_EQ(failed_record["error_code"], "key_not_found");

  const json stop = Find(records, "stop");
  ASSERT_TRUE(stop.is_object()) << "no stop record";
  EXPECT_EQ(stop["operation"], "stop");
  // In the order they happened, and the last word is the seal that covers them all.
  EXPECT_LT(start["seq"], create_record["seq"]);
  EXPECT_LT(create_record["seq"], rotate_record["seq"]);
  EXPECT_LT(rotate_record["seq"], stop["seq"]);
  ASSERT_FALSE(records.empty());
  EXPECT_EQ(records.back()["event"], "seal");
  EXPECT_EQ(records.back()["reason"], "close");
  EXPECT_GT(records.back()["seq"], stop["seq"]);
}

}  // namespace
}  // namespace vecseal::daemon::testing
