// The config parser: every key, and the exact error (with its JSON path) for each kind of mistake.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "vecseal/daemon/config.h"
#include "vecseal/daemon/daemon.h"

namespace vecseal::daemon {
namespace {

constexpr const char* kPin = R"("pkcs11": {"pin": {"file": "/etc/vecseal/pin"}})";

TEST(ConfigTest, MinimalConfigGetsTheDocumentedDefaults) {
  auto config = ParseConfig(std::string("{") + kPin + "}");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  const Config defaults;
  EXPECT_EQ(config->socket.path, "/run/vecseal/vecseald.sock");
  EXPECT_EQ(config->socket.mode, 0660u);
  EXPECT_EQ(config->pkcs11.module, "/usr/lib/softhsm/libsofthsm2.so");
  EXPECT_EQ(config->pkcs11.token_label, "vecseal");
  EXPECT_EQ(config->pkcs11.pin.file, "/etc/vecseal/pin");
  EXPECT_EQ(config->group_size, 1u);
  EXPECT_EQ(config->limits.max_body_bytes, defaults.limits.max_body_bytes);
  EXPECT_EQ(config->policy_file, "/etc/vecseal/policy.json");
  EXPECT_EQ(config->audit.directory, "/var/lib/vecseal/audit");
}

TEST(ConfigTest, EveryKeyIsRead) {
  auto config = ParseConfig(R"({
    "socket": {"path": "/run/v/s.sock", "mode": "0600", "group": "vecseal"},
    "pkcs11": {"module": "/opt/hsm/lib.so", "token_label": "prod", "sessions": 4,
               "pin": {"credential": "vecseal-pin"}},
    "derivation": {"group_size": 16},
    "limits": {"max_body_bytes": 1000, "max_vectors": 5, "max_connections": 7,
               "max_connections_per_uid": 3, "max_buffered_body_bytes": 5000,
               "max_header_bytes": 2048, "header_timeout_ms": 11, "body_timeout_ms": 12,
               "idle_timeout_ms": 13, "write_timeout_ms": 14},
    "threads": {"io": 3, "workers": 9},
    "policy": {"file": "/etc/v/p.json"},
    "audit": {"directory": "/var/a", "single_file": "/var/a/one.jsonl", "key_label": "aud",
              "sync": "every_record", "sync_interval_ms": 5, "seal_every_records": 10,
              "seal_every_seconds": 20, "rotate_bytes": 2097152, "warn_free_bytes": 3,
              "refuse_free_bytes": 2, "try_append_only": false,
              "pkcs11": {"module": "/opt/hsm/audit.so", "token_label": "prod-audit",
                         "pin": {"file": "/etc/v/audit.pin"}}}
  })");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->socket.path, "/run/v/s.sock");
  EXPECT_EQ(config->socket.mode, 0600u);
  EXPECT_EQ(config->socket.group, "vecseal");
  EXPECT_EQ(config->pkcs11.module, "/opt/hsm/lib.so");
  EXPECT_EQ(config->pkcs11.token_label, "prod");
  EXPECT_EQ(config->pkcs11.sessions, 4u);
  EXPECT_EQ(config->pkcs11.pin.credential, "vecseal-pin");
  EXPECT_EQ(config->group_size, 16u);
  EXPECT_EQ(config->limits.max_body_bytes, 1000u);
  EXPECT_EQ(config->limits.max_vectors, 5u);
  EXPECT_EQ(config->limits.max_connections, 7u);
  EXPECT_EQ(config->limits.max_connections_per_uid, 3u);
  EXPECT_EQ(config->limits.max_buffered_body_bytes, 5000u);
  EXPECT_EQ(config->limits.max_header_bytes, 2048u);
  EXPECT_EQ(config->limits.header_timeout.count(), 11);
  EXPECT_EQ(config->limits.body_timeout.count(), 12);
  EXPECT_EQ(config->limits.idle_timeout.count(), 13);
  EXPECT_EQ(config->limits.write_timeout.count(), 14);
  EXPECT_EQ(config->threads.io, 3u);
  EXPECT_EQ(config->threads.workers, 9u);
  EXPECT_EQ(config->policy_file, "/etc/v/p.json");
  EXPECT_EQ(config->audit.directory, "/var/a");
  EXPECT_EQ(config->audit.single_file, "/var/a/one.jsonl");
  EXPECT_EQ(config->audit.key_label, "aud");
  EXPECT_TRUE(config->audit.sync_every_record);
  EXPECT_EQ(config->audit.sync_interval.count(), 5);
  EXPECT_EQ(config->audit.seal_every_records, 10u);
  EXPECT_EQ(config->audit.seal_every.count(), 20);
  EXPECT_EQ(config->audit.rotate_bytes, 2097152u);
  EXPECT_EQ(config->audit.warn_free_bytes, 3u);
  EXPECT_EQ(config->audit.refuse_free_bytes, 2u);
  EXPECT_FALSE(config->audit.try_append_only);
  ASSERT_TRUE(config->audit.pkcs11.has_value());
  EXPECT_EQ(config->audit.pkcs11->module, "/opt/hsm/audit.so");
  EXPECT_EQ(config->audit.pkcs11->token_label, "prod-audit");
  EXPECT_EQ(config->audit.pkcs11->pin.file, "/etc/v/audit.pin");
}

TEST(ConfigTest, TheAuditKeyStaysOnTheModelKeyTokenUnlessGivenItsOwn) {
  auto config = ParseConfig(std::string("{") + kPin + "}");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_FALSE(config->audit.pkcs11.has_value());

  // Without a module of its own, the audit token is found through the model keys' module.
  config = ParseConfig(R"({
    "pkcs11": {"module": "/opt/hsm/lib.so", "pin": {"file": "/etc/vecseal/pin"}},
    "audit": {"pkcs11": {"token_label": "vecseal-audit",
                         "pin": {"credential": "vecseal-audit-pin"}}}})");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  ASSERT_TRUE(config->audit.pkcs11.has_value());
  EXPECT_EQ(config->audit.pkcs11->module, "/opt/hsm/lib.so");
  EXPECT_EQ(config->audit.pkcs11->token_label, "vecseal-audit");
  EXPECT_EQ(config->audit.pkcs11->pin.credential, "vecseal-audit-pin");
}

struct BadConfig {
  std::string json;
  std::string message;
};

TEST(ConfigTest, MistakesAreRejectedWithTheirJsonPath) {
  const std::string pin = kPin;
  const std::vector<BadConfig> table = {
      {"[]", "$: must be an object, not array"},
      {"{}", "$.pkcs11: is required (at least \"pin\")"},
      {R"({"pkcs11": {}})",
       "$.pkcs11.pin: is required: {\"file\": \"/etc/vecseal/pin\"} or {\"credential\": "
       "\"vecseal-pin\"}"},
      {"{" + pin + R"(, "limit": {}})",
       "$.limit: unknown key (check the spelling against docs/configuration.md)"},
      {"{" + pin + R"(, "limits": {"max_vector": 1}})",
       "$.limits.max_vector: unknown key (check the spelling against docs/configuration.md)"},
      {"{" + pin + R"(, "limits": {"max_vectors": "10"}})",
       "$.limits.max_vectors: must be an integer, not string"},
      {"{" + pin + R"(, "limits": {"max_vectors": 1.5}})",
       "$.limits.max_vectors: must be an integer, not a number"},
      {"{" + pin + R"(, "limits": {"max_vectors": 0}})",
       "$.limits.max_vectors: must be between 1 and 10000000, got 0"},
      {"{" + pin + R"(, "limits": {"header_timeout_ms": -5}})",
       "$.limits.header_timeout_ms: must be between 1 and 86400000, got -5"},
      {"{" + pin + R"(, "limits": 5})", "$.limits: must be an object, not an integer"},
      {"{" + pin + R"(, "limits": {"max_connections_per_uid": 0}})",
       "$.limits.max_connections_per_uid: must be between 1 and 65536, got 0"},
      {"{" + pin + R"(, "limits": {"max_buffered_body_bytes": 1048576}})",
       "$.limits.max_buffered_body_bytes: must be at least max_body_bytes (67108864), got "
       "1048576; raise it or lower max_body_bytes"},
      {"{" + pin + R"(, "socket": {"mode": 660}})",
       "$.socket.mode: must be an octal string such as \"0660\", not an integer"},
      {"{" + pin + R"(, "socket": {"mode": "0666"}})",
       "$.socket.mode: must not grant any permission to others (the last digit must be 0), got "
       "\"0666\""},
      {"{" + pin + R"(, "socket": {"path": "run/vecseald.sock"}})",
       "$.socket.path: must be an absolute path (starting with '/'), got 'run/vecseald.sock'"},
      {R"({"pkcs11": {"pin": {"file": "/p", "credential": "c"}}})",
       "$.pkcs11.pin.file: set either \"file\" or \"credential\", not both"},
      {R"({"pkcs11": {"pin": {"env": "PIN"}}})",
       "$.pkcs11.pin.env: unknown key (check the spelling against docs/configuration.md)"},
      {"{" + pin + R"(, "derivation": {"group_size": 0}})",
       "$.derivation.group_size: must be between 1 and 4096, got 0"},
      {"{" + pin + R"(, "audit": {"sync": "always"}})",
       "$.audit.sync: must be \"every_record\" or \"interval\""},
      {"{" + pin + R"(, "threads": {"io": true}})", "$.threads.io: must be an integer, not boolean"},
      {"{" + pin + R"(, "audit": {"pkcs11": {"pin": {"file": "/etc/vecseal/audit.pin"}}}})",
       "$.audit.pkcs11.token_label: is required: the label of the token that holds the audit "
       "key alone"},
      {"{" + pin + R"(, "audit": {"pkcs11": {"token_label": "vecseal-audit"}}})",
       "$.audit.pkcs11.pin: is required: {\"file\": \"/etc/vecseal/audit.pin\"} or "
       "{\"credential\": \"vecseal-audit-pin\"}"},
      {"{" + pin + R"(, "audit": {"pkcs11": {"token_label": "vecseal-audit", "sessions": 2,
                                             "pin": {"file": "/etc/vecseal/audit.pin"}}}})",
       "$.audit.pkcs11.sessions: unknown key (check the spelling against docs/configuration.md)"},
      {"{" + pin + R"(, "audit": {"pkcs11": {"token_label": "vecseal",
                                             "pin": {"file": "/etc/vecseal/audit.pin"}}}})",
       "$.audit.pkcs11.token_label: names the model keys' token (\"vecseal\" in "
       "/usr/lib/softhsm/libsofthsm2.so), which gives the audit key no separation: whoever holds "
       "that token's PIN could re-sign seals over an edited log; name a token of its own, with "
       "its own PIN, or remove audit.pkcs11 (docs/audit.md)"},
      {"{" + pin + R"(, "audit": {"pkcs11": {"token_label": "vecseal-audit",
                                             "pin": {"file": "/etc/vecseal/pin"}}}})",
       "$.audit.pkcs11.pin: is the model-key token's PIN source (pkcs11.pin), so whoever holds "
       "that PIN holds the audit token's too; give the audit token a PIN of its own"},
  };
  for (const auto& entry : table) {
    SCOPED_TRACE(entry.json);
    auto config = ParseConfig(entry.json);
    ASSERT_FALSE(config.ok());
    EXPECT_EQ(config.status().reason(), "invalid_config");
    EXPECT_EQ(config.status().message(), entry.message);
  }
}

TEST(ConfigTest, SyntaxErrorsSayWhere) {
  auto config = ParseConfig("{\n  \"socket\": {,}\n}");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().reason(), "invalid_config");
  EXPECT_NE(config.status().message().find("line 2, column 14"), std::string::npos)
      << config.status().message();
}

// A number beyond a double's range is a broken file like any other, not an uncaught exception
// (found by tests/fuzz; its reproducers are in tests/fuzz/regressions/config).
TEST(ConfigTest, ANumberTooLargeForADoubleIsAnError) {
  auto config = ParseConfig(R"({"limits": {"max_vectors": 1e400}})", ConfigKind::kDevOverlay);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().reason(), "invalid_config");
  EXPECT_NE(config.status().message().find("1e400"), std::string::npos)
      << config.status().message();
}

TEST(ConfigTest, DevOverlayNeedsNoPin) {
  EXPECT_TRUE(ParseConfig(R"({"limits": {"max_vectors": 3}})", ConfigKind::kDevOverlay).ok());
  EXPECT_FALSE(ParseConfig(R"({"limits": {"max_vectors": 3}})", ConfigKind::kDaemon).ok());
}

TEST(ConfigTest, DevOverlayKeepsTheAuditKeyOnTheDevToken) {
  auto overlay = ParseConfig(R"({"audit": {"pkcs11": {"token_label": "vecseal-audit",
                                                      "pin": {"file": "/a.pin"}}}})",
                             ConfigKind::kDevOverlay);
  ASSERT_FALSE(overlay.ok());
  EXPECT_EQ(overlay.status().message(),
            "$.audit.pkcs11: is not available in dev mode, which keeps every key on its one "
            "token; remove it from the overlay");
}

TEST(ConfigTest, RestartOnlyChangesAreNamed) {
  Config current;
  Config next = current;
  next.limits.max_vectors = 3;
  next.group_size = 8;
  EXPECT_EQ(RestartOnlyChange(current, next), std::nullopt);
  next.socket.path = "/run/elsewhere.sock";
  EXPECT_EQ(RestartOnlyChange(current, next), "socket.path");
}

// The audit key's token is opened once, at start: a reload that would move it is refused.
TEST(ConfigTest, AnAuditTokenChangeNeedsARestart) {
  Config current;
  Config next = current;
  next.audit.pkcs11 = AuditPkcs11Config{.module = current.pkcs11.module,
                                        .token_label = "vecseal-audit",
                                        .pin = PinSource{.file = "/etc/vecseal/audit.pin", .credential = {}}};
  EXPECT_EQ(RestartOnlyChange(current, next), "audit.pkcs11");
  current = next;
  next.audit.pkcs11->pin = PinSource{.file = {}, .credential = "vecseal-audit-pin"};
  EXPECT_EQ(RestartOnlyChange(current, next), "audit.pkcs11");
  next.audit.pkcs11.reset();
  EXPECT_EQ(RestartOnlyChange(current, next), "audit.pkcs11");
}

class CheckConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir_template[] = "/tmp/vecseal-config-XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    dir_ = dir_template;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& text, mode_t mode = 0600) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::trunc) << text;
    chmod(path.c_str(), mode);
    return path;
  }

  std::string dir_;
};

TEST_F(CheckConfigTest, AcceptsAValidConfigAndPolicy) {
  const std::string policy = Write("policy.json", R"({"version": 1, "rules": []})");
  const std::string config =
      Write("vecseald.json", std::string("{") + kPin + R"(, "policy": {"file": ")" + policy + "\"}}");
  std::ostringstream out, err;
  EXPECT_EQ(CheckConfig(config, out, err), 0) << err.str();
  EXPECT_EQ(out.str(), config + ": ok (policy " + policy + ": 0 rules)\n");
}

TEST_F(CheckConfigTest, CountsASingleRuleInTheSingular) {
  const std::string policy = Write("policy.json", R"({"version": 1, "rules": [
      {"id": "scorer", "callers": {"uid": 1001}, "keys": ["k"], "operations": ["encrypt"]}]})");
  const std::string config =
      Write("vecseald.json", std::string("{") + kPin + R"(, "policy": {"file": ")" + policy + "\"}}");
  std::ostringstream out, err;
  EXPECT_EQ(CheckConfig(config, out, err), 0) << err.str();
  EXPECT_EQ(out.str(), config + ": ok (policy " + policy + ": 1 rule)\n");
}

// A group size cannot apply to format 2 keys, so it is never taken silently.
TEST_F(CheckConfigTest, SaysAGroupSizeAppliesToFormat1KeysOnly) {
  const std::string policy = Write("policy.json", R"({"version": 1, "rules": []})");
  const std::string config =
      Write("vecseald.json", std::string("{") + kPin + R"(, "derivation": {"group_size": 16}, )" +
                                 R"("policy": {"file": ")" + policy + "\"}}");
  std::ostringstream out, err;
  EXPECT_EQ(CheckConfig(config, out, err), 0) << err.str();
  EXPECT_EQ(out.str(), config + ": ok (policy " + policy + ": 0 rules)\n" + config +
                           ": note: derivation.group_size=16 applies to format v1 (hmac) key "
                           "versions only; format v2 (aes) versions derive every vector's own "
                           "seed in one HSM call per request\n");
}

TEST_F(CheckConfigTest, ReportsTheAuditKeysOwnToken) {
  const std::string policy = Write("policy.json", R"({"version": 1, "rules": []})");
  const std::string config = Write(
      "vecseald.json",
      std::string("{") + kPin + R"(, "policy": {"file": ")" + policy + R"("},
        "audit": {"pkcs11": {"token_label": "vecseal-audit",
                             "pin": {"file": "/etc/vecseal/audit.pin"}}}})");
  std::ostringstream out, err;
  EXPECT_EQ(CheckConfig(config, out, err), 0) << err.str();
  EXPECT_EQ(out.str(), config + ": ok (policy " + policy + ": 0 rules)\n" + config +
                           ": audit key \"vecseal-audit\" on its own token \"vecseal-audit\" in "
                           "/usr/lib/softhsm/libsofthsm2.so\n");
}

// Two paths to one module file load one library: the same label there is the same token.
TEST_F(CheckConfigTest, RefusesTheModelKeyTokenReachedThroughAnotherPathToItsModule) {
  const std::string module = Write("module.so", "");
  const std::string link = dir_ + "/link.so";
  ASSERT_EQ(symlink(module.c_str(), link.c_str()), 0);
  const std::string config = Write("vecseald.json", R"({
      "pkcs11": {"module": ")" + module + R"(", "pin": {"file": "/etc/vecseal/pin"}},
      "audit": {"pkcs11": {"module": ")" + link + R"(", "token_label": "vecseal",
                           "pin": {"file": "/etc/vecseal/audit.pin"}}}})");
  std::ostringstream out, err;
  EXPECT_EQ(CheckConfig(config, out, err), 1);
  EXPECT_EQ(err.str(), config + ": $.audit.pkcs11.token_label: names the model keys' token "
                                "(\"vecseal\" in " + module + "), which gives the audit key no "
                                "separation: whoever holds that token's PIN could re-sign seals "
                                "over an edited log; name a token of its own, with its own PIN, "
                                "or remove audit.pkcs11 (docs/audit.md)\n");
}

TEST_F(CheckConfigTest, RejectsAnUnknownDerivationWithItsPath) {
  const std::string config = Write(
      "vecseald.json", std::string("{") + kPin + R"(, "derivation": {"new_keys": "des"}})");
  std::ostringstream out, err;
  EXPECT_EQ(CheckConfig(config, out, err), 1);
  EXPECT_EQ(err.str(), config +
                           ": $.derivation.new_keys: must be \"aes\" (format v2, the default) or "
                           "\"hmac\" (format v1, for a module without CKM_AES_ECB)\n");
}

TEST_F(CheckConfigTest, RejectsAnUnknownKeyWithItsPath) {
  const std::string config = Write("vecseald.json", std::string("{") + kPin + R"(, "limts": {}})");
  std::ostringstream out, err;
  EXPECT_EQ(CheckConfig(config, out, err), 1);
  EXPECT_EQ(err.str(), config +
                           ": $.limts: unknown key (check the spelling against "
                           "docs/configuration.md)\n");
}

TEST_F(CheckConfigTest, RejectsAGroupWritableFile) {
  const std::string config = Write("vecseald.json", std::string("{") + kPin + "}", 0664);
  std::ostringstream out, err;
  EXPECT_EQ(CheckConfig(config, out, err), 1);
  EXPECT_NE(err.str().find("chmod go-w " + config), std::string::npos) << err.str();
}

TEST_F(CheckConfigTest, RejectsABrokenPolicy) {
  const std::string policy = Write("policy.json", R"({"version": 1, "rules": [)");
  const std::string config =
      Write("vecseald.json", std::string("{") + kPin + R"(, "policy": {"file": ")" + policy + "\"}}");
  std::ostringstream out, err;
  EXPECT_EQ(CheckConfig(config, out, err), 1);
  EXPECT_NE(err.str().find(config + ": policy.file: "), std::string::npos) << err.str();
}

TEST(CommandLineTest, ParsesModesAndRejectsMistakes) {
  const std::vector<std::string> dev = {"--dev", "--state-dir", "/tmp/x"};
  auto parsed = ParseCommandLine(dev);
  ASSERT_TRUE(parsed.ok());
  EXPECT_TRUE(parsed->dev);
  EXPECT_EQ(parsed->state_dir, "/tmp/x");
  const std::vector<std::string> check = {"--check-config", "/etc/v.json"};
  parsed = ParseCommandLine(check);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->mode, CommandLine::Mode::kCheckConfig);
  EXPECT_EQ(parsed->config_path, "/etc/v.json");
  const std::vector<std::string> policy = {"--check-policy", "/p.json", "--op", "encrypt"};
  parsed = ParseCommandLine(policy);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->check_policy_args, (std::vector<std::string>{"/p.json", "--op", "encrypt"}));

  const std::vector<std::string> unknown = {"--frobnicate"};
  EXPECT_EQ(ParseCommandLine(unknown).status().message(), "unknown argument '--frobnicate'");
  const std::vector<std::string> missing = {"--config"};
  EXPECT_EQ(ParseCommandLine(missing).status().message(), "--config needs a value");
  const std::vector<std::string> stray = {"--state-dir", "/tmp/x"};
  EXPECT_EQ(ParseCommandLine(stray).status().message(),
            "--state-dir is only meaningful with --dev");
}

}  // namespace
}  // namespace vecseal::daemon

namespace vecseal::daemon {
namespace {

// The ```json blocks of docs/configuration.md, in order.
std::vector<std::string> DocJsonBlocks() {
  std::ifstream in(VECSEAL_SOURCE_DIR "/docs/configuration.md");
  std::vector<std::string> blocks;
  std::string line;
  std::string* current = nullptr;
  while (std::getline(in, line)) {
    if (current == nullptr && line == "```json") {
      current = &blocks.emplace_back();
    } else if (current != nullptr && line == "```") {
      current = nullptr;
    } else if (current != nullptr) {
      *current += line + "\n";
    }
  }
  return blocks;
}

TEST(ConfigDocsTest, TheCompleteExampleParsesAndShowsTheDefaults) {
  const auto blocks = DocJsonBlocks();
  ASSERT_EQ(blocks.size(), 3u) << "docs/configuration.md: expected the complete example, the "
                                  "audit token and the dev-mode overlay";
  auto config = ParseConfig(blocks[0]);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  // Apart from what the shipped config sets (the next test), the example spells out the defaults.
  Config expected;
  expected.pkcs11.pin.credential = "hsm-pin";
  expected.socket.group = "vecseal-clients";
  expected.audit.directory = "/var/log/vecseal";
  EXPECT_EQ(RestartOnlyChange(expected, *config), std::nullopt);
  EXPECT_EQ(config->group_size, expected.group_size);
  EXPECT_EQ(config->limits.max_body_bytes, expected.limits.max_body_bytes);
  EXPECT_EQ(config->limits.max_vectors, expected.limits.max_vectors);
  EXPECT_EQ(config->limits.max_connections, expected.limits.max_connections);
  EXPECT_EQ(config->limits.max_connections_per_uid, expected.limits.max_connections_per_uid);
  EXPECT_EQ(config->limits.max_buffered_body_bytes, expected.limits.max_buffered_body_bytes);
  EXPECT_EQ(config->limits.max_header_bytes, expected.limits.max_header_bytes);
  EXPECT_EQ(config->limits.derivation_ms_per_minute_per_uid,
            expected.limits.derivation_ms_per_minute_per_uid);
  EXPECT_EQ(config->limits.denied_requests_per_minute_per_uid,
            expected.limits.denied_requests_per_minute_per_uid);
  EXPECT_EQ(config->limits.header_timeout, expected.limits.header_timeout);
  EXPECT_EQ(config->limits.body_timeout, expected.limits.body_timeout);
  EXPECT_EQ(config->limits.idle_timeout, expected.limits.idle_timeout);
  EXPECT_EQ(config->limits.write_timeout, expected.limits.write_timeout);
  EXPECT_EQ(config->policy_file, expected.policy_file);

  auto overlay = ParseConfig(blocks[2], ConfigKind::kDevOverlay);
  ASSERT_TRUE(overlay.ok()) << overlay.status().ToString();
  EXPECT_EQ(overlay->group_size, 16u);
}

TEST(ConfigDocsTest, TheAuditTokenExampleGivesTheAuditKeyItsOwnTokenAndPin) {
  const auto blocks = DocJsonBlocks();
  ASSERT_EQ(blocks.size(), 3u);
  auto config = ParseConfig(blocks[1]);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  ASSERT_TRUE(config->audit.pkcs11.has_value());
  EXPECT_EQ(config->audit.pkcs11->module, config->pkcs11.module);
  EXPECT_NE(config->audit.pkcs11->token_label, config->pkcs11.token_label);
  EXPECT_EQ(config->audit.pkcs11->pin.credential, "vecseal-audit-pin");
  EXPECT_NE(config->audit.pkcs11->pin, config->pkcs11.pin);
}

// The complete example is the shipped /etc/vecseal/vecseald.json plus defaults: every value the
// shipped file sets, the example sets alike, so that what a reader copies is what is installed.
TEST(ConfigDocsTest, TheCompleteExampleHoldsTheShippedConfig) {
  const nlohmann::json example = nlohmann::json::parse(DocJsonBlocks().at(0));
  std::ifstream shipped_file(VECSEAL_SOURCE_DIR "/packaging/etc/vecseald.json");
  const nlohmann::json shipped = nlohmann::json::parse(shipped_file);
  const nlohmann::json flat = shipped.flatten();
  ASSERT_GE(flat.size(), 5u);
  for (const auto& [pointer, value] : flat.items()) {
    const nlohmann::json::json_pointer path(pointer);
    ASSERT_TRUE(example.contains(path)) << "the example leaves out " << pointer;
    EXPECT_EQ(example.at(path), value) << pointer;
  }
}

// Every `section.key` a page of docs/ or README.md names, as `audit.seal_every_seconds`, is a
// key the parser accepts: set in the complete example, it may be refused for its value, never
// as an unknown key. Policy operations (`audit.read`) and file names (`policy.json`) are not
// keys.
TEST(ConfigDocsTest, EveryConfigKeyTheDocsNameIsAccepted) {
  const nlohmann::json example = nlohmann::json::parse(DocJsonBlocks().at(0));
  const std::set<std::string> sections = {"socket",  "pkcs11", "derivation", "limits",
                                          "threads", "policy", "audit"};
  const std::set<std::string> not_keys = {"audit.read", "pkcs11.h", "policy.json"};
  const std::regex dotted("`([a-z0-9_]+(\\.[a-z0-9_]+)+)`");
  std::set<std::string> named;
  std::vector<std::string> pages = {VECSEAL_SOURCE_DIR "/README.md"};
  for (const auto& entry : std::filesystem::directory_iterator(VECSEAL_SOURCE_DIR "/docs")) {
    if (entry.path().extension() == ".md") pages.push_back(entry.path());
  }
  for (const std::string& page : pages) {
    std::stringstream contents;
    contents << std::ifstream(page).rdbuf();
    const std::string text = contents.str();
    for (std::sregex_iterator it(text.begin(), text.end(), dotted), end; it != end; ++it) {
      const std::string path = (*it)[1];
      if (sections.contains(path.substr(0, path.find('.'))) && !not_keys.contains(path)) {
        named.insert(path);
      }
    }
  }
  ASSERT_GE(named.size(), 20u) << "the scan found too few keys to be working";
  for (const std::string& path : named) {
    bool accepted = false;
    for (const nlohmann::json& probe : {nlohmann::json(1), nlohmann::json("x"),
                                        nlohmann::json(true), nlohmann::json::object()}) {
      nlohmann::json config = example;
      config[nlohmann::json::json_pointer("/" + std::regex_replace(path, std::regex("\\."), "/"))] =
          probe;
      const auto parsed = ParseConfig(config.dump());
      accepted = accepted || parsed.ok() ||
                 parsed.status().message().find("unknown key") == std::string::npos;
    }
    EXPECT_TRUE(accepted) << "the docs name `" << path << "`, which is not a config key";
  }
}

}  // namespace
}  // namespace vecseal::daemon
