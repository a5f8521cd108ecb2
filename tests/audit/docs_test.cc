// Runs every example of docs/audit.md against a real log and compares the output, and checks
// the command line's exit codes and error text.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <regex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "audit_command.h"
#include "support/audit_test_util.h"
#include "support/software_signer.h"
#include "vecseal/audit/log.h"
#include "vecseal/audit/verify.h"

namespace vecseal::audit {
namespace {

using testing::SoftwareSigner;
using testing::TempDir;

// The log the documentation talks about: alice encrypts with "demo", bob decrypts with
// "search" and is once denied; sealed every 5 records, rotated at 4 KiB.
void WriteDocsLog(const std::string& root,
                  std::shared_ptr<SoftwareSigner> signer = SoftwareSigner::Generate()) {
  testing::WriteFileText(root + "/audit-key.pem", *signer->PublicKeyPem());
  LogOptions options = testing::TestOptions(root + "/audit");
  std::filesystem::create_directory(options.dir);
  options.rotate_bytes = 4096;
  auto log = Log::Open(options, signer);
  ASSERT_TRUE(log.ok());
  for (int i = 0; i < 12; ++i) {
    const bool alice = i % 2 == 0;
    Event event;
    event.event = alice ? "encrypt" : "decrypt";
    event.request_id = "r" + std::to_string(100 + i);
    event.caller = alice ? Caller{4242, 1000, "alice", 1000, "/usr/bin/python3.11",
                                  std::string(64, 'a'), "embedder.service", "/srv/embed.py", ""}
                         : Caller{5151, 1001, "bob", 1001, "/usr/local/bin/search-api",
                                  std::string(64, 'b'), "search.service", "", ""};
    event.key = alice ? "demo" : "search";
    event.key_version = 1;
    event.operation = event.event;
    event.vectors = alice ? 1024 : 1;
    event.dimension = 768;
    event.reversible = !alice;
    event.decision = "granted";
    event.rule_id = alice ? "embedders" : "search-readers";
    if (i == 7) {
      event.event = "deny";
      event.decision = "denied";
      event.rule_id.clear();
      event.error_code = "permission_denied";
    }
    ASSERT_TRUE((*log)->Append(event).ok());
  }
  ASSERT_TRUE((*log)->Close().ok());
}

// "..." in an expected line matches anything.
bool LineMatches(const std::string& expected, const std::string& actual) {
  std::string pattern;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (expected.compare(i, 3, "...") == 0) {
      pattern += ".*";
      i += 2;
    } else if (std::string_view("\\^$.|?*+()[]{}").find(expected[i]) != std::string_view::npos) {
      pattern += std::string("\\") + expected[i];
    } else {
      pattern += expected[i];
    }
  }
  return std::regex_match(actual, std::regex(pattern));
}

std::vector<std::string> SplitLines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::string RunShell(const std::string& dir, const std::string& command) {
  const std::string full = "cd '" + dir + "' && PATH=/usr/bin:/bin sh -c '" + command + "' 2>&1";
  FILE* pipe = popen(full.c_str(), "r");
  std::string output;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
  pclose(pipe);
  return output;
}

std::string RunVecseal(const std::string& command) {
  std::string line = command;
  bool echo_exit = false;
  const std::string suffix = "; echo \"exit $?\"";
  if (line.ends_with(suffix)) {
    echo_exit = true;
    line.resize(line.size() - suffix.size());
  }
  std::istringstream words(line);
  std::vector<std::string> args;
  for (std::string word; words >> word;) args.push_back(word);
  EXPECT_GE(args.size(), 2u);
  const std::vector<std::string> rest(args.begin() + 2, args.end());  // after "vecseal audit"
  std::ostringstream out;
  const int code = RunAuditCommand(rest, out, out);
  return out.str() + (echo_exit ? "exit " + std::to_string(code) + "\n" : "");
}

TEST(AuditDocsTest, EveryExampleInDocsAuditMdRuns) {
  const std::string doc_path = std::string(VECSEAL_SOURCE_DIR) + "/docs/audit.md";
  const std::vector<std::string> doc = SplitLines(testing::ReadFileText(doc_path));
  ASSERT_FALSE(doc.empty()) << "cannot read " << doc_path;
  TempDir dir;
  WriteDocsLog(dir.path());
  const std::filesystem::path old_cwd = std::filesystem::current_path();
  std::filesystem::current_path(dir.path());

  int commands = 0;
  for (size_t i = 0; i < doc.size(); ++i) {
    if (doc[i] == "```python" && i + 1 < doc.size() && doc[i + 1].starts_with("# ")) {
      // A script the examples run: saved under the name its first line gives.
      const std::string name = doc[i + 1].substr(2, doc[i + 1].find(':') - 2);
      std::string text;
      for (++i; i < doc.size() && doc[i] != "```"; ++i) text += doc[i] + "\n";
      testing::WriteFileText(dir.path() + "/" + name, text);
      continue;
    }
    if (doc[i] != "```console") continue;
    for (++i; i < doc.size() && doc[i] != "```";) {
      ASSERT_TRUE(doc[i].starts_with("$ ")) << "docs/audit.md:" << i + 1;
      const std::string command = doc[i].substr(2);
      std::vector<std::string> expected;
      for (++i; i < doc.size() && doc[i] != "```" && !doc[i].starts_with("$ "); ++i) {
        expected.push_back(doc[i]);
      }
      if (command.starts_with("python3 ") &&
          std::system("/usr/bin/python3 -c 'import cryptography' 2>/dev/null") != 0) {
        std::printf("not run (python3-cryptography is not installed): $ %s\n", command.c_str());
        continue;
      }
      const std::string output = command.starts_with("vecseal audit ")
                                     ? RunVecseal(command)
                                     : RunShell(dir.path(), command);
      ++commands;
      if (std::getenv("VECSEAL_DOCS_PRINT")) std::printf("$ %s\n%s", command.c_str(), output.c_str());
      const std::vector<std::string> actual = SplitLines(output);
      EXPECT_EQ(actual.size(), expected.size()) << "$ " << command << "\n" << output;
      for (size_t k = 0; k < std::min(actual.size(), expected.size()); ++k) {
        EXPECT_TRUE(LineMatches(expected[k], actual[k]))
            << "$ " << command << "\nexpected: " << expected[k] << "\nactual:   " << actual[k];
      }
    }
  }
  std::filesystem::current_path(old_cwd);
  EXPECT_GE(commands, 5) << "the examples were not found";
}

// RSA-PSS seals (an audit key on a token without EC, e.g. opencryptoki's soft token): the same
// log verifies with `vecseal audit verify` and with docs/audit.md's independent verifier.
TEST(AuditDocsTest, RsaPssSealsVerifyWithTheCommandAndTheIndependentVerifier) {
  const std::string doc =
      testing::ReadFileText(std::string(VECSEAL_SOURCE_DIR) + "/docs/audit.md");
  const size_t start = doc.find("```python\n# verify_seals.py");
  ASSERT_NE(start, std::string::npos) << "docs/audit.md has no verify_seals.py";
  const size_t body = doc.find('\n', start) + 1;
  TempDir dir;
  WriteDocsLog(dir.path(), SoftwareSigner::GenerateRsaPss());
  testing::WriteFileText(dir.path() + "/verify_seals.py",
                         doc.substr(body, doc.find("```", body) - body));
  const std::filesystem::path old_cwd = std::filesystem::current_path();
  std::filesystem::current_path(dir.path());
  const std::string verified = RunVecseal("vecseal audit verify --pubkey audit-key.pem audit/");
  std::smatch last;
  ASSERT_TRUE(std::regex_search(verified, last,
                                std::regex("^OK: [0-9]+ records \\(seq 1\\.\\.([0-9]+)\\).* 0 warnings")))
      << verified;
  if (std::system("/usr/bin/python3 -c 'import cryptography' 2>/dev/null") == 0) {
    EXPECT_EQ(RunShell(dir.path(), "python3 verify_seals.py audit-key.pem audit/*.jsonl"),
              "chain intact up to seq " + last[1].str() + ", sealed up to seq " +
                  last[1].str() + "\n");
  } else {
    std::printf("not run (python3-cryptography is not installed): verify_seals.py\n");
  }
  std::filesystem::current_path(old_cwd);
}

struct CommandCase {
  std::vector<std::string> args;
  int exit_code;
  std::string err;  // a line the error output must contain
};

TEST(AuditCommandTest, UsageErrorsAndExitCodes) {
  TempDir dir;
  WriteDocsLog(dir.path());
  const std::string key = dir.path() + "/audit-key.pem";
  const std::string log = dir.path() + "/audit";
  testing::WriteFileText(dir.path() + "/not-a-key.pem", "hello\n");
  const std::vector<CommandCase> cases = {
      {{}, 2,
       "usage: vecseal audit verify --pubkey KEY.pem [--anchor SEQ:HEAD]... "
       "[--allow-unsealed-tail]"},
      {{"verify", "--pubkey", key, "--anchor", "12", log}, 2,
       "vecseal audit verify: --anchor 12: expected SEQ:HEAD, a seal's seq and its 64-hex-digit "
       "head"},
      {{"verify", "--pubkey", key, "--anchor", "x:" + std::string(64, 'a'), log}, 2,
       "expected SEQ:HEAD"},
      {{"frobnicate"}, 2, "vecseal audit: unknown command \"frobnicate\""},
      {{"verify", log}, 2, "vecseal audit verify: needs --pubkey and at least one file"},
      {{"verify", "--pubkey", key}, 2, "vecseal audit verify: needs --pubkey and at least one file"},
      {{"verify", "--pubkey", key, "--fast", log}, 2,
       "vecseal audit verify: unknown or incomplete option --fast"},
      {{"verify", "--pubkey", dir.path() + "/missing.pem", log}, 3,
       "vecseal audit verify: cannot read " + dir.path() + "/missing.pem"},
      {{"verify", "--pubkey", dir.path() + "/not-a-key.pem", log}, 3,
       "the audit public key is not a PEM \"PUBLIC KEY\" block"},
      {{"verify", "--pubkey", key, dir.path() + "/nope.jsonl"}, 3, ""},
      {{"verify", "--pubkey", key, log}, 0, ""},
      {{"show", "--since", "yesterday", log}, 2,
       "vecseal audit show: --since yesterday: not an ISO 8601 UTC time such as 2026-11-25T03:04"},
      {{"show", "--key"}, 2, "vecseal audit show: unknown or incomplete option --key"},
      {{"show"}, 2, "vecseal audit show: needs at least one file"},
      {{"show", dir.path() + "/nope.jsonl"}, 3, "vecseal audit show: cannot open"},
  };
  for (const CommandCase& c : cases) {
    std::ostringstream out, err;
    const int code = RunAuditCommand(c.args, out, err);
    std::string joined;
    for (const auto& a : c.args) joined += a + " ";
    EXPECT_EQ(code, c.exit_code) << joined << "\n" << out.str() << err.str();
    EXPECT_THAT(err.str(), ::testing::HasSubstr(c.err)) << joined;
  }
}

TEST(AuditCommandTest, JsonReportNamesTheFirstBadRecord) {
  TempDir dir;
  WriteDocsLog(dir.path());
  const auto files = testing::LogFiles(dir.path() + "/audit");
  auto lines = testing::ReadLines(files[0]);
  lines.erase(lines.begin() + 3);
  testing::WriteLines(files[0], lines);
  std::ostringstream out, err;
  const int code = RunAuditCommand(
      std::vector<std::string>{"verify", "--json", "--pubkey", dir.path() + "/audit-key.pem",
                               dir.path() + "/audit"},
      out, err);
  EXPECT_EQ(code, 1);
  const auto report = nlohmann::json::parse(out.str());
  EXPECT_EQ(report["ok"], false);
  EXPECT_EQ(report["error"]["code"], "missing_records");
  EXPECT_EQ(report["error"]["seq"], 4);
  EXPECT_EQ(report["error"]["line"], 4);
  EXPECT_EQ(report["error"]["file"], files[0]);
}

TEST(AuditCommandTest, ShowFiltersByKeyCallerEventAndTime) {
  TempDir dir;
  WriteDocsLog(dir.path());
  const std::string log = dir.path() + "/audit";
  const auto run = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"show", "--json"});
    args.push_back(log);
    std::ostringstream out, err;
    EXPECT_EQ(RunAuditCommand(args, out, err), 0) << err.str();
    std::vector<nlohmann::json> records;
    for (const auto& line : SplitLines(out.str())) records.push_back(nlohmann::json::parse(line));
    return records;
  };
  const auto all = run({});
  size_t demo = 0, bob = 0, denies = 0;
  for (const auto& r : all) {
    demo += r.value("key", "") == "demo";
    bob += r.contains("caller") && r["caller"]["user"] == "bob";
    denies += r["event"] == "deny";
  }
  EXPECT_GT(demo, 0u);
  EXPECT_EQ(run({"--key", "demo"}).size(), demo);
  EXPECT_EQ(run({"--caller", "bob"}).size(), bob);
  EXPECT_EQ(run({"--caller", "1001"}).size(), bob);
  EXPECT_EQ(run({"--caller", "search.service"}).size(), bob);
  EXPECT_EQ(run({"--event", "deny"}).size(), denies);
  EXPECT_EQ(run({"--key", "demo", "--caller", "bob"}).size(), 0u);
  const std::string middle = all[all.size() / 2]["time"];
  const auto later = run({"--since", middle});
  const auto earlier = run({"--until", middle});
  EXPECT_EQ(later.size() + earlier.size(), all.size());
  EXPECT_EQ(later.front()["time"], middle);
  EXPECT_TRUE(run({"--until", "2000"}).empty());
}

// `show` reads files that anyone with write access may have edited: mistyped fields must not
// throw, and a caller's exe path must not be able to print a forged line.
TEST(AuditCommandTest, ShowSurvivesMistypedFieldsAndEscapesControlCharacters) {
  TempDir dir;
  const std::string file = dir.path() + "/audit-hostile.jsonl";
  testing::WriteFileText(
      file,
      "{\"seq\":\"x\",\"time\":5,\"event\":[1],\"decision\":{},\"key_version\":\"v\"}\n"
      "{\"seq\":2,\"time\":\"t\",\"event\":\"encrypt\",\"caller\":{\"user\":7,\"uid\":\"a\","
      "\"pid\":null,\"exe\":\"/tmp/a\\n99 2026-01-01T00:00:00Z forged\\u001b[2J\"}}\n");
  std::ostringstream out, err;
  EXPECT_EQ(RunAuditCommand(std::vector<std::string>{"show", file}, out, err), 0) << err.str();
  const std::vector<std::string> lines = SplitLines(out.str());
  ASSERT_EQ(lines.size(), 2u) << out.str();
  EXPECT_EQ(lines[0], "x 5 [1] {} version=v");
  EXPECT_EQ(lines[1],
            "2 t encrypt caller=7(a) pid=null "
            "exe=/tmp/a\\x0a99 2026-01-01T00:00:00Z forged\\x1b[2J");
}

}  // namespace
}  // namespace vecseal::audit
