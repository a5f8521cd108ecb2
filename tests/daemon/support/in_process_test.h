// A GoogleTest fixture over InProcessDaemon, with the limits daemon_test.cc's fixture gives its
// dev daemon, and a keep-alive client on its socket; and the audit record lookup its tests share.
#pragma once

#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "support/in_process_daemon.h"

namespace vecseal::daemon::testing {

class InProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    daemon_ = InProcessDaemon::Start(
        {.overlay_json = R"({"limits": {"max_body_bytes": 1048576, "max_vectors": 64}})",
         .policy_json = {}},
        &error);
    ASSERT_NE(daemon_, nullptr) << error;
    client_ = std::make_unique<HttpClient>(daemon_->socket_path());
  }

  std::unique_ptr<InProcessDaemon> daemon_;
  std::unique_ptr<HttpClient> client_;
};

// The newest audit record of `operation` (with extra fields), or null.
inline nlohmann::json LastRecordOf(const InProcessDaemon& daemon, const std::string& operation) {
  nlohmann::json found;
  for (const auto& record : daemon.AuditRecords()) {
    if (record.value("operation", "") == operation) found = record;
  }
  return found;
}

}  // namespace vecseal::daemon::testing
