// vecseald's serving parts in the test process: the real Service, HttpServer, policy and audit
// log (in a temporary directory, sealed by a software key), over FakeKeyStore and
// FakePeerIdentifier, listening on a real Unix socket. Routes, policy decisions, audit records
// and limits are tested through it in milliseconds; what only a process shows (signals, socket
// activation, the HSM, core dumps) stays with DevDaemon.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/fake_key_store.h"
#include "support/fake_peer_identifier.h"
#include "support/http_client.h"
#include "vecseal/audit/log.h"
#include "vecseal/daemon/config.h"
#include "vecseal/daemon/http_server.h"
#include "vecseal/daemon/metrics.h"
#include "vecseal/daemon/service.h"

namespace vecseal::daemon::testing {

struct InProcessOptions {
  // A dev overlay as `vecseald --dev --config FILE` reads it (limits, threads, audit tunables,
  // new key format); empty: none.
  std::string overlay_json;
  // The policy; empty: dev mode's, which grants the test's user everything.
  std::string policy_json;
};

class InProcessDaemon {
 public:
  // Builds and starts everything, with dev mode's key `demo`. On failure returns null and fills
  // `error`.
  static std::unique_ptr<InProcessDaemon> Start(const InProcessOptions& options,
                                                std::string* error);
  ~InProcessDaemon();  // drains the server, closes the audit log, removes the directory

  const std::string& socket_path() const { return socket_path_; }
  const std::string& audit_dir() const { return audit_dir_; }
  std::vector<nlohmann::json> AuditRecords() const { return ReadAuditRecords(audit_dir_); }

  FakeKeyStore& keys() { return keys_; }
  FakePeerIdentifier& peers() { return peers_; }
  HttpServer& server() { return *server_; }
  audit::Log& audit_log() { return *audit_log_; }

  // What vecseald does on SIGHUP once a new policy (and overlay; empty: the current one) loaded:
  // the service and the server take them, cached keys are forgotten. Errors are the parsers'.
  Status Reload(const std::string& policy_json, const std::string& overlay_json = "");

 private:
  InProcessDaemon() = default;
  Status Build(const InProcessOptions& options);

  std::string root_;
  std::string socket_path_;
  std::string audit_dir_;
  Config config_;  // the overlay it runs under
  FakeKeyStore keys_;
  FakePeerIdentifier peers_;
  Metrics metrics_;
  std::unique_ptr<audit::Log> audit_log_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<HttpServer> server_;
};

}  // namespace vecseal::daemon::testing
