// The identity resolver: user and group names and file digests, cached, with a hashing budget
// per peer uid; and the JSON form of an identity.
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>

#include "vecseal/policy/identity.h"

namespace vecseal::policy {
namespace {

int64_t MonotonicNs() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return int64_t{now.tv_sec} * 1000000000 + now.tv_nsec;
}

std::string UserName(uid_t uid) {
  passwd entry{};
  passwd* found = nullptr;
  std::vector<char> buffer(4096);
  while (getpwuid_r(uid, &entry, buffer.data(), buffer.size(), &found) == ERANGE &&
         buffer.size() < (size_t{1} << 20)) {
    buffer.resize(buffer.size() * 2);
  }
  return found ? std::string(found->pw_name) : std::string();
}

std::string GroupName(gid_t gid) {
  group entry{};
  group* found = nullptr;
  std::vector<char> buffer(4096);
  while (getgrgid_r(gid, &entry, buffer.data(), buffer.size(), &found) == ERANGE &&
         buffer.size() < (size_t{1} << 20)) {
    buffer.resize(buffer.size() * 2);
  }
  return found ? std::string(found->gr_name) : std::string();
}

}  // namespace

nlohmann::json CallerIdentity::ToJson() const {
  auto text = [](const std::string& s) { return s.empty() ? nlohmann::json() : nlohmann::json(s); };
  nlohmann::json groups = nlohmann::json::array();
  for (size_t i = 0; i < supplementary_gids.size(); ++i) {
    std::string name = i < group_names.size() ? group_names[i] : std::string();
    groups.push_back({{"gid", supplementary_gids[i]}, {"name", text(name)}});
  }
  return {{"pid", pid},
          {"uid", uid},
          {"user", text(user)},
          {"gid", gid},
          {"group", text(group)},
          {"groups", groups},
          {"exe", text(exe)},
          {"exe_sha256", text(exe_sha256)},
          {"exe_sha256_unknown", text(exe_sha256_unknown)},
          {"unit", text(unit)},
          {"script", text(script)},
          {"script_sha256", text(script_sha256)},
          {"script_sha256_unknown", text(script_sha256_unknown)},
          {"code_unproven", text(code_unproven)},
          {"script_refused", text(script_refused)}};
}

IdentityResolver::IdentityResolver(IdentityResolverOptions options)
    : options_(options),
      hash_budgets_(static_cast<double>(options.max_hash_bytes),
                    static_cast<double>(options.digest_bytes_per_second_per_uid),
                    options.digest_cache_capacity) {}


void IdentityResolver::FillNames(CallerIdentity* id) {
  if (options_.name_cache_seconds <= 0) {
    id->user = UserName(id->uid);
    id->group = GroupName(id->gid);
    id->group_names.clear();
    for (gid_t gid : id->supplementary_gids) id->group_names.push_back(GroupName(gid));
    return;
  }
  auto stamp = [](const char* path) {
    struct stat st;
    if (stat(path, &st) != 0) return FileStamp{};
    return FileStamp{st.st_ino, st.st_size,
                     int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec};
  };
  FileStamp passwd = stamp("/etc/passwd");
  FileStamp group = stamp("/etc/group");
  int64_t now = MonotonicNs();
  std::unique_lock<std::mutex> lock(mutex_);
  if (passwd != passwd_stamp_ || group != group_stamp_ ||
      now - names_since_ns_ > int64_t{options_.name_cache_seconds} * 1000000000) {
    user_names_.clear();
    group_names_.clear();
    passwd_stamp_ = passwd;
    group_stamp_ = group;
    names_since_ns_ = now;
  }
  // NSS may be slow (LDAP): look names up without holding the lock.
  auto lookup = [&](auto& cache, uint32_t key, std::string (*resolve)(uint32_t)) {
    auto it = cache.find(key);
    if (it != cache.end()) {
      ++stats_.name_cache_hits;
      return it->second;
    }
    ++stats_.name_cache_misses;
    lock.unlock();
    std::string name = resolve(key);
    lock.lock();
    if (cache.size() >= options_.digest_cache_capacity) cache.clear();
    cache.emplace(key, name);
    return name;
  };
  id->user = lookup(user_names_, id->uid, UserName);
  id->group = lookup(group_names_, id->gid, GroupName);
  id->group_names.clear();
  for (gid_t gid : id->supplementary_gids) {
    id->group_names.push_back(lookup(group_names_, gid, GroupName));
  }
}

IdentityResolver::Stats IdentityResolver::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

size_t IdentityResolver::FileKeyHash::operator()(const FileKey& key) const {
  size_t h = std::hash<uint64_t>()(key.dev);
  for (uint64_t part : {static_cast<uint64_t>(key.ino), static_cast<uint64_t>(key.size),
                        static_cast<uint64_t>(key.mtime_ns), static_cast<uint64_t>(key.ctime_ns)}) {
    h ^= std::hash<uint64_t>()(part) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  }
  return h;
}

Result<std::string> IdentityResolver::DigestOf(int fd) { return Digest(fd, nullptr); }

Result<std::string> IdentityResolver::DigestCharged(int fd, uid_t uid) { return Digest(fd, &uid); }

bool IdentityResolver::ChargeHashBudget(uid_t uid, uint64_t bytes) {
  if (hash_budgets_.TryTake(uid, static_cast<double>(bytes))) return true;
  std::lock_guard<std::mutex> lock(mutex_);
  ++stats_.digests_rate_limited;
  return false;
}

Result<std::string> IdentityResolver::Digest(int fd, const uid_t* charged_uid) {
  struct stat st;
  if (fstat(fd, &st) != 0) {
    return Status(Code::kUnavailable, "identity_unavailable",
                  std::string("cannot examine a file to hash: ") + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    return Status(Code::kInvalidArgument, "not_a_regular_file", "only regular files are hashed");
  }
  if (static_cast<uint64_t>(st.st_size) > options_.max_hash_bytes) {
    return Status(Code::kResourceExhausted, "file_too_large",
                  "the file is larger than the hashing limit of " +
                      std::to_string(options_.max_hash_bytes) + " bytes");
  }
  FileKey key{st.st_dev, st.st_ino, st.st_size,
              int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec,
              int64_t{st.st_ctim.tv_sec} * 1000000000 + st.st_ctim.tv_nsec};
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = digests_.find(key);
    if (it != digests_.end()) {
      ++stats_.digest_cache_hits;
      return it->second;
    }
    ++stats_.digest_cache_misses;
  }
  if (charged_uid != nullptr &&
      !ChargeHashBudget(*charged_uid, static_cast<uint64_t>(st.st_size))) {
    return Status(Code::kResourceExhausted, "digest_rate_limited",
                  "uid " + std::to_string(*charged_uid) + " has spent its hashing budget of " +
                      std::to_string(options_.digest_bytes_per_second_per_uid) +
                      " bytes per second");
  }
  // Hash outside the lock: a large file must not stall other connections' lookups.
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    return Status(Code::kInternal, "digest_failed", "OpenSSL could not start a SHA-256 digest");
  }
  std::vector<unsigned char> buffer(size_t{1} << 16);
  off_t offset = 0;
  while (true) {
    ssize_t n = pread(fd, buffer.data(), buffer.size(), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return Status(Code::kUnavailable, "identity_unavailable",
                    std::string("cannot read a file to hash: ") + std::strerror(errno));
    }
    if (n == 0) break;
    if (EVP_DigestUpdate(ctx.get(), buffer.data(), static_cast<size_t>(n)) != 1) {
      return Status(Code::kInternal, "digest_failed", "OpenSSL SHA-256 update failed");
    }
    offset += n;
    if (static_cast<uint64_t>(offset) > options_.max_hash_bytes) {
      return Status(Code::kResourceExhausted, "file_too_large",
                    "the file grew past the hashing limit while it was read");
    }
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  if (EVP_DigestFinal_ex(ctx.get(), digest, &digest_len) != 1) {
    return Status(Code::kInternal, "digest_failed", "OpenSSL SHA-256 final failed");
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < digest_len; ++i) {
    hex += kHex[digest[i] >> 4];
    hex += kHex[digest[i] & 0xf];
  }
  // A file modified while it was hashed would cache a digest of mixed contents under its old key;
  // its mtime/ctime now differ, so the entry is never found again.
  std::lock_guard<std::mutex> lock(mutex_);
  ++stats_.files_hashed;
  if (digests_.size() >= options_.digest_cache_capacity) digests_.clear();
  digests_.emplace(key, hex);
  return hex;
}

}  // namespace vecseal::policy
