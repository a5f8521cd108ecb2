#include "vecseal/daemon/service.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <cctype>
#include <ctime>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include <boost/beast/http/field.hpp>
#include <boost/beast/http/verb.hpp>

#include "log.h"
#include "vecseal/audit/spend.h"
#include "vecseal/daemon/vector_codec.h"
#include "vecseal/wire/key_name.h"

namespace vecseal::daemon {
namespace {

namespace http = boost::beast::http;
using nlohmann::json;
using policy::Operation;

// The peer of one connection, identified when it was accepted.
class PeerConnection final : public ConnectionContext {
 public:
  explicit PeerConnection(std::unique_ptr<Peer> peer) : peer_(std::move(peer)) {}

  // The identity for this request (the peer may have exec'd since the last one, or `needs` may
  // ask for a digest the policy it was identified under did not).
  Result<const policy::CallerIdentity*> Refresh(policy::DigestNeeds needs) {
    return peer_->Refresh(needs);
  }

 private:
  std::unique_ptr<Peer> peer_;
};

enum class ContentType { kJson, kBinary, kOther };

ContentType ContentTypeOf(const HttpRequest& request) {
  std::string value(request[http::field::content_type]);
  value = value.substr(0, value.find(';'));
  std::erase_if(value, [](unsigned char c) { return std::isspace(c) != 0; });
  std::transform(value.begin(), value.end(), value.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (value == "application/json") return ContentType::kJson;
  if (value == "application/octet-stream") return ContentType::kBinary;
  return ContentType::kOther;
}

Status UnsupportedMediaType() {
  return Status(Code::kInvalidArgument, "unsupported_media_type",
                "Content-Type must be application/json or application/octet-stream");
}

Status InvalidRequest(std::string message) {
  return Status(Code::kInvalidArgument, "invalid_request", std::move(message));
}

std::string Rfc3339(int64_t unix_seconds) {
  const auto seconds = static_cast<time_t>(unix_seconds);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

audit::Caller AuditCaller(const policy::CallerIdentity& identity) {
  audit::Caller caller;
  caller.pid = identity.pid;
  caller.uid = identity.uid;
  caller.user = identity.user;
  caller.gid = identity.gid;
  caller.exe = identity.exe;
  caller.exe_sha256 = identity.exe_sha256;
  caller.exe_sha256_unknown = identity.exe_sha256_unknown;
  caller.unit = identity.unit;
  caller.script = identity.script;
  return caller;
}

HttpResponse JsonResponse(http::status status, const json& body, unsigned version) {
  HttpResponse response(status, version);
  response.set(http::field::content_type, "application/json");
  response.body().text = body.dump(-1, ' ', false, json::error_handler_t::replace);
  response.body().text += '\n';
  return response;
}

// A header's value, or nullopt when the request does not carry it.
std::optional<std::string_view> HeaderValue(const HttpRequest& request, const char* name) {
  const auto it = request.find(boost::beast::string_view(name));
  if (it == request.end()) return std::nullopt;
  return std::string_view(it->value().data(), it->value().size());
}

Result<bool> ParseBoolHeader(const HttpRequest& request, const char* name) {
  const auto value = HeaderValue(request, name);
  if (!value || *value == "false") return false;
  if (*value == "true") return true;
  return InvalidRequest(std::string(name) + " must be true or false");
}

Result<size_t> DimensionHeader(const HttpRequest& request) {
  const auto value = HeaderValue(request, "Vecseal-Dimension");
  return ParseDimensionHeader(value.value_or(""), value.has_value());
}

// The answer to an encrypt or decrypt, in the representation of the request. `tokens` is empty
// unless a reversible encryption produced them. A binary answer is written from the request's
// own buffer, where the vectors were encrypted.
void SetVectorsResponse(HttpResponse& response, ContentType type, const std::string& key_name,
                        uint32_t key_version, VectorBatch& batch,
                        std::span<const core::Token> tokens) {
  if (type == ContentType::kBinary) {
    response.set(http::field::content_type, "application/octet-stream");
    response.set("Vecseal-Key-Version", std::to_string(key_version));
    response.set("Vecseal-Dimension", std::to_string(batch.dimension));
    response.set("Vecseal-Vectors", std::to_string(batch.count()));
    response.body().segments.push_back(TakeBinaryVectors(batch));
    if (!tokens.empty()) {
      response.set("Vecseal-Token-Size", std::to_string(core::kTokenSize));
      ByteBuffer token_bytes(tokens.size() * core::kTokenSize);
      for (size_t i = 0; i < tokens.size(); ++i) {
        std::memcpy(token_bytes.data() + i * core::kTokenSize, tokens[i].data(), core::kTokenSize);
      }
      response.body().segments.push_back(std::move(token_bytes));
    }
    return;
  }
  std::string body = "{\"key\":\"" + key_name + "\",\"key_version\":" +
                     std::to_string(key_version) +
                     ",\"dimension\":" + std::to_string(batch.dimension) + ",\"vectors\":";
  AppendVectorsJson(body, batch.values, batch.dimension);
  if (!tokens.empty()) {
    body += ",\"tokens\":[";
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) body += ',';
      body += '"' + Base64Encode(tokens[i]) + '"';
    }
    body += ']';
  }
  body += "}\n";
  response.set(http::field::content_type, "application/json");
  response.body().text = std::move(body);
}

// The vectors of an encrypt or decrypt request, in either representation.
struct VectorRequest {
  ContentType type = ContentType::kOther;
  VectorBatch batch;
  bool reversible = false;                // encrypt
  std::optional<uint32_t> key_version;    // encrypt: a version other than the newest
  std::vector<core::Token> tokens;        // decrypt
};

Result<std::optional<uint32_t>> KeyVersionHeader(const HttpRequest& request) {
  const auto value = HeaderValue(request, "Vecseal-Key-Version");
  if (!value) return std::optional<uint32_t>();
  uint32_t version = 0;
  const auto [end, error] = std::from_chars(value->data(), value->data() + value->size(), version);
  if (value->empty() || error != std::errc() || end != value->data() + value->size() ||
      version == 0) {
    return InvalidRequest("Vecseal-Key-Version must be a key version (an integer from 1)");
  }
  return std::optional<uint32_t>(version);
}

Result<VectorRequest> ParseVectorRequest(HttpRequest& request, bool decrypt, size_t max_vectors) {
  VectorRequest parsed;
  parsed.type = ContentTypeOf(request);
  if (parsed.type == ContentType::kJson) {
    auto body = ParseJsonVectorRequest(request.body().view(), max_vectors);
    if (!body.ok()) return std::move(body).TakeStatus();
    if (decrypt) {
      if (body->reversible) return InvalidRequest("\"reversible\" belongs in encrypt requests");
      if (body->key_version) {
        return InvalidRequest("\"key_version\" belongs in encrypt requests; decrypt reads the "
                              "version from the tokens");
      }
      if (!body->tokens) return InvalidRequest("a decrypt request needs a \"tokens\" field");
      if (body->tokens->size() != body->batch.count()) {
        return InvalidRequest("\"tokens\" holds " + std::to_string(body->tokens->size()) +
                              " tokens for " + std::to_string(body->batch.count()) +
                              " vectors; send one token per vector");
      }
      auto decoded = DecodeTokens(*body->tokens);
      if (!decoded.ok()) return std::move(decoded).TakeStatus();
      parsed.tokens = std::move(decoded).value();
    } else if (body->tokens) {
      return InvalidRequest("\"tokens\" belongs in decrypt requests");
    }
    parsed.reversible = body->reversible.value_or(false);
    parsed.key_version = body->key_version;
    parsed.batch = std::move(body->batch);
    return parsed;
  }
  if (parsed.type != ContentType::kBinary) return UnsupportedMediaType();
  auto dimension = DimensionHeader(request);
  if (!dimension.ok()) return std::move(dimension).TakeStatus();
  if (!decrypt) {
    auto reversible = ParseBoolHeader(request, "Vecseal-Reversible");
    if (!reversible.ok()) return std::move(reversible).TakeStatus();
    parsed.reversible = *reversible;
    auto version = KeyVersionHeader(request);
    if (!version.ok()) return std::move(version).TakeStatus();
    parsed.key_version = *version;
  }
  auto& segments = request.body().segments;
  ByteBuffer body = segments.size() == 1 ? std::move(segments.front())
                                         : ByteBuffer::CopyOf(request.body().text);
  auto batch = ParseBinaryVectors(std::move(body), *dimension, max_vectors,
                                  decrypt ? &parsed.tokens : nullptr);
  if (!batch.ok()) return std::move(batch).TakeStatus();
  parsed.batch = std::move(batch).value();
  return parsed;
}

// A JSON object body, with no field repeated at any level: a repeated field is refused, not
// resolved to its last value, so that two readers of one body never disagree on what it asks.
Result<json> ParseJsonObject(const HttpRequest& request) {
  if (ContentTypeOf(request) != ContentType::kJson) return UnsupportedMediaType();
  const std::string_view text = request.body().view();
  std::vector<std::set<std::string>> fields_seen;
  std::string repeated;
  const json::parser_callback_t note_fields = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) fields_seen.emplace_back();
    if (event == json::parse_event_t::object_end && !fields_seen.empty()) fields_seen.pop_back();
    if (event == json::parse_event_t::key && !fields_seen.empty() &&
        !fields_seen.back().insert(parsed.get<std::string>()).second && repeated.empty()) {
      repeated = parsed.get<std::string>().substr(0, 32);
    }
    return true;
  };
  json body = json::parse(text.begin(), text.end(), note_fields, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    return Status(Code::kInvalidArgument, "invalid_json", "the request body is not valid JSON");
  }
  if (!repeated.empty()) return InvalidRequest("the field \"" + repeated + "\" is repeated");
  if (!body.is_object()) return InvalidRequest("the request body must be a JSON object");
  return body;
}

// `?force=true` on the request target: false when absent.
Result<bool> ForceParameter(const HttpRequest& request) {
  std::string_view target(request.target().data(), request.target().size());
  const size_t question = target.find('?');
  if (question == std::string_view::npos) return false;
  std::string_view query = target.substr(question + 1);
  bool force = false;
  while (!query.empty()) {
    const size_t amp = query.find('&');
    const std::string_view item = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (item == "force=true") {
      force = true;
    } else if (item != "force=false") {
      return InvalidRequest("the only query parameter is force=true or force=false");
    }
  }
  return force;
}

// The one key version all tokens carry (nullopt for none): the version to decrypt under.
Result<std::optional<uint32_t>> TokensVersion(std::span<const core::Token> tokens) {
  std::optional<uint32_t> key_version;
  for (size_t i = 0; i < tokens.size(); ++i) {
    auto fields = core::ParseToken(tokens[i]);
    if (!fields.ok()) return std::move(fields).TakeStatus().WithVectorIndex(i);
    if (key_version && *key_version != fields->key_version) {
      return Status(Code::kInvalidArgument, "token_key_version_mismatch",
                    "token " + std::to_string(i) + " is for key version " +
                        std::to_string(fields->key_version) + ", token 0 for version " +
                        std::to_string(*key_version) + "; send one version per request")
          .WithVectorIndex(i);
    }
    key_version = fields->key_version;
  }
  return key_version;
}

Status VersionRetired(const std::string& key_name, uint32_t version, const char* use,
                      const char* field, uint32_t minimum) {
  return Status(Code::kInvalidArgument, "key_version_retired",
                "version " + std::to_string(version) + " of key '" + key_name +
                    "' is retired for " + use + ": the key's " + field + " is " +
                    std::to_string(minimum));
}

}  // namespace

struct Service::Call {
  Call(HttpRequest& http_request, ConnectionContext& context)
      : request(http_request), connection(static_cast<PeerConnection&>(context)) {}

  HttpRequest& request;
  PeerConnection& connection;
  policy::PolicyPtr policy;
  ServiceSettings settings;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  const policy::CallerIdentity* identity = nullptr;
  audit::Event event;
  std::string metric_key;   // set only once the key is known to exist
  std::string allow;        // the Allow header of a 405
  std::string retry_after;  // the Retry-After header of a 429 or 503, in seconds
  // The granting rule's budgets on this operation, and what this request took from them.
  std::vector<const policy::Budget*> budgets;
  policy::BudgetLedger::Reservation reservation;
  bool health = false;
  HttpResponse response;
};

Service::Service(KeyStore& keys, audit::Log& audit_log, PeerIdentifier& peers,
                 daemon::Metrics& metrics, policy::PolicyPtr policy, ServiceSettings settings)
    : keys_(keys),
      audit_log_(audit_log),
      peers_(peers),
      metrics_(metrics),
      policy_(std::move(policy)),
      settings_(settings),
      derivation_budget_(static_cast<double>(settings.derivation_ms_per_minute_per_uid),
                         static_cast<double>(settings.derivation_ms_per_minute_per_uid) / 60) {
  // Request ids are unique across restarts without being guessable from the start time.
  next_request_ = (uint64_t{std::random_device{}()} << 32) | 1;
  metrics_.SetBudgetsSource([this] { return BudgetGauges(); });
}

Service::~Service() { metrics_.SetBudgetsSource(nullptr); }

Status Service::RebuildBudgets(AuditFiles files) {
  audit_files_ = std::move(files);
  policy::PolicyPtr policy;
  {
    std::lock_guard lock(mutex_);
    policy = policy_;
  }
  const std::vector<policy::RuleBudget> budgets = policy->budgets();
  return CountFromLog(budgets_, budgets);
}

Status Service::CountFromLog(policy::BudgetLedger& ledger,
                             std::span<const policy::RuleBudget> budgets, uint64_t until_seq) {
  if (budgets.empty() || !audit_files_) return Status::Ok();
  const auto started = std::chrono::steady_clock::now();
  const auto fail = [&](const Status& status) {
    ledger.SetBroken("the audit log could not be read to count what was spent (" +
                     status.message() + "); a restart that can read it ends this");
    LogLine("error", "budgets_unknown", "message=" + LogValue(status.message()));
    return status;
  };
  auto files = audit_files_();
  if (!files.ok()) return fail(files.status());
  std::map<std::string, std::vector<const policy::Budget*>, std::less<>> by_rule;
  uint64_t longest = 0;
  for (const policy::RuleBudget& entry : budgets) {
    by_rule[entry.rule_id + '\0' + std::string(policy::OperationName(entry.budget.operation))]
        .push_back(&entry.budget);
    longest = std::max(longest, entry.budget.window_seconds);
  }
  // Wall times in records become monotonic ones by their age; a record from the future (the
  // clock was stepped back since) has age 0, so it counts a whole window from now.
  const int64_t wall_now = std::chrono::duration_cast<std::chrono::microseconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
  const auto mono_now = std::chrono::steady_clock::now();
  const auto age_of = [&](int64_t micros) { return std::max<int64_t>(0, wall_now - micros); };
  // A spend counts up to 1/1024 of a window longer than the window (BudgetLedger's slots).
  const auto reach = [](uint64_t window) {
    return static_cast<int64_t>(window + window / 1024 + 1) * 1'000'000;
  };
  std::string rule_op;
  auto scan = audit::ScanSpends(*files, wall_now - reach(longest), [&](const audit::Spend& spend) {
    rule_op.assign(spend.rule_id);
    rule_op += '\0';
    rule_op += spend.operation;
    const auto found = by_rule.find(rule_op);
    if (found == by_rule.end()) return;
    const int64_t age = age_of(spend.time_micros);
    const policy::BudgetSpender spender{spend.rule_id, spend.key, spend.uid, spend.unit};
    for (const policy::Budget* budget : found->second) {
      if (age > reach(budget->window_seconds)) continue;
      ledger.Add(*budget, spender, spend.vectors, mono_now - std::chrono::microseconds(age));
    }
  }, until_seq);
  if (!scan.ok()) return fail(scan.status());
  if (scan->complete_since_micros) {
    ledger.SetKnownSince(mono_now - std::chrono::microseconds(age_of(*scan->complete_since_micros)));
  }
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - started);
  LogLine("info", "budgets_counted",
          "files=" + std::to_string(scan->files_read) + " bytes=" +
              std::to_string(scan->bytes_read) + " records=" + std::to_string(scan->records) +
              " spends=" + std::to_string(scan->spends) + " ms=" + std::to_string(took.count()) +
              (scan->complete_since_micros ? " incomplete=true" : ""));
  return Status::Ok();
}

std::vector<Metrics::BudgetGauge> Service::BudgetGauges() {
  policy::PolicyPtr policy;
  {
    std::lock_guard lock(mutex_);
    policy = policy_;
  }
  std::vector<Metrics::BudgetGauge> gauges;
  const auto now = std::chrono::steady_clock::now();
  for (const policy::RuleBudget& entry : policy->budgets()) {
    for (const policy::BudgetCounter& counter : budgets_.Counters(entry.rule_id, entry.budget, now)) {
      Metrics::BudgetGauge gauge{entry.rule_id, std::string(policy::OperationName(entry.budget.operation)),
                                 policy::FormatWindow(entry.budget.window_seconds), counter.key,
                                 counter.spent, entry.budget.vectors};
      // Counters of one key per caller add up to the key's series; the limit is each caller's.
      if (!gauges.empty() && gauges.back().rule == gauge.rule &&
          gauges.back().operation == gauge.operation && gauges.back().window == gauge.window &&
          gauges.back().key == gauge.key) {
        gauges.back().spent += gauge.spent;
      } else {
        gauges.push_back(std::move(gauge));
      }
    }
  }
  return gauges;
}

void Service::Reload(policy::PolicyPtr policy, ServiceSettings settings) {
  policy::PolicyPtr old;
  {
    std::lock_guard lock(mutex_);
    old = policy_;
  }
  std::vector<policy::RuleBudget> added;
  const std::vector<policy::RuleBudget> kept = old->budgets();
  for (const policy::RuleBudget& entry : policy->budgets()) {
    const bool known = std::any_of(kept.begin(), kept.end(), [&](const policy::RuleBudget& k) {
      return k.rule_id == entry.rule_id && k.budget.operation == entry.budget.operation &&
             k.budget.window_seconds == entry.budget.window_seconds &&
             k.budget.per_caller == entry.budget.per_caller;
    });
    if (!known) added.push_back(entry);
  }
  // Requests decided under the new policy refuse on the added budgets until the records before
  // the swap are counted; those of the old policy still in flight are counted at the next start.
  budgets_.SetCounting(added);
  uint64_t swapped_at = 0;
  {
    std::lock_guard lock(mutex_);
    policy_ = std::move(policy);
    settings_ = settings;
    derivation_budget_.Configure(
        static_cast<double>(settings.derivation_ms_per_minute_per_uid),
        static_cast<double>(settings.derivation_ms_per_minute_per_uid) / 60);
    swapped_at = audit_log_.next_seq();
  }
  if (added.empty()) return;
  policy::BudgetLedger counted;
  (void)CountFromLog(counted, added, swapped_at);  // a failure leaves `counted` broken: refusing
  budgets_.Adopt(counted, added);
}

void Service::ForgetKeys() {
  std::lock_guard lock(mutex_);
  ciphers_.clear();
  newest_.clear();
  configs_.clear();
}

std::unique_ptr<ConnectionContext> Service::Accept(int fd) {
  policy::DigestNeeds needs;
  {
    std::lock_guard lock(mutex_);
    needs = policy_->digest_needs();
  }
  return std::make_unique<PeerConnection>(peers_.Identify(fd, needs));
}

HttpResponse Service::Handle(ConnectionContext& connection, HttpRequest& request) {
  Call call(request, connection);
  {
    std::lock_guard lock(mutex_);
    call.policy = policy_;
    call.settings = settings_;
    call.event.request_id = std::to_string(next_request_++);
  }
  const Status status = Route(call);
  return Finish(call, status);
}

HttpResponse Service::Refuse(ConnectionContext& connection, HttpRequest& request,
                             const Status& status) {
  Call call(request, connection);
  {
    std::lock_guard lock(mutex_);
    call.policy = policy_;
    call.event.request_id = std::to_string(next_request_++);
  }
  call.event.operation = "http";
  auto identity = call.connection.Refresh(call.policy->digest_needs());
  if (identity.ok()) call.event.caller = AuditCaller(**identity);
  return Finish(call, status);
}

bool Service::ExpectsBody(const HttpRequest& header) const {
  if (header.method() != http::verb::post) return false;
  std::string_view target(header.target().data(), header.target().size());
  target = target.substr(0, target.find('?'));
  return target == "/v1/keys" ||
         (target.starts_with("/v1/keys/") &&
          (target.ends_with("/encrypt") || target.ends_with("/decrypt") ||
           target.ends_with("/rewrap") || target.ends_with("/config")));
}

Status Service::Route(Call& call) {
  std::string_view target(call.request.target().data(), call.request.target().size());
  target = target.substr(0, target.find('?'));
  const http::verb method = call.request.method();

  auto identity = call.connection.Refresh(call.policy->digest_needs());
  if (!identity.ok()) return std::move(identity).TakeStatus();
  call.identity = *identity;
  call.event.caller = AuditCaller(*call.identity);

  const auto only = [&](http::verb allowed, const char* allow) -> Status {
    if (method == allowed) return Status::Ok();
    call.allow = allow;
    return Status(Code::kInvalidArgument, "method_not_allowed",
                  std::string(call.request.method_string()) + " is not allowed on " +
                      std::string(target) + " (allowed: " + allow + ")");
  };

  if (target == "/v1/health") {
    call.event.operation = "health";
    VECSEAL_RETURN_IF_ERROR(only(http::verb::get, "GET"));
    return Health(call);
  }
  if (target == "/metrics") {
    call.event.operation = "metrics";
    VECSEAL_RETURN_IF_ERROR(only(http::verb::get, "GET"));
    return Metrics(call);
  }
  if (target == "/v1/whoami") {
    call.event.operation = "whoami";
    VECSEAL_RETURN_IF_ERROR(only(http::verb::get, "GET"));
    return WhoAmI(call);
  }
  if (target == "/v1/keys") {
    if (method == http::verb::get) {
      call.event.operation = "keys.list";
      return ListKeys(call);
    }
    call.event.operation = "keys.create";
    VECSEAL_RETURN_IF_ERROR(only(http::verb::post, "GET, POST"));
    VECSEAL_RETURN_IF_ERROR(CheckKeyCreationBody(call));
    return CreateKey(call);
  }
  constexpr std::string_view kKeysPrefix = "/v1/keys/";
  if (target.starts_with(kKeysPrefix)) {
    const std::string_view rest = target.substr(kKeysPrefix.size());
    const size_t slash = rest.find('/');
    // Keep caller input that is not a key name out of the record.
    const auto valid_name = [&call](const std::string& name) {
      const Status valid = wire::CheckKeyName(name);
      if (!valid.ok()) call.event.key.clear();
      return valid;
    };
    if (slash == std::string_view::npos) {
      const std::string name(rest);
      call.event.key = name;
      if (method == http::verb::delete_) {
        call.event.operation = "keys.delete";
        VECSEAL_RETURN_IF_ERROR(valid_name(name));
        return DeleteKey(call, name);
      }
      call.event.operation = "keys.get";
      VECSEAL_RETURN_IF_ERROR(only(http::verb::get, "GET, DELETE"));
      VECSEAL_RETURN_IF_ERROR(valid_name(name));
      return GetKey(call, name);
    }
    const std::string name(rest.substr(0, slash));
    const std::string_view action = rest.substr(slash + 1);
    if (action == "encrypt" || action == "decrypt" || action == "rotate" || action == "config" ||
        action == "rewrap") {
      call.event.operation = action == "rotate"   ? "keys.rotate"
                             : action == "config" ? "keys.config"
                                                  : std::string(action);
      call.event.key = name;
      VECSEAL_RETURN_IF_ERROR(only(http::verb::post, "POST"));
      VECSEAL_RETURN_IF_ERROR(valid_name(name));
      if (action == "encrypt") return Encrypt(call, name);
      if (action == "decrypt") return Decrypt(call, name);
      if (action == "rewrap") return Rewrap(call, name);
      if (action == "config") return ConfigureKey(call, name);
      return RotateKey(call, name);
    }
  }
  call.event.operation = "unknown";
  return Status(Code::kNotFound, "not_found", "no such endpoint; see docs/api.md");
}

Status Service::Authorize(Call& call, Operation op, const std::string& key) {
  const policy::Decision decision = call.policy->Decide(*call.identity, op, key);
  call.event.decision = decision.granted ? "granted" : "denied";
  call.event.rule_id = decision.rule_id;
  call.budgets = decision.budgets;
  if (decision.granted) return Status::Ok();
  return Status(Code::kPermissionDenied, "permission_denied",
                "no rule grants " + std::string(policy::OperationName(op)) + " on key '" + key +
                    "'");
}

namespace {

int64_t CeilSeconds(std::chrono::steady_clock::duration duration) {
  const auto micros = std::chrono::duration_cast<std::chrono::microseconds>(duration).count();
  return std::max<int64_t>(1, (micros + 999'999) / 1'000'000);
}

std::string WallTimeIn(int64_t seconds) {
  const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  return Rfc3339(now + seconds);
}

std::string BudgetOwner(const policy::Budget& budget, const policy::CallerIdentity& caller) {
  switch (budget.per_caller) {
    case policy::Budget::PerCaller::kNone: return "";
    case policy::Budget::PerCaller::kUid: return " for uid " + std::to_string(caller.uid);
    case policy::Budget::PerCaller::kUnit:
      return caller.unit.empty() ? " for callers in no unit" : " for unit " + caller.unit;
  }
  return "";
}

}  // namespace

Status Service::SpendBudgets(Call& call, const std::string& key, uint64_t vectors) {
  if (call.budgets.empty()) return Status::Ok();
  const auto now = std::chrono::steady_clock::now();
  const std::string op = call.event.operation;
  for (const policy::Budget* budget : call.budgets) {
    std::optional<std::chrono::steady_clock::duration> lasts;
    const std::string why = budgets_.Unavailable(call.event.rule_id, *budget, now, &lasts);
    if (why.empty()) continue;
    std::string until = "; a restart that can read the audit log ends this";
    if (lasts) {
      call.retry_after = std::to_string(CeilSeconds(*lasts));
      until = "; it is known again in " + call.retry_after + " s, at " +
              WallTimeIn(CeilSeconds(*lasts));
    }
    return Status(Code::kUnavailable, "budget_unavailable",
                  "rule '" + call.event.rule_id + "' budgets " + op + " on key '" + key +
                      "' (at most " + std::to_string(budget->vectors) + " vectors per " +
                      policy::FormatWindow(budget->window_seconds) + "), and " + why + until);
  }
  const policy::BudgetSpender spender{call.event.rule_id, key, call.identity->uid,
                                      call.identity->unit};
  const auto refusal = budgets_.Reserve(call.budgets, spender, std::max<uint64_t>(vectors, 1),
                                        now, vectors == 0 ? nullptr : &call.reservation);
  if (!refusal) return Status::Ok();
  const policy::Budget& budget = *refusal->budget;
  std::string message = "rule '" + call.event.rule_id + "' allows " + op + " of at most " +
                        std::to_string(budget.vectors) + " vectors per " +
                        policy::FormatWindow(budget.window_seconds) + " on key '" + key + "'" +
                        BudgetOwner(budget, *call.identity) + "; " +
                        std::to_string(refusal->spent) + " spent in the window";
  if (vectors > 0) message += ", this request has " + std::to_string(vectors);
  if (refusal->room_in) {
    call.retry_after = std::to_string(CeilSeconds(*refusal->room_in));
    message += "; room for it opens in " + call.retry_after + " s, at " +
               WallTimeIn(CeilSeconds(*refusal->room_in));
  } else {
    message += ", more than the whole budget: send at most " + std::to_string(budget.vectors) +
               " vectors per request";
  }
  call.event.decision = "denied";
  json detail = {{"operation", op},
                 {"limit", budget.vectors},
                 {"per", policy::FormatWindow(budget.window_seconds)},
                 {"spent", refusal->spent},
                 {"requested", vectors}};
  if (budget.per_caller != policy::Budget::PerCaller::kNone) {
    detail["per_caller"] = std::string(policy::PerCallerName(budget.per_caller));
  }
  call.event.extra = json{{"budget", std::move(detail)}};
  if (!call.retry_after.empty()) call.event.extra["retry_after"] = std::stoll(call.retry_after);
  return Status(Code::kResourceExhausted, "budget_exhausted", std::move(message));
}

Status Service::CountHsm(Status status) {
  if (status.code() == Code::kUnavailable) metrics_.CountHsmError();
  return status;
}

Result<Service::CachedKey> Service::KeyFor(const std::string& name,
                                           std::optional<uint32_t> version) {
  {
    std::lock_guard lock(mutex_);
    std::optional<uint32_t> wanted = version;
    if (!wanted) {
      const auto newest = newest_.find(name);
      if (newest != newest_.end()) wanted = newest->second;
    }
    if (wanted) {
      const auto cached = ciphers_.find({name, *wanted});
      if (cached != ciphers_.end()) return cached->second;
    }
  }
  auto key = keys_.FindKey(name, version);
  if (!key.ok()) {
    const std::string& reason = key.status().reason();
    // A key on the token that vecseal will not use is an operator's matter, not only a caller's.
    if (reason == "key_untrusted" || reason == "key_unprotected" ||
        reason == "key_params_tampered" || reason == "key_params_missing") {
      LogLine("error", "key_refused",
              "key=" + LogValue(name) + " reason=" + reason +
                  " message=" + LogValue(key.status().message()));
    }
    return CountHsm(std::move(key).TakeStatus());
  }
  core::SchemeParams params;
  params.approximation_factor = key->info.params.approximation_factor;
  params.transform = key->info.params.transform;
  params.key_version = key->info.version;
  auto cipher = core::Cipher::Create(key->deriver, params);
  if (!cipher.ok()) return std::move(cipher).TakeStatus();
  CachedKey entry{key->info, std::move(cipher).value()};
  std::lock_guard lock(mutex_);
  ciphers_[{name, entry.info.version}] = entry;
  if (!version) newest_[name] = entry.info.version;
  return entry;
}

Result<bool> Service::CheckDimension(Call& call, const std::string& key_name, CachedKey& key,
                                     size_t dimension) {
  VECSEAL_RETURN_IF_ERROR(core::ValidateDimension(dimension, key.info.params.transform));
  if (!key.info.params.dimension && call.settings.fix_dimension_at_first_use) {
    auto fixed = keys_.FixDimension(key_name, static_cast<uint32_t>(dimension));
    if (!fixed.ok()) return CountHsm(std::move(fixed).TakeStatus());
    {
      std::lock_guard lock(mutex_);
      for (auto& [name_version, cached] : ciphers_) {
        if (name_version.first == key_name) cached.info.params.dimension = *fixed;
      }
    }
    key.info.params.dimension = *fixed;
    if (*fixed == dimension) {
      call.event.extra["dimension_fixed"] = *fixed;
      LogLine("info", "dimension_fixed",
              "key=" + LogValue(key_name) + " dimension=" + std::to_string(*fixed));
    }
  }
  if (key.info.params.dimension && *key.info.params.dimension != dimension) {
    return Status(Code::kInvalidArgument, "dimension_mismatch",
                  "key '" + key_name + "' takes vectors of dimension " +
                      std::to_string(*key.info.params.dimension) + ", got " +
                      std::to_string(dimension) + "; a key takes one dimension: use a key made "
                      "for " + std::to_string(dimension) +
                      " (vecseal keys create NAME --dimension " + std::to_string(dimension) + ")");
  }
  if (key.cipher->HasTransform(dimension)) return false;
  const uid_t uid = call.identity->uid;
  if (!derivation_budget_.HasCredit(uid)) {
    const double wait = derivation_budget_.SecondsUntilCredit(uid);
    return Status(Code::kResourceExhausted, "derivation_rate_limited",
                  "uid " + std::to_string(uid) + " has spent its derivation time (" +
                      std::to_string(call.settings.derivation_ms_per_minute_per_uid) +
                      " ms per minute, limits.derivation_ms_per_minute_per_uid) on new keys or "
                      "key versions; retry in " +
                      std::to_string(static_cast<int64_t>(std::ceil(wait))) + " s");
  }
  return true;
}

void Service::ChargeDerivation(const Call& call, std::chrono::steady_clock::time_point started) {
  const auto spent = std::chrono::steady_clock::now() - started;
  derivation_budget_.Charge(call.identity->uid,
                            std::chrono::duration<double, std::milli>(spent).count());
}

Status Service::Encrypt(Call& call, const std::string& key_name) {
  VECSEAL_RETURN_IF_ERROR(Authorize(call, Operation::kEncrypt, key_name));
  auto request = ParseVectorRequest(call.request, /*decrypt=*/false, call.settings.max_vectors);
  if (!request.ok()) return std::move(request).TakeStatus();
  VectorBatch& batch = request->batch;
  const size_t count = batch.count();
  call.event.vectors = count;
  call.event.dimension = batch.dimension;
  call.event.reversible = request->reversible;
  VECSEAL_RETURN_IF_ERROR(SpendBudgets(call, key_name, count));

  auto key = KeyFor(key_name, request->key_version);
  if (!key.ok()) return std::move(key).TakeStatus();
  call.metric_key = key_name;
  call.event.key_version = key->info.version;
  auto config = ConfigFor(key_name);
  if (!config.ok()) return std::move(config).TakeStatus();
  if (key->info.version < config->min_encryption_version) {
    return VersionRetired(key_name, key->info.version, "encryption", "min_encryption_version",
                          config->min_encryption_version);
  }
  call.event.extra = json{{"key_format", static_cast<int>(key->info.params.format)}};
  auto derives = CheckDimension(call, key_name, *key, batch.dimension);
  if (!derives.ok()) return std::move(derives).TakeStatus();
  std::vector<core::Token> tokens(request->reversible ? count : 0);
  core::EncryptOptions options;
  options.reversible = request->reversible;
  // v2 derives every vector's own seed; the configured group size is v1's alone.
  options.group_size =
      key->info.params.format == core::KeyFormat::kV1 ? call.settings.group_size : 1;
  const auto started = std::chrono::steady_clock::now();
  const Status encrypted = key->cipher->Encrypt(batch.values, batch.values, batch.dimension,
                                                options, tokens);
  if (*derives) ChargeDerivation(call, started);
  VECSEAL_RETURN_IF_ERROR(CountHsm(encrypted));
  metrics_.CountVectors(key_name, "encrypt", count);

  call.response = HttpResponse(http::status::ok, call.request.version());
  SetVectorsResponse(call.response, request->type, key_name, key->info.version, batch, tokens);
  return Status::Ok();
}

Status Service::Decrypt(Call& call, const std::string& key_name) {
  VECSEAL_RETURN_IF_ERROR(Authorize(call, Operation::kDecrypt, key_name));
  auto request = ParseVectorRequest(call.request, /*decrypt=*/true, call.settings.max_vectors);
  if (!request.ok()) return std::move(request).TakeStatus();
  VectorBatch& batch = request->batch;
  const std::vector<core::Token>& tokens = request->tokens;
  const size_t count = batch.count();
  call.event.vectors = count;
  call.event.dimension = batch.dimension;

  // The key version comes from the tokens, so that old versions decrypt after a rotation.
  auto token_version = TokensVersion(tokens);
  if (!token_version.ok()) return std::move(token_version).TakeStatus();
  const std::optional<uint32_t> key_version = *token_version;
  call.event.key_version = key_version;
  VECSEAL_RETURN_IF_ERROR(CheckDecryptable(key_name, key_version));
  VECSEAL_RETURN_IF_ERROR(SpendBudgets(call, key_name, count));
  auto key = KeyFor(key_name, key_version);
  if (!key.ok() && key.status().reason() == "key_not_found" && key_version) {
    // Tokens carry a version, not a key name: the likely cause is tokens of another key.
    return Status(Code::kNotFound, "key_not_found",
                  "the tokens are for version " + std::to_string(*key_version) + " of a key, and '" +
                      key_name + "' has no such version on the token: were they made under "
                      "another key?");
  }
  if (!key.ok()) return std::move(key).TakeStatus();
  call.metric_key = key_name;
  call.event.extra = json{{"key_format", static_cast<int>(key->info.params.format)}};
  auto derives = CheckDimension(call, key_name, *key, batch.dimension);
  if (!derives.ok()) return std::move(derives).TakeStatus();
  const auto started = std::chrono::steady_clock::now();
  const Status decrypted =
      key->cipher->Decrypt(batch.values, batch.values, batch.dimension, tokens);
  if (*derives) ChargeDerivation(call, started);
  VECSEAL_RETURN_IF_ERROR(CountHsm(decrypted));
  metrics_.CountVectors(key_name, "decrypt", count);

  call.response = HttpResponse(http::status::ok, call.request.version());
  SetVectorsResponse(call.response, request->type, key_name, key->info.version, batch, {});
  return Status::Ok();
}

Result<nlohmann::json> Service::KeyObject(const std::string& name) {
  auto keys = keys_.ListKeys();
  if (!keys.ok()) return CountHsm(std::move(keys).TakeStatus());
  json versions = json::array();
  json formats = json::array();
  const pkcs11::KeyInfo* newest = nullptr;
  for (const auto& info : *keys) {
    if (info.name != name) continue;
    versions.push_back(info.version);
    formats.push_back(static_cast<int>(info.params.format));
    if (newest == nullptr || info.version > newest->version) newest = &info;
  }
  if (newest == nullptr) {
    return Status(Code::kNotFound, "key_not_found", "no key named '" + name + "'");
  }
  json dimension = nullptr;
  if (newest->params.dimension) dimension = *newest->params.dimension;
  return json{{"name", name},
              {"version", newest->version},
              {"versions", std::move(versions)},
              {"format", static_cast<int>(newest->params.format)},
              {"derivation", core::DerivationName(newest->params.format)},
              {"formats", std::move(formats)},
              {"approximation_factor", newest->params.approximation_factor},
              {"transform", core::TransformName(newest->params.transform)},
              {"dimension", std::move(dimension)},
              {"created", Rfc3339(newest->params.created_unix)}};
}

Result<pkcs11::KeyConfig> Service::ConfigFor(const std::string& name) {
  {
    std::lock_guard lock(mutex_);
    const auto cached = configs_.find(name);
    if (cached != configs_.end()) return cached->second;
  }
  auto config = keys_.ReadKeyConfig(name);
  if (!config.ok()) return CountHsm(std::move(config).TakeStatus());
  std::lock_guard lock(mutex_);
  configs_[name] = *config;
  return config;
}

Status Service::CheckDecryptable(const std::string& key_name, std::optional<uint32_t> version) {
  if (!version) return Status::Ok();
  auto config = ConfigFor(key_name);
  // A key that is not there is reported by the lookup that follows, with its own message.
  if (!config.ok() && config.status().reason() == "key_not_found") return Status::Ok();
  if (!config.ok()) return std::move(config).TakeStatus();
  if (*version >= config->min_decryption_version) return Status::Ok();
  return VersionRetired(key_name, *version, "decryption", "min_decryption_version",
                        config->min_decryption_version);
}

void Service::ForgetKey(const std::string& name) {
  std::lock_guard lock(mutex_);
  std::erase_if(ciphers_, [&](const auto& entry) { return entry.first.first == name; });
  newest_.erase(name);
  configs_.erase(name);
}

Status Service::GetKey(Call& call, const std::string& key_name) {
  // Exactly the keys GET /v1/keys would list to this caller, so that neither answer reveals a
  // name the other hides; decided before the token is asked whether the key exists.
  const policy::Decision may_list = call.policy->DecideKeysList(*call.identity);
  const policy::Decision listed = call.policy->DecideListed(*call.identity, key_name);
  call.event.decision = may_list.granted && listed.granted ? "granted" : "denied";
  call.event.rule_id = may_list.granted && listed.granted ? listed.rule_id : "";
  if (!may_list.granted || !listed.granted) {
    return Status(Code::kPermissionDenied, "permission_denied",
                  "no rule grants keys.list on key '" + key_name + "'");
  }
  return KeyAnswer(call, key_name);
}

Status Service::ConfigureKey(Call& call, const std::string& key_name) {
  VECSEAL_RETURN_IF_ERROR(Authorize(call, Operation::kKeysConfig, key_name));
  VECSEAL_RETURN_IF_ERROR(CheckKeyCreationBody(call));
  auto parsed = ParseJsonObject(call.request);
  if (!parsed.ok()) return std::move(parsed).TakeStatus();
  const json& body = *parsed;
  for (const auto& [field, value] : body.items()) {
    if (field != "min_encryption_version" && field != "min_decryption_version") {
      return InvalidRequest("unknown field \"" + field.substr(0, 32) +
                            "\" (expected min_encryption_version, min_decryption_version)");
    }
    if (!value.is_number_unsigned() || value.get<uint64_t>() == 0 ||
        value.get<uint64_t>() > UINT32_MAX) {
      return InvalidRequest("\"" + field + "\" must be a key version (an integer from 1)");
    }
  }
  if (body.empty()) {
    return InvalidRequest("give min_encryption_version, min_decryption_version or both");
  }
  // The stored values, not a cached copy: what is not given stays as the token has it. One
  // change at a time, so that two requests setting one field each do not undo each other.
  std::lock_guard changing(key_config_mutex_);
  auto current = keys_.ReadKeyConfig(key_name);
  if (!current.ok()) return CountHsm(std::move(current).TakeStatus());
  pkcs11::KeyConfig wanted = *current;
  if (body.contains("min_encryption_version")) {
    wanted.min_encryption_version = body["min_encryption_version"].get<uint32_t>();
  }
  if (body.contains("min_decryption_version")) {
    wanted.min_decryption_version = body["min_decryption_version"].get<uint32_t>();
  }
  call.event.extra = json{{"min_encryption_version", wanted.min_encryption_version},
                          {"min_decryption_version", wanted.min_decryption_version}};
  auto stored = keys_.ConfigureKey(key_name, wanted);
  if (!stored.ok()) return CountHsm(std::move(stored).TakeStatus());
  {
    std::lock_guard lock(mutex_);
    configs_[key_name] = *stored;
  }
  LogLine("info", "key_configured",
          "key=" + LogValue(key_name) +
              " min_encryption_version=" + std::to_string(stored->min_encryption_version) +
              " min_decryption_version=" + std::to_string(stored->min_decryption_version));
  return KeyAnswer(call, key_name);
}

Status Service::KeyAnswer(Call& call, const std::string& key_name) {
  call.metric_key = key_name;
  auto object = KeyObject(key_name);
  if (!object.ok()) return std::move(object).TakeStatus();
  auto config = ConfigFor(key_name);
  if (!config.ok()) return std::move(config).TakeStatus();
  json& body = *object;
  body["min_encryption_version"] = config->min_encryption_version;
  body["min_decryption_version"] = config->min_decryption_version;
  json states = json::array();
  for (const json& version : body["versions"]) {
    const uint32_t v = version.get<uint32_t>();
    states.push_back(v >= config->min_encryption_version   ? "active"
                     : v >= config->min_decryption_version ? "decrypt_only"
                                                           : "retired");
  }
  body["states"] = std::move(states);
  call.response = JsonResponse(http::status::ok, body, call.request.version());
  return Status::Ok();
}

Status Service::DeleteKey(Call& call, const std::string& key_name) {
  VECSEAL_RETURN_IF_ERROR(Authorize(call, Operation::kKeysDelete, key_name));
  auto force = ForceParameter(call.request);
  if (!force.ok()) return std::move(force).TakeStatus();
  const std::vector<std::string> naming = call.policy->RulesNaming(key_name);
  if (!naming.empty()) {
    call.event.extra = json{{"rules_naming_key", naming}, {"force", *force}};
  }
  if (!naming.empty() && !*force) {
    std::string rules;
    for (const std::string& id : naming) rules += (rules.empty() ? "'" : ", '") + id + "'";
    return Status(Code::kFailedPrecondition, "key_in_policy",
                  "the policy still names key '" + key_name + "' (rule " + rules +
                      "), so callers may still depend on it; remove it from the policy and "
                      "reload, or delete with force=true");
  }
  // What cannot be undone is not started while the log could not record it; the record is
  // still written after the deletion, so a log that fails in between leaves a 503 for a key
  // that is gone (the daemon's log says so).
  if (!audit_log_.healthy()) {
    return Status(Code::kUnavailable, "audit_unavailable",
                  "the audit log cannot be written now, so nothing is deleted; vecseald's log "
                  "says why");
  }
  auto deleted = keys_.DeleteKey(key_name);
  // Whatever happened on the token, nothing cached about the key may be used again.
  ForgetKey(key_name);
  if (!deleted.ok()) {
    LogLine("error", "key_delete_failed",
            "key=" + LogValue(key_name) + " reason=" + deleted.status().reason() +
                " message=" + LogValue(deleted.status().message()));
    return CountHsm(std::move(deleted).TakeStatus());
  }
  call.event.extra["destroyed_versions"] = *deleted;
  LogLine("info", "key_deleted",
          "key=" + LogValue(key_name) + " versions=" + std::to_string(deleted->size()));
  call.response = JsonResponse(
      http::status::ok, json{{"name", key_name}, {"destroyed_versions", *deleted}},
      call.request.version());
  return Status::Ok();
}

Status Service::Rewrap(Call& call, const std::string& key_name) {
  VECSEAL_RETURN_IF_ERROR(Authorize(call, Operation::kRewrap, key_name));
  auto request = ParseVectorRequest(call.request, /*decrypt=*/true, call.settings.max_vectors);
  if (!request.ok()) return std::move(request).TakeStatus();
  VectorBatch& batch = request->batch;
  const size_t count = batch.count();
  call.event.vectors = count;
  call.event.dimension = batch.dimension;
  call.event.reversible = true;
  auto token_version = TokensVersion(request->tokens);
  if (!token_version.ok()) return std::move(token_version).TakeStatus();
  VECSEAL_RETURN_IF_ERROR(CheckDecryptable(key_name, *token_version));
  // Each rewrap is a fresh encryption of the same plaintext: unbounded, they would let a caller
  // average the noise away. So they spend from budgets like encryptions.
  VECSEAL_RETURN_IF_ERROR(SpendBudgets(call, key_name, count));
  auto from = KeyFor(key_name, *token_version);
  if (!from.ok()) return std::move(from).TakeStatus();
  auto to = KeyFor(key_name, std::nullopt);
  if (!to.ok()) return std::move(to).TakeStatus();
  call.metric_key = key_name;
  call.event.key_version = to->info.version;
  call.event.extra = json{{"from_key_version", from->info.version},
                          {"key_format", static_cast<int>(to->info.params.format)}};
  auto derives_from = CheckDimension(call, key_name, *from, batch.dimension);
  if (!derives_from.ok()) return std::move(derives_from).TakeStatus();
  auto derives_to = CheckDimension(call, key_name, *to, batch.dimension);
  if (!derives_to.ok()) return std::move(derives_to).TakeStatus();

  // The plaintext exists only here, in locked memory wiped when it goes out of scope.
  auto plain = core::SecureBuffer::Allocate(batch.values.size() * sizeof(float));
  if (!plain.ok()) return std::move(plain).TakeStatus();
  const std::span<float> plain_values(plain->as<float>(), batch.values.size());
  const auto started = std::chrono::steady_clock::now();
  Status status =
      from->cipher->Decrypt(batch.values, plain_values, batch.dimension, request->tokens);
  std::vector<core::Token> tokens(count);
  if (status.ok()) {
    core::EncryptOptions options;
    options.reversible = true;
    options.group_size =
        to->info.params.format == core::KeyFormat::kV1 ? call.settings.group_size : 1;
    status = to->cipher->Encrypt(plain_values, batch.values, batch.dimension, options, tokens);
  }
  if (*derives_from || *derives_to) ChargeDerivation(call, started);
  VECSEAL_RETURN_IF_ERROR(CountHsm(status));
  metrics_.CountVectors(key_name, "rewrap", count);
  call.response = HttpResponse(http::status::ok, call.request.version());
  SetVectorsResponse(call.response, request->type, key_name, to->info.version, batch, tokens);
  return Status::Ok();
}

Status Service::ListKeys(Call& call) {
  const policy::Decision allowed = call.policy->DecideKeysList(*call.identity);
  call.event.decision = allowed.granted ? "granted" : "denied";
  call.event.rule_id = allowed.rule_id;
  if (!allowed.granted) {
    return Status(Code::kPermissionDenied, "permission_denied",
                  "no rule grants keys.list on any key");
  }
  auto keys = keys_.ListKeys();
  if (!keys.ok()) return CountHsm(std::move(keys).TakeStatus());
  json listed = json::array();
  std::string current;
  for (const auto& info : *keys) {
    if (info.name == current) continue;
    current = info.name;
    if (!call.policy->DecideListed(*call.identity, info.name).granted) continue;
    auto object = KeyObject(info.name);
    if (!object.ok()) return std::move(object).TakeStatus();
    listed.push_back(std::move(object).value());
  }
  call.response = JsonResponse(http::status::ok, json{{"keys", std::move(listed)}},
                               call.request.version());
  return Status::Ok();
}

Status Service::CreateKey(Call& call) {
  auto parsed = ParseJsonObject(call.request);
  if (!parsed.ok()) return std::move(parsed).TakeStatus();
  const json& body = *parsed;
  for (const auto& [field, value] : body.items()) {
    if (field != "name" && field != "approximation_factor" && field != "transform" &&
        field != "dimension" && field != "derivation") {
      return InvalidRequest("unknown field \"" + field.substr(0, 32) +
                            "\" (expected name, approximation_factor, transform, dimension, "
                            "derivation)");
    }
  }
  if (!body.contains("name") || !body["name"].is_string()) {
    return InvalidRequest("\"name\" must be a string");
  }
  const std::string name = body["name"].get<std::string>();
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(name));
  call.event.key = name;
  VECSEAL_RETURN_IF_ERROR(Authorize(call, Operation::kKeysCreate, name));

  pkcs11::KeyParams params;
  if (!body.contains("approximation_factor") || !body["approximation_factor"].is_number()) {
    return InvalidRequest("\"approximation_factor\" must be a number (β, e.g. 2.5)");
  }
  params.approximation_factor = body["approximation_factor"].get<double>();
  if (body.contains("transform")) {
    if (!body["transform"].is_string()) {
      return InvalidRequest("\"transform\" must be \"rotate\" or \"permute\"");
    }
    auto transform = core::ParseTransform(body["transform"].get<std::string>());
    if (!transform.ok()) return std::move(transform).TakeStatus();
    params.transform = *transform;
  }
  if (body.contains("dimension") && !body["dimension"].is_null()) {
    if (!body["dimension"].is_number_unsigned() ||
        body["dimension"].get<uint64_t>() > core::kMaxDimension) {
      return Status(Code::kInvalidArgument, "invalid_dimension",
                    "\"dimension\" must be null or an integer between 1 and " +
                        std::to_string(core::kMaxDimension));
    }
    params.dimension = body["dimension"].get<uint32_t>();
  }
  params.format = call.settings.new_keys;
  if (body.contains("derivation")) {
    if (!body["derivation"].is_string()) {
      return InvalidRequest("\"derivation\" must be \"aes\" or \"hmac\"");
    }
    auto format = core::ParseDerivation(body["derivation"].get<std::string>());
    if (!format.ok()) return std::move(format).TakeStatus();
    params.format = *format;
  }
  VECSEAL_RETURN_IF_ERROR(pkcs11::ValidateNewKeyParams(params));
  auto created = keys_.CreateKey(name, params);
  if (!created.ok()) return CountHsm(std::move(created).TakeStatus());
  call.event.key_version = created->version;
  call.event.extra = json{{"key_format", static_cast<int>(created->params.format)}};
  call.metric_key = name;
  auto object = KeyObject(name);
  if (!object.ok()) return std::move(object).TakeStatus();
  call.response = JsonResponse(http::status::created, *object, call.request.version());
  return Status::Ok();
}

Status Service::RotateKey(Call& call, const std::string& key_name) {
  VECSEAL_RETURN_IF_ERROR(Authorize(call, Operation::kKeysRotate, key_name));
  auto rotated = keys_.RotateKey(key_name, call.settings.new_keys);
  if (!rotated.ok()) return CountHsm(std::move(rotated).TakeStatus());
  call.event.extra = json{{"key_format", static_cast<int>(rotated->params.format)}};
  {
    std::lock_guard lock(mutex_);
    newest_.erase(key_name);
  }
  call.event.key_version = rotated->version;
  call.metric_key = key_name;
  auto object = KeyObject(key_name);
  if (!object.ok()) return std::move(object).TakeStatus();
  call.response = JsonResponse(http::status::ok, *object, call.request.version());
  return Status::Ok();
}

Status Service::WhoAmI(Call& call) {
  json grants = call.policy->GrantsFor(*call.identity);
  const std::vector<policy::RuleBudget> all = call.policy->budgets();
  const auto now = std::chrono::steady_clock::now();
  for (json& grant : grants) {
    if (!grant.contains("budgets")) continue;
    const std::string rule_id = grant["rule"].get<std::string>();
    size_t index = 0;
    for (const policy::RuleBudget& entry : all) {
      if (entry.rule_id != rule_id) continue;
      json& shown = grant["budgets"][index++];
      const policy::Budget& budget = entry.budget;
      const std::string mine =
          policy::BudgetCaller(budget.per_caller, call.identity->uid, call.identity->unit);
      std::optional<std::chrono::steady_clock::duration> lasts;
      const std::string unavailable = budgets_.Unavailable(rule_id, budget, now, &lasts);
      if (!unavailable.empty()) shown["unavailable"] = unavailable;
      shown["spent"] = json::array();
      for (const policy::BudgetCounter& counter : budgets_.Counters(rule_id, budget, now)) {
        if (counter.caller != mine) continue;
        const policy::BudgetSpender spender{rule_id, counter.key, call.identity->uid,
                                            call.identity->unit};
        const policy::BudgetLedger::Usage usage = budgets_.Spent(budget, spender, now);
        shown["spent"].push_back(
            {{"key", counter.key},
             {"vectors", usage.spent},
             {"room_opens_in_seconds",
              usage.room_in > std::chrono::steady_clock::duration::zero()
                  ? CeilSeconds(usage.room_in)
                  : 0}});
      }
    }
  }
  json body = {{"identity", call.identity->ToJson()}, {"grants", std::move(grants)}};
  call.response = JsonResponse(http::status::ok, body, call.request.version());
  return Status::Ok();
}

Status Service::Health(Call& call) {
  call.health = true;
  const Status hsm = keys_.Ping();
  if (!hsm.ok()) metrics_.CountHsmError();
  const bool audit_ok = audit_log_.healthy();
  const bool ok = hsm.ok() && audit_ok;
  json body = {{"status", ok ? "ok" : "unavailable"},
               {"hsm", hsm.ok() ? "ok" : "unavailable"},
               {"audit", audit_ok ? "ok" : "unavailable"},
               {"version", kVersion}};
  call.response = JsonResponse(ok ? http::status::ok : http::status::service_unavailable, body,
                               call.request.version());
  if (!hsm.ok()) call.event.extra = json{{"hsm", hsm.reason()}};
  return Status::Ok();
}

Status Service::Metrics(Call& call) {
  call.response = HttpResponse(http::status::ok, call.request.version());
  call.response.set(http::field::content_type, "text/plain; version=0.0.4");
  // Key names, and per-key counts, only for the keys this caller may list.
  const bool may_list = call.policy->DecideKeysList(*call.identity).granted;
  call.response.body().text = metrics_.RenderPrometheus([&](const std::string& key) {
    return may_list && call.policy->DecideListed(*call.identity, key).granted;
  });
  return Status::Ok();
}

HttpResponse Service::Finish(Call& call, const Status& status) {
  const unsigned version = call.request.version() == 10 ? 10 : 11;
  if (status.ok()) {
    call.event.event = call.event.operation;
  } else {
    const bool denied =
        status.code() == Code::kPermissionDenied || status.reason() == "budget_exhausted";
    call.event.event = denied ? "deny" : "error";
    call.event.error_code = status.reason();
    call.response = ErrorResponse(status, version);
    if (!call.allow.empty()) call.response.set(http::field::allow, call.allow);
  }
  const Status recorded = audit_log_.Append(call.event);
  // Only vectors that left the daemon, each with its record, stay spent.
  if ((!status.ok() || !recorded.ok()) && !call.reservation.parts.empty()) {
    budgets_.Release(call.reservation);
  }
  if (recorded.ok() && !call.retry_after.empty()) {
    call.response.set(http::field::retry_after, call.retry_after);
  }
  if (!recorded.ok()) {
    // Fail closed: nothing leaves the daemon that the audit log does not hold.
    metrics_.CountAuditError();
    LogLine("error", "audit_failed",
            "request=" + call.event.request_id + " reason=" + LogValue(recorded.reason()) +
                " message=" + LogValue(recorded.message()));
    if (call.health) {
      json body = {{"status", "unavailable"},
                   {"hsm", "unknown"},
                   {"audit", "unavailable"},
                   {"version", kVersion}};
      call.response = JsonResponse(http::status::service_unavailable, body, version);
    } else {
      // The cause names the daemon's own files: it goes to the daemon's log, not to callers.
      call.response = ErrorResponse(
          Status(Code::kUnavailable, "audit_unavailable",
                 "the audit record of this request could not be written; vecseald's log says why"),
          version);
    }
  }
  const std::string outcome = !recorded.ok() ? "audit_unavailable"
                              : status.ok()  ? "ok"
                                             : status.reason();
  metrics_.CountRequest(call.metric_key, call.event.operation, outcome,
                        std::chrono::steady_clock::now() - call.start);
  call.response.set("Vecseal-Request-Id", call.event.request_id);
  // No route takes HEAD: it gets its 405 (or 404), and a response to HEAD carries no body
  // (RFC 9110 §9.3.2).
  if (call.request.method() == http::verb::head) {
    call.response.body().text.clear();
    call.response.body().segments.clear();
  }
  call.response.prepare_payload();
  return std::move(call.response);
}

// Deciding before reading (docs/api.md, "When the body is read"). Kept apart from Route and the
// handlers, which still decide in full once the body is read.
namespace {

// A key creation or configuration body is a few short fields; anything larger is not one.
constexpr size_t kMaxKeyCreationBodyBytes = 64 << 10;

Status KeyCreationBodyTooLarge() {
  return Status(Code::kResourceExhausted, "body_too_large",
                "a key creation or configuration body is at most " +
                    std::to_string(kMaxKeyCreationBodyBytes) + " bytes");
}

// The Content-Length the request declares; nullopt for a chunked body.
std::optional<uint64_t> DeclaredLength(const HttpRequest& request) {
  const auto value = HeaderValue(request, "Content-Length");
  uint64_t length = 0;
  if (!value || std::from_chars(value->data(), value->data() + value->size(), length).ec !=
                    std::errc()) {
    return std::nullopt;
  }
  return length;
}

}  // namespace

std::optional<HttpResponse> Service::Screen(ConnectionContext& connection, HttpRequest& header) {
  Call call(header, connection);
  {
    std::lock_guard lock(mutex_);
    call.policy = policy_;
    call.settings = settings_;
  }
  const bool body_endpoint = ExpectsBody(header);
  if (body_endpoint) {
    const Status admitted = Admit(call);
    if (admitted.ok()) return std::nullopt;
    {
      std::lock_guard lock(mutex_);
      call.event.request_id = std::to_string(next_request_++);
    }
    return Finish(call, admitted);
  }
  // No other endpoint reads a body: it is answered now, and the body never read.
  {
    std::lock_guard lock(mutex_);
    call.event.request_id = std::to_string(next_request_++);
  }
  const Status status = Route(call);
  return Finish(call, status);
}

Status Service::Admit(Call& call) {
  auto identity = call.connection.Refresh(call.policy->digest_needs());
  if (!identity.ok()) return std::move(identity).TakeStatus();
  call.identity = *identity;
  call.event.caller = AuditCaller(*call.identity);
  std::string_view target(call.request.target().data(), call.request.target().size());
  target = target.substr(0, target.find('?'));
  if (target == "/v1/keys") {
    call.event.operation = "keys.create";
    return AdmitKeyCreation(call);
  }
  // ExpectsBody holds: /v1/keys/.../encrypt or /decrypt, split as Route splits it.
  const std::string_view rest = target.substr(std::string_view("/v1/keys/").size());
  const size_t slash = rest.find('/');
  const std::string_view action =
      slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
  Operation op = Operation::kEncrypt;
  if (action == "encrypt") {
    call.event.operation = "encrypt";
  } else if (action == "decrypt") {
    call.event.operation = "decrypt";
    op = Operation::kDecrypt;
  } else if (action == "rewrap") {
    call.event.operation = "rewrap";
    op = Operation::kRewrap;
  } else if (action == "config") {
    call.event.operation = "keys.config";
    op = Operation::kKeysConfig;
  } else {
    call.event.operation = "unknown";
    return Status(Code::kNotFound, "not_found", "no such endpoint; see docs/api.md");
  }
  const std::string name(rest.substr(0, slash));
  call.event.key = name;
  const Status valid = wire::CheckKeyName(name);
  if (!valid.ok()) {
    call.event.key.clear();  // not a name: keep caller input out of the record
    return valid;
  }
  VECSEAL_RETURN_IF_ERROR(Authorize(call, op, name));
  if (op == Operation::kKeysConfig) {
    if (ContentTypeOf(call.request) != ContentType::kJson) return UnsupportedMediaType();
    const auto length = DeclaredLength(call.request);
    if (length && *length > kMaxKeyCreationBodyBytes) return KeyCreationBodyTooLarge();
    return Status::Ok();
  }
  if (ContentTypeOf(call.request) == ContentType::kOther) return UnsupportedMediaType();
  return SpendBudgets(call, name, 0);
}

// The key's name is in the body, so only "may this caller create any key" can be asked before
// it is read; CreateKey decides on the name itself afterwards.
Status Service::AdmitKeyCreation(Call& call) {
  if (!call.policy->GrantsAny(*call.identity, Operation::kKeysCreate)) {
    call.event.decision = "denied";
    return Status(Code::kPermissionDenied, "permission_denied",
                  "no rule grants keys.create on any key");
  }
  if (ContentTypeOf(call.request) != ContentType::kJson) return UnsupportedMediaType();
  const auto length = DeclaredLength(call.request);
  if (length && *length > kMaxKeyCreationBodyBytes) return KeyCreationBodyTooLarge();
  return Status::Ok();
}

Status Service::CheckKeyCreationBody(const Call& call) {
  const std::string_view text = call.request.body().view();
  if (text.size() > kMaxKeyCreationBodyBytes) return KeyCreationBodyTooLarge();
  return CheckJsonDepth(text, kMaxKeyJsonDepth);
}

}  // namespace vecseal::daemon
