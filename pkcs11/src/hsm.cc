// The Hsm's public operations: opening it, and administering and using model keys, each run
// on the anchor session or the pool with recovery (session_pool.cc).
#include <chrono>

#include "hsm_state.h"
#include "vecseal/wire/key_name.h"

namespace vecseal::pkcs11 {
namespace {

Status InvalidConfig(std::string field, std::string fix) {
  return Status(Code::kInvalidArgument, "invalid_hsm_config", field + ": " + fix);
}

}  // namespace

Result<std::unique_ptr<Hsm>> Hsm::Open(const HsmConfig& config) {
  if (config.module_path.empty() || config.module_path.front() != '/') {
    return InvalidConfig("module_path", "give the absolute path of the PKCS#11 module (.so)");
  }
  if (config.token_label.empty() || config.token_label.size() > 32) {
    return InvalidConfig("token_label", "give the token label, 1 to 32 bytes");
  }
  if (config.sessions == 0 || config.sessions > 256) {
    return InvalidConfig("sessions", "give between 1 and 256 pooled sessions");
  }
  if (config.recovery_attempts == 0 || config.initial_backoff.count() < 0 ||
      config.max_backoff < config.initial_backoff) {
    return InvalidConfig("recovery", "recovery_attempts must be at least 1 and max_backoff at "
                                     "least initial_backoff");
  }
  auto module = Module::Load(config.module_path);
  if (!module.ok()) return std::move(module).TakeStatus();
  auto state = std::make_shared<State>();
  state->config = config;
  state->module = std::move(module).value();
  for (size_t i = 0; i < config.sessions; ++i) state->pool.push_back(std::make_unique<PoolSlot>());
  {
    std::lock_guard lock(state->admin_mutex);
    VECSEAL_RETURN_IF_ERROR(state->ConnectLocked());
  }
  return std::unique_ptr<Hsm>(new Hsm(std::move(state)));
}

Hsm::~Hsm() = default;

Result<std::vector<KeyInfo>> Hsm::ListKeys() {
  return state_->Admin<std::vector<KeyInfo>>([&](Session&) -> Result<std::vector<KeyInfo>> {
    auto versions = state_->KeyVersionsLocked(std::nullopt);
    if (!versions.ok()) return std::move(versions).TakeStatus();
    std::vector<KeyInfo> keys;
    for (const auto& [name, version] : *versions) {
      auto info = state_->LoadKeyLocked(name, version);
      if (!info.ok()) return std::move(info).TakeStatus();
      keys.push_back(std::move(info).value());
    }
    return keys;
  });
}

Result<KeyInfo> Hsm::CreateKey(std::string_view name, const KeyParams& params) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(name));
  VECSEAL_RETURN_IF_ERROR(ValidateNewKeyParams(params));
  KeyParams stamped = params;
  stamped.created_unix = std::chrono::duration_cast<std::chrono::seconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
  std::string key_name(name);
  return state_->Admin<KeyInfo>([&](Session&) -> Result<KeyInfo> {
    auto versions = state_->KeyVersionsLocked(std::string_view(key_name));
    if (!versions.ok()) return std::move(versions).TakeStatus();
    if (!versions->empty()) {
      return Status(Code::kAlreadyExists, "key_exists",
                    "the key " + key_name + " already exists (newest version " +
                        std::to_string(versions->back().second) + "); rotate it instead");
    }
    return state_->CreateVersionLocked(key_name, 1, stamped);
  });
}

Result<KeyInfo> Hsm::RotateKey(std::string_view name, core::KeyFormat format) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(name));
  std::string key_name(name);
  return state_->Admin<KeyInfo>([&](Session&) -> Result<KeyInfo> {
    auto versions = state_->KeyVersionsLocked(std::string_view(key_name));
    if (!versions.ok()) return std::move(versions).TakeStatus();
    if (versions->empty()) {
      return Status(Code::kNotFound, "key_not_found",
                    "no key " + key_name + " on the token; create it first");
    }
    uint32_t newest = versions->back().second;
    if (newest == UINT32_MAX) {
      return Status(Code::kFailedPrecondition, "key_version_exhausted",
                    "the key " + key_name + " cannot be rotated further");
    }
    auto current = state_->LoadKeyLocked(key_name, newest);
    if (!current.ok()) return std::move(current).TakeStatus();
    KeyParams params = current->params;
    params.format = format;
    params.created_unix = std::chrono::duration_cast<std::chrono::seconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count();
    return state_->CreateVersionLocked(key_name, newest + 1, params);
  });
}

Result<ModelKey> Hsm::FindKey(std::string_view name, std::optional<uint32_t> version) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(name));
  std::string key_name(name);
  auto info = state_->Admin<KeyInfo>([&](Session&) -> Result<KeyInfo> {
    uint32_t wanted = version.value_or(0);
    if (!version) {
      auto versions = state_->KeyVersionsLocked(std::string_view(key_name));
      if (!versions.ok()) return std::move(versions).TakeStatus();
      if (versions->empty()) {
        return Status(Code::kNotFound, "key_not_found", "no key " + key_name + " on the token");
      }
      wanted = versions->back().second;
    }
    return state_->LoadKeyLocked(key_name, wanted);
  });
  if (!info.ok()) return std::move(info).TakeStatus();
  auto deriver = MakeHsmDeriver(state_, info->label, info->params.format);
  return ModelKey{std::move(info).value(), std::move(deriver)};
}

Result<uint32_t> Hsm::FixDimension(std::string_view name, uint32_t dimension) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(name));
  std::string key_name(name);
  return state_->Admin<uint32_t>([&](Session&) -> Result<uint32_t> {
    auto versions = state_->KeyVersionsLocked(std::string_view(key_name));
    if (!versions.ok()) return std::move(versions).TakeStatus();
    if (versions->empty()) {
      return Status(Code::kNotFound, "key_not_found", "no key " + key_name + " on the token");
    }
    std::vector<KeyInfo> infos;
    std::optional<uint32_t> fixed;
    for (const auto& [unused, version] : *versions) {
      auto info = state_->LoadKeyLocked(key_name, version);
      if (!info.ok()) return std::move(info).TakeStatus();
      if (info->params.dimension) fixed = info->params.dimension;  // the newest version's wins
      infos.push_back(std::move(info).value());
    }
    if (!fixed) {
      KeyParams candidate = infos.back().params;
      candidate.dimension = dimension;
      VECSEAL_RETURN_IF_ERROR(ValidateKeyParams(candidate));
      fixed = dimension;
    }
    // Every version, so that old ones cannot be used at other dimensions either; a version left
    // unfixed by a failure here is fixed by the next call.
    for (const KeyInfo& info : infos) {
      if (info.params.dimension) continue;
      CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
      CK_ATTRIBUTE key_match[] = {Attr(CKA_CLASS, key_class), Attr(CKA_TOKEN, kTrue),
                                  Attr(CKA_LABEL, info.label)};
      auto keys = state_->FindKeys(state_->anchor, key_match);
      if (!keys.ok()) return std::move(keys).TakeStatus();
      if (keys->size() != 1) return Tampered(info.label, "changed while its dimension was fixed");
      KeyParams params = info.params;
      params.dimension = fixed;
      VECSEAL_RETURN_IF_ERROR(state_->WriteParamsLocked(kFixedDimensionApplication,
                                                        keys->front().handle(), key_name,
                                                        info.version, params));
    }
    return *fixed;
  });
}

Result<KeyConfig> Hsm::ReadKeyConfig(std::string_view name) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(name));
  std::string key_name(name);
  return state_->Admin<KeyConfig>([&](Session&) -> Result<KeyConfig> {
    auto infos = state_->LoadVersionsLocked(key_name);
    if (!infos.ok()) return std::move(infos).TakeStatus();
    auto stored = state_->ReadConfigLocked(*infos);
    if (!stored.ok()) return std::move(stored).TakeStatus();
    return stored->config;
  });
}

Result<KeyConfig> Hsm::ConfigureKey(std::string_view name, const KeyConfig& config) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(name));
  std::string key_name(name);
  return state_->Admin<KeyConfig>([&](Session&) -> Result<KeyConfig> {
    auto infos = state_->LoadVersionsLocked(key_name);
    if (!infos.ok()) return std::move(infos).TakeStatus();
    const uint32_t newest = infos->back().version;
    VECSEAL_RETURN_IF_ERROR(ValidateKeyConfig(key_name, config, newest));
    std::vector<Object> old_records;
    auto stored = state_->ReadConfigLocked(*infos, &old_records);
    if (!stored.ok()) return std::move(stored).TakeStatus();
    if (stored->sequence != 0 && stored->config == config) return config;
    const uint64_t sequence = stored->sequence + 1;
    for (const KeyInfo& info : *infos) {
      auto key = state_->TokenObjectLocked(CKO_SECRET_KEY, info.label);
      if (!key.ok()) return std::move(key).TakeStatus();
      std::vector<uint8_t> value = CanonicalConfigBytes(key_name, info.version, sequence, config);
      auto mac = state_->ParamsMacLocked(key->handle(), info.params.format, value);
      if (!mac.ok()) return std::move(mac).TakeStatus();
      value.insert(value.end(), mac->begin(), mac->end());
      CK_OBJECT_CLASS data_class = CKO_DATA;
      std::string application_value(kConfigApplication);
      CK_ATTRIBUTE data_template[] = {
          Attr(CKA_CLASS, data_class),  Attr(CKA_TOKEN, kTrue),
          Attr(CKA_PRIVATE, kTrue),     Attr(CKA_MODIFIABLE, kFalse),
          Attr(CKA_LABEL, info.label),  Attr(CKA_APPLICATION, application_value),
          Attr(CKA_VALUE, std::span<const uint8_t>(value)),
      };
      // A failure here leaves the new sequence on some versions only: it already wins, and a
      // retry writes it on the rest.
      auto created = state_->anchor.Create(data_template);
      if (!created.ok()) return std::move(created).TakeStatus();
    }
    // Older records lose to the new sequence anyway; removing them only keeps the token tidy.
    for (Object& record : old_records) (void)record.Destroy();
    return config;
  });
}

Result<std::vector<uint32_t>> Hsm::DeleteKey(std::string_view name) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(name));
  std::string key_name(name);
  std::vector<uint32_t> destroyed;  // across Admin's retry after a recovery
  bool found_any = false;
  auto deleted = state_->Admin<bool>([&](Session&) -> Result<bool> {
    auto versions = state_->KeyVersionsLocked(std::string_view(key_name));
    if (!versions.ok()) return std::move(versions).TakeStatus();
    for (const auto& [unused, version] : *versions) {
      found_any = true;
      CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
      std::string label = KeyLabel(key_name, version);
      CK_ATTRIBUTE match[] = {Attr(CKA_CLASS, key_class), Attr(CKA_TOKEN, kTrue),
                              Attr(CKA_LABEL, label)};
      auto keys = state_->FindKeys(state_->anchor, match);
      if (!keys.ok()) return std::move(keys).TakeStatus();
      for (Object& key : *keys) {
        state_->key_epoch.fetch_add(1);
        VECSEAL_RETURN_IF_ERROR(key.Destroy());
      }
      destroyed.push_back(version);
    }
    // Then every record of the key (parameters, dimension, minimum versions), including those
    // a deletion cut short left behind: a new key of the same name must not meet them.
    CK_OBJECT_CLASS data_class = CKO_DATA;
    CK_ATTRIBUTE data_match[] = {Attr(CKA_CLASS, data_class), Attr(CKA_TOKEN, kTrue)};
    auto records = state_->anchor.Find(data_match);
    if (!records.ok()) return std::move(records).TakeStatus();
    for (Object& record : *records) {
      auto label = record.GetAttribute(CKA_LABEL);
      if (!label.ok()) return std::move(label).TakeStatus();
      auto parsed = ParseKeyLabel(
          std::string_view(reinterpret_cast<const char*>(label->data()), label->size()));
      if (!parsed || parsed->first != key_name) continue;
      found_any = true;
      VECSEAL_RETURN_IF_ERROR(record.Destroy());
    }
    return true;
  });
  if (deleted.ok() && !found_any) {
    return Status(Code::kNotFound, "key_not_found", "no key " + key_name + " on the token");
  }
  if (deleted.ok()) return destroyed;
  if (!found_any) return std::move(deleted).TakeStatus();
  std::string done = "none";
  if (!destroyed.empty()) {
    done.clear();
    for (uint32_t version : destroyed) done += (done.empty() ? "" : ", ") + std::to_string(version);
  }
  return Status(Code::kUnavailable, "key_deletion_incomplete",
                "the deletion of key " + key_name + " stopped part way (" +
                    deleted.status().message() + "); versions destroyed: " + done +
                    ". The rest of the key is still on the token; delete it again to finish");
}

Status Hsm::Ping() {
  auto result = state_->Admin<bool>([](Session& anchor) -> Result<bool> {
    VECSEAL_RETURN_IF_ERROR(RequireLogin(anchor));  // Admin checked it; this is the probe
    return true;
  });
  return result.ok() ? Status::Ok() : std::move(result).TakeStatus();
}

Status Hsm::CheckMechanisms(core::KeyFormat format, AuditKeyAlgorithm audit) {
  {
    std::lock_guard lock(state_->admin_mutex);
    VECSEAL_RETURN_IF_ERROR(state_->CheckDerivationMechanisms(format));
  }
  auto algorithm = AuditKeyAlgorithmFor(audit);
  return algorithm.ok() ? Status::Ok() : std::move(algorithm).TakeStatus();
}

const HsmCallCounts& Hsm::calls() const { return *state_->module.calls(); }

}  // namespace vecseal::pkcs11
