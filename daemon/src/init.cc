// `vecseald --init`: the first-run checks of an operator, in the order the daemon will meet
// them, plus the one thing only a first run does: create and export the audit key (on its own
// token when audit.pkcs11 is set).
#include "vecseal/daemon/init.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <memory>
#include <sstream>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "startup.h"
#include "vecseal/pkcs11/hsm.h"
#include "vecseal/policy/policy.h"

namespace vecseal::daemon {
namespace {

// One line of the report: "  name        ok: detail".
class Report {
 public:
  explicit Report(std::ostream& out) : out_(out) {}

  void Line(std::string_view check, std::string_view verdict, std::string_view detail) {
    out_ << "  " << std::left << std::setw(12) << check << verdict;
    if (!detail.empty()) out_ << ": " << detail;
    out_ << "\n";
  }
  void Ok(std::string_view check, std::string_view detail) { Line(check, "ok", detail); }
  void Failed(std::string_view check, const Status& status) {
    Line(check, "FAILED", status.message() + " [" + status.reason() + "]");
    failed_ = true;
  }
  bool failed() const { return failed_; }

 private:
  std::ostream& out_;
  bool failed_ = false;
};

// "sha256:" and the hex SHA-256 of the DER SubjectPublicKeyInfo, which is what
// `openssl pkey -pubin -outform DER | sha256sum` prints, so an auditor can compare them.
Result<std::string> PublicKeyFingerprint(const std::string& pem) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      bio ? PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr) : nullptr, EVP_PKEY_free);
  unsigned char* der = nullptr;
  const int der_size = key ? i2d_PUBKEY(key.get(), &der) : -1;
  if (der_size <= 0) {
    return Status(Code::kInternal, "audit_key_invalid",
                  "the token's audit public key is not a valid key");
  }
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(der, static_cast<size_t>(der_size), digest);
  OPENSSL_free(der);
  std::ostringstream hex;
  hex << "sha256:";
  for (unsigned char byte : digest) {
    hex << std::hex << std::setw(2) << std::setfill('0') << static_cast<int>(byte);
  }
  return hex.str();
}

// Writes the PEM next to its final name and renames it into place, mode 0644 (a public key).
// An existing file with another key is never replaced: logs sealed by that key need it.
Result<std::string> ExportPublicKey(const std::string& path, const std::string& pem) {
  std::ifstream existing(path, std::ios::binary);
  if (existing) {
    std::ostringstream content;
    content << existing.rdbuf();
    if (content.str() == pem) return std::string("unchanged");
    return Status(Code::kAlreadyExists, "audit_key_export_conflict",
                  path + " holds a different public key; logs sealed by that key still need it, "
                         "so move it aside (keep it) and run --init again");
  }
  const std::string temporary = path + ".tmp";
  const auto failed = [&](const char* what) {
    const int cause = errno;
    std::string message = std::string(what) + " " + temporary + ": " + std::strerror(cause);
    if (cause == EACCES || cause == EPERM || cause == EROFS) {
      message += "; uid " + std::to_string(geteuid()) +
                 " may not write there: give --export-audit-key a path it may write (then "
                 "install the file where auditors look for it), or run --init as root";
    }
    unlink(temporary.c_str());
    return Status(Code::kUnavailable, "audit_key_export_failed", message);
  };
  FILE* file = std::fopen(temporary.c_str(), "wx");
  if (file == nullptr) return failed("cannot create");
  const bool written = std::fwrite(pem.data(), 1, pem.size(), file) == pem.size() &&
                       std::fflush(file) == 0 && fchmod(fileno(file), 0644) == 0 &&
                       fsync(fileno(file)) == 0;
  if (std::fclose(file) != 0 || !written) return failed("cannot write");
  if (rename(temporary.c_str(), path.c_str()) != 0) return failed("cannot rename");
  return std::string("written");
}

// The daemon writes rotated files into the directory; a single file needs its directory too.
Status CheckAuditDirectory(const AuditConfig& audit) {
  const std::string dir = audit.single_file.empty()
                              ? audit.directory
                              : std::filesystem::path(audit.single_file).parent_path().string();
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return Status(Code::kUnavailable, "audit_unavailable",
                  "audit directory " + dir + " does not exist (the package's tmpfiles.d entry "
                  "creates it; or: install -d -o vecseal -m 0750 " + dir + ")");
  }
  if (access(dir.c_str(), W_OK | X_OK) != 0) {
    return Status(Code::kUnavailable, "audit_unavailable",
                  "audit directory " + dir + " is not writable by this user (uid " +
                      std::to_string(geteuid()) + "); run --init as the service user");
  }
  return Status::Ok();
}

}  // namespace

int Init(const InitOptions& options, std::ostream& out) {
  Report report(out);
  out << "vecseald --init: " << options.config_path << "\n";
  auto config = LoadTrustedConfig(options.config_path, ConfigKind::kDaemon);
  if (!config.ok()) {
    report.Failed("config", config.status());
    return 1;
  }
  report.Ok("config", "");

  auto policy = policy::Policy::LoadFile(config->policy_file);
  if (policy.ok()) {
    const size_t rules = (*policy)->rule_count();
    report.Ok("policy", config->policy_file + " (" + std::to_string(rules) +
                            (rules == 0 ? " rules: every request is denied)" : " rules)"));
  } else {
    report.Failed("policy", policy.status());
  }

  auto hsm = pkcs11::Hsm::Open(HsmConfigOf(*config));
  std::string fingerprint;
  if (!hsm.ok()) {
    report.Failed("token", hsm.status());
  } else {
    report.Ok("token", "\"" + config->pkcs11.token_label + "\" in " + config->pkcs11.module +
                           ", logged in");
    // The audit key's mechanisms here only when it lives on this token.
    const bool audit_here = !AuditHsmConfigOf(*config).has_value();
    Status mechanisms = (*hsm)->CheckMechanisms(config->new_keys);
    auto audit_kind = audit_here ? (*hsm)->AuditKeyAlgorithmFor(config->audit.key_algorithm)
                                 : Result<pkcs11::AuditKeyAlgorithm>(config->audit.key_algorithm);
    if (mechanisms.ok() && !audit_kind.ok()) mechanisms = audit_kind.status();
    if (!mechanisms.ok()) {
      report.Failed("mechanisms", mechanisms);
    } else {
      const std::string audit =
          !audit_here ? ""
          : *audit_kind == pkcs11::AuditKeyAlgorithm::kRsaPss3072
              ? ", RSA 3072, RSA-PSS"
              : ", EC P-256, ECDSA";
      report.Ok("mechanisms", config->new_keys == core::KeyFormat::kV2
                                  ? "AES-256 generation, AES-ECB (format v2 keys)" + audit
                                  : "generic secret generation, HMAC-SHA256 (format v1 keys)" +
                                        audit);
    }
  }

  pkcs11::Hsm* audit_token = hsm.ok() ? hsm->get() : nullptr;
  std::unique_ptr<pkcs11::Hsm> audit_hsm;
  if (auto audit_config = AuditHsmConfigOf(*config)) {
    auto opened = pkcs11::Hsm::Open(*audit_config);
    if (opened.ok()) {
      report.Ok("audit token", "\"" + audit_config->token_label + "\" in " +
                                   audit_config->module_path + ", logged in");
      audit_hsm = std::move(opened).value();
    } else {
      report.Failed("audit token", AuditTokenError(opened.status()));
    }
    audit_token = audit_hsm.get();
  }
  if (audit_token != nullptr) {
    auto audit_key =
        audit_token->EnsureAuditKey(config->audit.key_label, config->audit.key_algorithm);
    auto key_id = audit_key.ok() ? PublicKeyFingerprint(audit_key->PublicKeyPem())
                                 : Result<std::string>(audit_key.status());
    if (!key_id.ok()) {
      report.Failed("audit key", audit_hsm ? AuditTokenError(key_id.status()) : key_id.status());
    } else {
      fingerprint = *key_id;
      report.Line("audit key", audit_key->generated() ? "created" : "found",
                  "\"" + audit_key->label() + "\" " + fingerprint);
      auto exported = ExportPublicKey(options.export_audit_key, audit_key->PublicKeyPem());
      if (exported.ok()) {
        report.Line("public key", *exported, options.export_audit_key);
      } else {
        report.Failed("public key", exported.status());
      }
    }
  }

  if (Status audit_dir = CheckAuditDirectory(config->audit); audit_dir.ok()) {
    report.Ok("audit log", (config->audit.single_file.empty() ? config->audit.directory
                                                               : config->audit.single_file) +
                               " is writable");
  } else {
    report.Failed("audit log", audit_dir);
  }

  if (report.failed()) {
    out << "Not ready: fix what FAILED above (docs/operations.md, \"What each failure means\") "
           "and run vecseald --init again; it is safe to repeat.\n";
    return 1;
  }
  out << "Ready. Next steps:\n"
      << "  1. Keep a copy of " << options.export_audit_key << " (" << fingerprint
      << ") off this host: auditors verify the log with it:\n"
      << "       vecseal audit verify --pubkey audit-key.pem FILE...\n"
      << "  2. Grant the first caller in " << config->policy_file << ", then check it:\n"
      << "       vecseald --check-policy " << config->policy_file
      << " --as-uid UID --exe PATH --op encrypt --key NAME\n"
      << "  3. Start the service: systemctl enable --now vecseald.socket\n"
      << "  4. Create a model key, as a caller granted keys.create:\n"
      << "       vecseal keys create NAME --approximation-factor 2.5 --transform rotate\n";
  return 0;
}

}  // namespace vecseal::daemon
