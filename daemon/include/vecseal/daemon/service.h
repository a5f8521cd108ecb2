// The API v1 handlers (docs/api.md): route, identify, decide, parse, run, audit, answer. The
// logic of keys, policy and audit lives in their libraries; this layer only wires them and maps
// every outcome to one HTTP status through HttpStatusFor.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "vecseal/audit/log.h"
#include "vecseal/core/cipher.h"
#include "vecseal/daemon/http_server.h"
#include "vecseal/daemon/key_store.h"
#include "vecseal/daemon/metrics.h"
#include "vecseal/daemon/peer_identifier.h"
#include "vecseal/pkcs11/hsm.h"
#include "vecseal/policy/budget.h"
#include "vecseal/policy/identity.h"
#include "vecseal/policy/policy.h"
#include "vecseal/policy/rate_limit.h"

namespace vecseal::daemon {

inline constexpr std::string_view kVersion = "0.1.0";

// What a SIGHUP may change while requests are in flight.
struct ServiceSettings {
  uint32_t group_size = 1;  // format v1 key versions only
  core::KeyFormat new_keys = core::KeyFormat::kV2;
  size_t max_vectors = 10000;
  // Wall time one uid may spend deriving transforms for key versions not yet used (Limits).
  uint64_t derivation_ms_per_minute_per_uid = 30'000;
  // A key created without a dimension takes the first one used. Off in dev mode only, so that
  // its demo key can be tried at any size; the derivation budget still applies there.
  bool fix_dimension_at_first_use = true;
};

class Service final : public RequestHandler {
 public:
  // `keys`, `audit_log`, `peers` and `metrics` must outlive the Service.
  Service(KeyStore& keys, audit::Log& audit_log, PeerIdentifier& peers, Metrics& metrics,
          policy::PolicyPtr policy, ServiceSettings settings);
  ~Service() override;

  // Where the audit log's files are, oldest first, for counting what budgets have spent.
  using AuditFiles = std::function<Result<std::vector<std::string>>()>;
  // Counts the policy's budgets from the audit log (docs/policy.md, Budgets); before serving.
  // A log that cannot be read leaves every budgeted rule refused (503 budget_unavailable), and
  // says why in the returned status, which the daemon logs; it does not stop the daemon.
  Status RebuildBudgets(AuditFiles files);

  // Atomic for requests: each request decides against one policy and one settings snapshot.
  // Budgets the old policy did not have are counted from the audit log, and refuse (503
  // budget_unavailable) until they are; the others keep their counts, under the new limits.
  void Reload(policy::PolicyPtr policy, ServiceSettings settings);
  // Forgets cached ciphers, e.g. after keys were changed on the token by another tool.
  void ForgetKeys();

  std::unique_ptr<ConnectionContext> Accept(int fd) override;
  HttpResponse Handle(ConnectionContext& connection, HttpRequest& request) override;
  HttpResponse Refuse(ConnectionContext& connection, HttpRequest& request,
                      const Status& status) override;
  bool ExpectsBody(const HttpRequest& header) const override;
  std::optional<HttpResponse> Screen(ConnectionContext& connection,
                                     HttpRequest& header) override;

 private:
  struct Call;
  struct CachedKey {
    pkcs11::KeyInfo info;
    std::shared_ptr<core::Cipher> cipher;
  };

  Status Route(Call& call);
  Status Encrypt(Call& call, const std::string& key_name);
  Status Decrypt(Call& call, const std::string& key_name);
  Status ListKeys(Call& call);
  Status CreateKey(Call& call);
  Status RotateKey(Call& call, const std::string& key_name);
  Status GetKey(Call& call, const std::string& key_name);
  Status ConfigureKey(Call& call, const std::string& key_name);
  Status DeleteKey(Call& call, const std::string& key_name);
  Status Rewrap(Call& call, const std::string& key_name);
  // Answers with the key object, its minimum versions and the state of each version.
  Status KeyAnswer(Call& call, const std::string& key_name);
  Status WhoAmI(Call& call);
  Status Health(Call& call);
  Status Metrics(Call& call);

  Status Authorize(Call& call, policy::Operation op, const std::string& key);
  // Takes `vectors` from the budgets of the rule that granted the call, or refuses it whole:
  // 429 budget_exhausted, or 503 budget_unavailable when the spends are not known. With
  // `vectors` 0, before the body is read: refuses only when not one vector would fit.
  Status SpendBudgets(Call& call, const std::string& key, uint64_t vectors);
  // Fills `ledger` for `budgets` from the audit log's records before seq `until_seq`.
  Status CountFromLog(policy::BudgetLedger& ledger, std::span<const policy::RuleBudget> budgets,
                      uint64_t until_seq = UINT64_MAX);
  std::vector<Metrics::BudgetGauge> BudgetGauges();
  // Screen's decision for a request whose body is still unread: the caller's identity, then the
  // policy on the key the target names (for a key creation, on any key), then the cheap header
  // checks that would refuse it anyway once read.
  Status Admit(Call& call);
  Status AdmitKeyCreation(Call& call);
  // A key creation body, once read: small, and nested no deeper than kMaxKeyJsonDepth.
  Status CheckKeyCreationBody(const Call& call);
  Result<CachedKey> KeyFor(const std::string& name, std::optional<uint32_t> version);
  // The key's minimum versions, read from the token once and then cached.
  Result<pkcs11::KeyConfig> ConfigFor(const std::string& name);
  // key_version_retired when tokens of `version` may no longer be decrypted.
  Status CheckDecryptable(const std::string& key_name, std::optional<uint32_t> version);
  // Drops every cached cipher and configuration of one key.
  void ForgetKey(const std::string& name);
  // Before any derivation: a valid dimension, the key's own (fixing it at a first use), and, when
  // the call would derive the key version's transform, time left in the caller's derivation
  // budget. True when it would derive; ChargeDerivation then takes the time it took.
  Result<bool> CheckDimension(Call& call, const std::string& key_name, CachedKey& key,
                              size_t dimension);
  void ChargeDerivation(const Call& call, std::chrono::steady_clock::time_point started);
  Result<nlohmann::json> KeyObject(const std::string& name);
  // Writes the audit record for `call` (outcome `status`) and returns the response to send: the
  // prepared one, or 503 audit_unavailable when the record could not be written.
  HttpResponse Finish(Call& call, const Status& status);
  Status CountHsm(Status status);

  KeyStore& keys_;
  audit::Log& audit_log_;
  PeerIdentifier& peers_;
  daemon::Metrics& metrics_;

  mutable std::mutex mutex_;
  policy::PolicyPtr policy_;
  ServiceSettings settings_;
  // (name, version) -> cipher; versions_[name] is the newest version we know of.
  std::map<std::pair<std::string, uint32_t>, CachedKey> ciphers_;
  std::map<std::string, uint32_t, std::less<>> newest_;
  std::map<std::string, pkcs11::KeyConfig, std::less<>> configs_;
  std::mutex key_config_mutex_;  // held across a configuration's read and write on the token
  uint64_t next_request_ = 1;
  policy::UidRateLimiter derivation_budget_;  // milliseconds, refilled per minute
  policy::BudgetLedger budgets_;
  AuditFiles audit_files_;
};

}  // namespace vecseal::daemon
