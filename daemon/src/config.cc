#include "vecseal/daemon/config.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <utility>

#include <nlohmann/json.hpp>

namespace vecseal::daemon {
namespace {

using nlohmann::json;

Status ConfigError(const std::string& path, const std::string& what) {
  return Status(Code::kInvalidArgument, "invalid_config", path + ": " + what);
}

const char* TypeName(const json& value) {
  if (value.is_number_integer()) return "an integer";
  if (value.is_number()) return "a number";
  return value.type_name();
}

// Walks one JSON object: each Take* consumes a key; Finish rejects whatever was not consumed.
class ObjectReader {
 public:
  ObjectReader(const json& object, std::string path) : object_(object), path_(std::move(path)) {}

  Status CheckIsObject() const {
    if (!object_.is_object()) {
      return ConfigError(path_, std::string("must be an object, not ") + TypeName(object_));
    }
    return Status::Ok();
  }

  std::string PathOf(std::string_view key) const { return path_ + "." + std::string(key); }

  const json* Find(std::string_view key) {
    auto it = object_.find(std::string(key));
    if (it == object_.end()) return nullptr;
    seen_.insert(std::string(key));
    return &*it;
  }

  Status TakeString(std::string_view key, std::string& out, bool allow_empty = false) {
    const json* value = Find(key);
    if (value == nullptr) return Status::Ok();
    if (!value->is_string()) {
      return ConfigError(PathOf(key), std::string("must be a string, not ") + TypeName(*value));
    }
    auto text = value->get<std::string>();
    if (text.empty() && !allow_empty) return ConfigError(PathOf(key), "must not be empty");
    if (text.find('\0') != std::string::npos) {
      return ConfigError(PathOf(key), "must not contain a NUL character");
    }
    out = std::move(text);
    return Status::Ok();
  }

  Status TakeDerivation(std::string_view key, core::KeyFormat& out) {
    std::string name;
    VECSEAL_RETURN_IF_ERROR(TakeString(key, name));
    if (name.empty()) return Status::Ok();
    auto format = core::ParseDerivation(name);
    if (!format.ok()) {
      return ConfigError(PathOf(key), "must be \"aes\" (format v2, the default) or \"hmac\" "
                                      "(format v1, for a module without CKM_AES_ECB)");
    }
    out = *format;
    return Status::Ok();
  }

  Status TakePath(std::string_view key, std::string& out) {
    if (object_.find(std::string(key)) == object_.end()) return Status::Ok();
    std::string text;
    VECSEAL_RETURN_IF_ERROR(TakeString(key, text));
    if (text.front() != '/') {
      return ConfigError(PathOf(key), "must be an absolute path (starting with '/'), got '" +
                                          text + "'");
    }
    out = std::move(text);
    return Status::Ok();
  }

  Status TakeBool(std::string_view key, bool& out) {
    const json* value = Find(key);
    if (value == nullptr) return Status::Ok();
    if (!value->is_boolean()) {
      return ConfigError(PathOf(key), std::string("must be true or false, not ") +
                                          TypeName(*value));
    }
    out = value->get<bool>();
    return Status::Ok();
  }

  Status TakeUnsigned(std::string_view key, uint64_t min, uint64_t max, uint64_t& out) {
    const json* value = Find(key);
    if (value == nullptr) return Status::Ok();
    if (!value->is_number_integer()) {
      return ConfigError(PathOf(key), std::string("must be an integer, not ") + TypeName(*value));
    }
    if (value->is_number_integer() && !value->is_number_unsigned() && value->get<int64_t>() < 0) {
      return ConfigError(PathOf(key), "must be between " + std::to_string(min) + " and " +
                                          std::to_string(max) + ", got " + value->dump());
    }
    uint64_t number = value->get<uint64_t>();
    if (number < min || number > max) {
      return ConfigError(PathOf(key), "must be between " + std::to_string(min) + " and " +
                                          std::to_string(max) + ", got " + value->dump());
    }
    out = number;
    return Status::Ok();
  }

  template <typename T>
  Status TakeNumber(std::string_view key, uint64_t min, uint64_t max, T& out) {
    uint64_t number = static_cast<uint64_t>(out);
    VECSEAL_RETURN_IF_ERROR(TakeUnsigned(key, min, max, number));
    out = static_cast<T>(number);
    return Status::Ok();
  }

  Status TakeMillis(std::string_view key, std::chrono::milliseconds& out) {
    uint64_t millis = static_cast<uint64_t>(out.count());
    VECSEAL_RETURN_IF_ERROR(TakeUnsigned(key, 1, 24ull * 3600 * 1000, millis));
    out = std::chrono::milliseconds(millis);
    return Status::Ok();
  }

  Status Finish() const {
    for (const auto& [key, value] : object_.items()) {
      if (!seen_.contains(key)) {
        return ConfigError(PathOf(key), "unknown key (check the spelling against "
                                        "docs/configuration.md)");
      }
    }
    return Status::Ok();
  }

 private:
  const json& object_;
  std::string path_;
  std::set<std::string, std::less<>> seen_;
};

// Runs `parse` on the sub-object at `key` when present.
template <typename Parse>
Status TakeObject(ObjectReader& parent, std::string_view key, Parse&& parse) {
  const json* value = parent.Find(key);
  if (value == nullptr) return Status::Ok();
  ObjectReader reader(*value, parent.PathOf(key));
  VECSEAL_RETURN_IF_ERROR(reader.CheckIsObject());
  VECSEAL_RETURN_IF_ERROR(parse(reader));
  return reader.Finish();
}

Status ParseMode(ObjectReader& reader, mode_t& mode) {
  const json* value = reader.Find("mode");
  if (value == nullptr) return Status::Ok();
  const std::string path = reader.PathOf("mode");
  // An octal string, because JSON has no octal literals and 660 as a decimal is a trap.
  if (!value->is_string()) {
    return ConfigError(path, std::string("must be an octal string such as \"0660\", not ") +
                                 TypeName(*value));
  }
  const auto text = value->get<std::string>();
  if (text.empty() || text.size() > 4 || text.find_first_not_of("01234567") != std::string::npos) {
    return ConfigError(path, "must be an octal string such as \"0660\", got \"" + text + "\"");
  }
  const auto parsed = static_cast<mode_t>(std::stoul(text, nullptr, 8));
  if ((parsed & 0007) != 0) {
    return ConfigError(path, "must not grant any permission to others (the last digit must be "
                             "0), got \"" + text + "\"");
  }
  if ((parsed & 0600) != 0600) {
    return ConfigError(path, "must give the owner read and write (0600 at least), got \"" +
                                 text + "\"");
  }
  mode = parsed;
  return Status::Ok();
}

Status ParsePin(ObjectReader& reader, PinSource& pin) {
  VECSEAL_RETURN_IF_ERROR(reader.TakePath("file", pin.file));
  VECSEAL_RETURN_IF_ERROR(reader.TakeString("credential", pin.credential));
  if (pin.credential.find('/') != std::string::npos) {
    return ConfigError(reader.PathOf("credential"),
                       "must be a credential name, not a path (no '/')");
  }
  if (!pin.file.empty() && !pin.credential.empty()) {
    return ConfigError(reader.PathOf("file"),
                       "set either \"file\" or \"credential\", not both");
  }
  return Status::Ok();
}

Status ParseSocket(ObjectReader& r, SocketConfig& socket) {
  VECSEAL_RETURN_IF_ERROR(r.TakePath("path", socket.path));
  VECSEAL_RETURN_IF_ERROR(ParseMode(r, socket.mode));
  return r.TakeString("group", socket.group);
}

Status TakeTokenLabel(ObjectReader& r, std::string& label) {
  VECSEAL_RETURN_IF_ERROR(r.TakeString("token_label", label));
  if (label.size() > 32) {
    return ConfigError(r.PathOf("token_label"), "must be at most 32 bytes (PKCS#11 limit)");
  }
  return Status::Ok();
}

Status ParsePkcs11(ObjectReader& r, Pkcs11Config& pkcs11, bool require_pin) {
  VECSEAL_RETURN_IF_ERROR(r.TakePath("module", pkcs11.module));
  VECSEAL_RETURN_IF_ERROR(TakeTokenLabel(r, pkcs11.token_label));
  const auto parse_pin = [&](ObjectReader& p) { return ParsePin(p, pkcs11.pin); };
  VECSEAL_RETURN_IF_ERROR(TakeObject(r, "pin", parse_pin));
  if (require_pin && pkcs11.pin.file.empty() && pkcs11.pin.credential.empty()) {
    return ConfigError(r.PathOf("pin"), "is required: {\"file\": \"/etc/vecseal/pin\"} or "
                                        "{\"credential\": \"vecseal-pin\"}");
  }
  VECSEAL_RETURN_IF_ERROR(r.TakeNumber("sessions", 1, 256, pkcs11.sessions));
  return r.TakeBool("accept_imported_keys", pkcs11.accept_imported_keys);
}

// A budget smaller than one body would refuse every request of the largest allowed size.
Status CheckBodyBudget(const ObjectReader& r, const Limits& limits) {
  if (limits.max_buffered_body_bytes >= limits.max_body_bytes) return Status::Ok();
  return ConfigError(r.PathOf("max_buffered_body_bytes"),
                     "must be at least max_body_bytes (" + std::to_string(limits.max_body_bytes) +
                         "), got " + std::to_string(limits.max_buffered_body_bytes) +
                         "; raise it or lower max_body_bytes");
}

Status ParseLimits(ObjectReader& r, Limits& limits) {
  VECSEAL_RETURN_IF_ERROR(r.TakeNumber("max_body_bytes", 64, 1ull << 32, limits.max_body_bytes));
  VECSEAL_RETURN_IF_ERROR(r.TakeNumber("max_vectors", 1, 10'000'000, limits.max_vectors));
  VECSEAL_RETURN_IF_ERROR(r.TakeNumber("max_connections", 1, 65536, limits.max_connections));
  VECSEAL_RETURN_IF_ERROR(r.TakeNumber("max_connections_per_uid", 1, 65536,
                                       limits.max_connections_per_uid));
  VECSEAL_RETURN_IF_ERROR(r.TakeNumber("max_buffered_body_bytes", 64, 1ull << 40,
                                       limits.max_buffered_body_bytes));
  VECSEAL_RETURN_IF_ERROR(CheckBodyBudget(r, limits));
  VECSEAL_RETURN_IF_ERROR(r.TakeNumber("derivation_ms_per_minute_per_uid", 1, 3'600'000,
                                       limits.derivation_ms_per_minute_per_uid));
  VECSEAL_RETURN_IF_ERROR(r.TakeNumber("denied_requests_per_minute_per_uid", 1, 1'000'000,
                                       limits.denied_requests_per_minute_per_uid));
  VECSEAL_RETURN_IF_ERROR(
      r.TakeNumber("max_header_bytes", 1024, 1 << 20, limits.max_header_bytes));
  VECSEAL_RETURN_IF_ERROR(r.TakeMillis("header_timeout_ms", limits.header_timeout));
  VECSEAL_RETURN_IF_ERROR(r.TakeMillis("body_timeout_ms", limits.body_timeout));
  VECSEAL_RETURN_IF_ERROR(r.TakeMillis("idle_timeout_ms", limits.idle_timeout));
  return r.TakeMillis("write_timeout_ms", limits.write_timeout);
}

Status ParseThreads(ObjectReader& r, ThreadsConfig& threads) {
  VECSEAL_RETURN_IF_ERROR(r.TakeNumber("io", 1, 64, threads.io));
  return r.TakeNumber("workers", 1, 256, threads.workers);
}

Status ParseAuditPkcs11(ObjectReader& r, AuditPkcs11Config& token) {
  VECSEAL_RETURN_IF_ERROR(r.TakePath("module", token.module));
  VECSEAL_RETURN_IF_ERROR(TakeTokenLabel(r, token.token_label));
  if (token.token_label.empty()) {
    return ConfigError(r.PathOf("token_label"),
                       "is required: the label of the token that holds the audit key alone");
  }
  const auto parse_pin = [&](ObjectReader& p) { return ParsePin(p, token.pin); };
  VECSEAL_RETURN_IF_ERROR(TakeObject(r, "pin", parse_pin));
  if (token.pin.file.empty() && token.pin.credential.empty()) {
    return ConfigError(r.PathOf("pin"), "is required: {\"file\": \"/etc/vecseal/audit.pin\"} or "
                                        "{\"credential\": \"vecseal-audit-pin\"}");
  }
  return Status::Ok();
}

Status ParseAudit(ObjectReader& r, AuditConfig& audit) {
  VECSEAL_RETURN_IF_ERROR(r.TakePath("directory", audit.directory));
  VECSEAL_RETURN_IF_ERROR(r.TakePath("single_file", audit.single_file));
  VECSEAL_RETURN_IF_ERROR(r.TakeString("key_label", audit.key_label));
  if (const json* algorithm = r.Find("key_algorithm"); algorithm != nullptr) {
    auto parsed = algorithm->is_string()
                      ? pkcs11::ParseAuditKeyAlgorithm(algorithm->get<std::string>())
                      : std::nullopt;
    if (!parsed) {
      return ConfigError(r.PathOf("key_algorithm"),
                         "must be \"auto\", \"ecdsa-p256\" or \"rsa-pss-3072\"");
    }
    audit.key_algorithm = *parsed;
  }
  const json* sync = r.Find("sync");
  if (sync != nullptr) {
    if (!sync->is_string() || (*sync != "every_record" && *sync != "interval")) {
      return ConfigError(r.PathOf("sync"), "must be \"every_record\" or \"interval\"");
    }
    audit.sync_every_record = *sync == "every_record";
  }
  VECSEAL_RETURN_IF_ERROR(r.TakeMillis("sync_interval_ms", audit.sync_interval));
  VECSEAL_RETURN_IF_ERROR(r.TakeNumber("seal_every_records", 1, 1'000'000'000,
                                       audit.seal_every_records));
  uint64_t seal_seconds = static_cast<uint64_t>(audit.seal_every.count());
  VECSEAL_RETURN_IF_ERROR(r.TakeUnsigned("seal_every_seconds", 1, 86400, seal_seconds));
  audit.seal_every = std::chrono::seconds(seal_seconds);
  VECSEAL_RETURN_IF_ERROR(r.TakeNumber("rotate_bytes", 1 << 20, 1ull << 40, audit.rotate_bytes));
  VECSEAL_RETURN_IF_ERROR(r.TakeNumber("warn_free_bytes", 0, 1ull << 50, audit.warn_free_bytes));
  VECSEAL_RETURN_IF_ERROR(
      r.TakeNumber("refuse_free_bytes", 0, 1ull << 50, audit.refuse_free_bytes));
  VECSEAL_RETURN_IF_ERROR(r.TakeBool("try_append_only", audit.try_append_only));
  const auto parse_token = [&](ObjectReader& t) {
    return ParseAuditPkcs11(t, audit.pkcs11.emplace());
  };
  return TakeObject(r, "pkcs11", parse_token);
}

Status SameTokenError(const Config& config) {
  return ConfigError("$.audit.pkcs11.token_label",
                     "names the model keys' token (\"" + config.pkcs11.token_label + "\" in " +
                         config.pkcs11.module +
                         "), which gives the audit key no separation: whoever holds that token's "
                         "PIN could re-sign seals over an edited log; name a token of its own, "
                         "with its own PIN, or remove audit.pkcs11 (docs/audit.md)");
}

// A separate token is worth having only if the model keys' operators cannot use it.
Status CheckAuditTokenSeparate(const Config& config, ConfigKind kind) {
  const auto& token = config.audit.pkcs11;
  if (!token) return Status::Ok();
  if (kind == ConfigKind::kDevOverlay) {
    return ConfigError("$.audit.pkcs11", "is not available in dev mode, which keeps every key on "
                                         "its one token; remove it from the overlay");
  }
  if (token->module == config.pkcs11.module && token->token_label == config.pkcs11.token_label) {
    return SameTokenError(config);
  }
  if (token->pin == config.pkcs11.pin) {
    return ConfigError("$.audit.pkcs11.pin",
                       "is the model-key token's PIN source (pkcs11.pin), so whoever holds that "
                       "PIN holds the audit token's too; give the audit token a PIN of its own");
  }
  return Status::Ok();
}

Status ParseRoot(ObjectReader& root, Config& config, ConfigKind kind) {
  const bool production = kind == ConfigKind::kDaemon;
  const auto parse_socket = [&](ObjectReader& r) { return ParseSocket(r, config.socket); };
  const auto parse_pkcs11 = [&](ObjectReader& r) {
    return ParsePkcs11(r, config.pkcs11, production);
  };
  const auto parse_derivation = [&](ObjectReader& r) {
    VECSEAL_RETURN_IF_ERROR(r.TakeNumber("group_size", 1, 4096, config.group_size));
    return r.TakeDerivation("new_keys", config.new_keys);
  };
  const auto parse_limits = [&](ObjectReader& r) { return ParseLimits(r, config.limits); };
  const auto parse_threads = [&](ObjectReader& r) { return ParseThreads(r, config.threads); };
  const auto parse_policy = [&](ObjectReader& r) { return r.TakePath("file", config.policy_file); };
  const auto parse_audit = [&](ObjectReader& r) { return ParseAudit(r, config.audit); };
  VECSEAL_RETURN_IF_ERROR(TakeObject(root, "socket", parse_socket));
  VECSEAL_RETURN_IF_ERROR(TakeObject(root, "pkcs11", parse_pkcs11));
  if (production && root.Find("pkcs11") == nullptr) {
    return ConfigError("$.pkcs11", "is required (at least \"pin\")");
  }
  VECSEAL_RETURN_IF_ERROR(TakeObject(root, "derivation", parse_derivation));
  VECSEAL_RETURN_IF_ERROR(TakeObject(root, "limits", parse_limits));
  VECSEAL_RETURN_IF_ERROR(TakeObject(root, "threads", parse_threads));
  VECSEAL_RETURN_IF_ERROR(TakeObject(root, "policy", parse_policy));
  VECSEAL_RETURN_IF_ERROR(TakeObject(root, "audit", parse_audit));
  VECSEAL_RETURN_IF_ERROR(root.Finish());
  if (config.audit.pkcs11 && config.audit.pkcs11->module.empty()) {
    config.audit.pkcs11->module = config.pkcs11.module;
  }
  return CheckAuditTokenSeparate(config, kind);
}

// Two spellings of one module file (Debian's /usr/lib/softhsm/libsofthsm2.so is a symlink into
// the multiarch directory) load one library, so the same label there is the same token.
Status CheckAuditModuleFile(const Config& config) {
  const auto& token = config.audit.pkcs11;
  if (!token || token->token_label != config.pkcs11.token_label ||
      token->module == config.pkcs11.module) {
    return Status::Ok();
  }
  std::error_code model_error, audit_error;
  const auto model_module = std::filesystem::canonical(config.pkcs11.module, model_error);
  const auto audit_module = std::filesystem::canonical(token->module, audit_error);
  if (model_error || audit_error || model_module != audit_module) return Status::Ok();
  return SameTokenError(config);
}

}  // namespace

Result<Config> ParseConfig(std::string_view json_text, ConfigKind kind) {
  json document;
  try {
    document = json::parse(json_text.begin(), json_text.end());
  } catch (const json::exception& error) {
    // A parse_error names the line, column and offending token; an out_of_range a number too
    // large for a double (1e400), which is as much a broken file as a syntax error.
    return ConfigError("$", std::string("not valid JSON (") + error.what() + ")");
  }
  Config config;
  ObjectReader root(document, "$");
  VECSEAL_RETURN_IF_ERROR(root.CheckIsObject());
  VECSEAL_RETURN_IF_ERROR(ParseRoot(root, config, kind));
  return config;
}

Result<Config> LoadConfigFile(const std::string& path, ConfigKind kind) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return Status(Code::kNotFound, "config_unreadable",
                  "cannot open config file " + path + ": " + std::strerror(errno));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return Status(Code::kUnavailable, "config_unreadable", "cannot read config file " + path);
  }
  auto config = ParseConfig(text.str(), kind);
  if (config.ok()) {
    if (Status separate = CheckAuditModuleFile(*config); !separate.ok()) config = separate;
  }
  if (!config.ok()) {
    const Status& error = config.status();
    return Status(error.code(), error.reason(), path + ": " + error.message());
  }
  return config;
}

std::optional<std::string> RestartOnlyChange(const Config& current, const Config& next) {
  if (current.socket.path != next.socket.path) return "socket.path";
  if (current.socket.mode != next.socket.mode) return "socket.mode";
  if (current.socket.group != next.socket.group) return "socket.group";
  if (current.pkcs11.module != next.pkcs11.module) return "pkcs11.module";
  if (current.pkcs11.token_label != next.pkcs11.token_label) return "pkcs11.token_label";
  if (current.pkcs11.pin.file != next.pkcs11.pin.file ||
      current.pkcs11.pin.credential != next.pkcs11.pin.credential) {
    return "pkcs11.pin";
  }
  if (current.pkcs11.sessions != next.pkcs11.sessions) return "pkcs11.sessions";
  if (current.pkcs11.accept_imported_keys != next.pkcs11.accept_imported_keys) {
    return "pkcs11.accept_imported_keys";
  }
  if (current.threads.io != next.threads.io) return "threads.io";
  if (current.threads.workers != next.threads.workers) return "threads.workers";
  if (current.audit.directory != next.audit.directory) return "audit.directory";
  if (current.audit.key_label != next.audit.key_label) return "audit.key_label";
  if (current.audit.key_algorithm != next.audit.key_algorithm) return "audit.key_algorithm";
  if (current.audit.single_file != next.audit.single_file) return "audit.single_file";
  if (current.audit.pkcs11 != next.audit.pkcs11) return "audit.pkcs11";
  if (current.audit.sync_every_record != next.audit.sync_every_record ||
      current.audit.sync_interval != next.audit.sync_interval ||
      current.audit.seal_every_records != next.audit.seal_every_records ||
      current.audit.seal_every != next.audit.seal_every ||
      current.audit.rotate_bytes != next.audit.rotate_bytes ||
      current.audit.warn_free_bytes != next.audit.warn_free_bytes ||
      current.audit.refuse_free_bytes != next.audit.refuse_free_bytes ||
      current.audit.try_append_only != next.audit.try_append_only) {
    return "audit";
  }
  return std::nullopt;
}

}  // namespace vecseal::daemon
