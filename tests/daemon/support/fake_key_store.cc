#include "support/fake_key_store.h"

#include <chrono>

#include "vecseal/wire/key_name.h"

namespace vecseal::daemon::testing {
namespace {

int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Status KeyNotFound(const std::string& name) {
  return Status(Code::kNotFound, "key_not_found", "no key " + name + " on the token");
}

}  // namespace

Status FakeKeyStore::Enter(const char* operation) {
  ++calls_[operation];
  return failure_;
}

void FakeKeyStore::FailWith(Status status) {
  std::lock_guard lock(mutex_);
  failure_ = std::move(status);
}

Result<FakeKeyStore::Key*> FakeKeyStore::KeyNamed(const std::string& name) {
  const auto found = keys_.find(name);
  if (found == keys_.end()) return KeyNotFound(name);
  return &found->second;
}

Result<pkcs11::KeyInfo> FakeKeyStore::AddVersion(Key& key, const std::string& name,
                                                 pkcs11::KeyParams params) {
  auto deriver = core::SoftwareDeriver::CreateEphemeral(params.format);
  if (!deriver.ok()) return std::move(deriver).TakeStatus();
  params.created_unix = UnixNow();
  const auto version = static_cast<uint32_t>(key.versions.size() + 1);
  pkcs11::KeyInfo info{name, version, params,
                       "vecseal:" + name + ":v" + std::to_string(version)};
  key.versions.push_back(Version{info, std::move(deriver).value()});
  return info;
}

Result<std::vector<pkcs11::KeyInfo>> FakeKeyStore::ListKeys() {
  std::lock_guard lock(mutex_);
  VECSEAL_RETURN_IF_ERROR(Enter("ListKeys"));
  std::vector<pkcs11::KeyInfo> infos;
  for (const auto& [name, key] : keys_) {
    for (const Version& version : key.versions) infos.push_back(version.info);
  }
  return infos;
}

Result<pkcs11::KeyInfo> FakeKeyStore::CreateKey(std::string_view name,
                                                const pkcs11::KeyParams& params) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(name));
  VECSEAL_RETURN_IF_ERROR(pkcs11::ValidateNewKeyParams(params));
  std::lock_guard lock(mutex_);
  VECSEAL_RETURN_IF_ERROR(Enter("CreateKey"));
  const std::string key_name(name);
  if (const auto found = keys_.find(key_name); found != keys_.end()) {
    return Status(Code::kAlreadyExists, "key_exists",
                  "the key " + key_name + " already exists (newest version " +
                      std::to_string(found->second.versions.size()) + "); rotate it instead");
  }
  Key key;
  auto info = AddVersion(key, key_name, params);
  if (info.ok()) keys_.emplace(key_name, std::move(key));
  return info;
}

Result<pkcs11::KeyInfo> FakeKeyStore::RotateKey(std::string_view name, core::KeyFormat format) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(name));
  std::lock_guard lock(mutex_);
  VECSEAL_RETURN_IF_ERROR(Enter("RotateKey"));
  const std::string key_name(name);
  const auto found = keys_.find(key_name);
  if (found == keys_.end()) {
    return Status(Code::kNotFound, "key_not_found",
                  "no key " + key_name + " on the token; create it first");
  }
  Key& key = found->second;
  if (key.versions.size() == UINT32_MAX) {
    return Status(Code::kFailedPrecondition, "key_version_exhausted",
                  "the key " + key_name + " cannot be rotated further");
  }
  pkcs11::KeyParams params = key.versions.back().info.params;
  params.format = format;
  return AddVersion(key, key_name, params);
}

Result<pkcs11::ModelKey> FakeKeyStore::FindKey(std::string_view name,
                                               std::optional<uint32_t> version) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(name));
  std::lock_guard lock(mutex_);
  VECSEAL_RETURN_IF_ERROR(Enter("FindKey"));
  const std::string key_name(name);
  const auto key = keys_.find(key_name);
  if (!version && key == keys_.end()) return KeyNotFound(key_name);
  const size_t count = key == keys_.end() ? 0 : key->second.versions.size();
  const uint32_t wanted = version.value_or(static_cast<uint32_t>(count));
  if (wanted == 0 || wanted > count) {
    return Status(Code::kNotFound, "key_not_found",
                  "no key " + key_name + " version " + std::to_string(wanted) + " on the token");
  }
  const Version& found = key->second.versions[wanted - 1];
  return pkcs11::ModelKey{found.info, found.deriver};
}

Result<uint32_t> FakeKeyStore::FixDimension(std::string_view name, uint32_t dimension) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(name));
  std::lock_guard lock(mutex_);
  VECSEAL_RETURN_IF_ERROR(Enter("FixDimension"));
  auto key = KeyNamed(std::string(name));
  if (!key.ok()) return std::move(key).TakeStatus();
  std::vector<Version>& versions = (*key)->versions;
  std::optional<uint32_t> fixed;
  for (const Version& version : versions) {
    if (version.info.params.dimension) fixed = version.info.params.dimension;  // newest wins
  }
  if (!fixed) {
    pkcs11::KeyParams candidate = versions.back().info.params;
    candidate.dimension = dimension;
    VECSEAL_RETURN_IF_ERROR(pkcs11::ValidateKeyParams(candidate));
    fixed = dimension;
  }
  for (Version& version : versions) {
    if (!version.info.params.dimension) version.info.params.dimension = fixed;
  }
  return *fixed;
}

Result<pkcs11::KeyConfig> FakeKeyStore::ReadKeyConfig(std::string_view name) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(name));
  std::lock_guard lock(mutex_);
  VECSEAL_RETURN_IF_ERROR(Enter("ReadKeyConfig"));
  auto key = KeyNamed(std::string(name));
  if (!key.ok()) return std::move(key).TakeStatus();
  return (*key)->config;
}

Result<pkcs11::KeyConfig> FakeKeyStore::ConfigureKey(std::string_view name,
                                                     const pkcs11::KeyConfig& config) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(name));
  std::lock_guard lock(mutex_);
  VECSEAL_RETURN_IF_ERROR(Enter("ConfigureKey"));
  const std::string key_name(name);
  auto key = KeyNamed(key_name);
  if (!key.ok()) return std::move(key).TakeStatus();
  const auto newest = static_cast<uint32_t>((*key)->versions.size());
  VECSEAL_RETURN_IF_ERROR(pkcs11::ValidateKeyConfig(key_name, config, newest));
  (*key)->config = config;
  return config;
}

Result<std::vector<uint32_t>> FakeKeyStore::DeleteKey(std::string_view name) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(name));
  std::lock_guard lock(mutex_);
  VECSEAL_RETURN_IF_ERROR(Enter("DeleteKey"));
  const std::string key_name(name);
  const auto found = keys_.find(key_name);
  if (found == keys_.end()) return KeyNotFound(key_name);
  std::vector<uint32_t> destroyed;
  for (const Version& version : found->second.versions) destroyed.push_back(version.info.version);
  keys_.erase(found);
  return destroyed;
}

Status FakeKeyStore::Ping() {
  std::lock_guard lock(mutex_);
  return Enter("Ping");
}

std::vector<std::pair<std::string, uint64_t>> FakeKeyStore::CallCounts() const {
  std::lock_guard lock(mutex_);
  return {calls_.begin(), calls_.end()};
}

}  // namespace vecseal::daemon::testing
