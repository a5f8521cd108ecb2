// Runs the shell examples of docs/operations.md and docs/configuration.md: each ```sh block after
// a `<!-- example: NAME -->` line (curl examples are doc_examples_test's) runs in bash with the
// built vecseald first on PATH, `sudo` running its command as the test's own user, and the
// documented paths and user swapped for scratch ones. A `# text` line after a command is a line
// its output must hold; a `# => field: value` line, a field of its JSON output.
#include <fcntl.h>
#include <linux/fs.h>
#include <pwd.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace vecseal::daemon {
namespace {

using nlohmann::json;
using Substitutions = std::vector<std::pair<std::string, std::string>>;

std::string Trim(const std::string& text) {
  const size_t start = text.find_first_not_of(" \t\r\n");
  if (start == std::string::npos) return "";
  return text.substr(start, text.find_last_not_of(" \t\r\n") - start + 1);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void WriteFile(const std::string& path, const std::string& text, std::filesystem::perms mode) {
  std::ofstream(path, std::ios::trunc) << text;
  std::filesystem::permissions(path, mode);
}

// Commands up to a run of `# ` lines, and what those lines expect of the commands' output.
struct Segment {
  std::string commands;
  std::vector<std::string> lines;                           // `# text`
  std::vector<std::pair<std::string, std::string>> fields;  // `# => path: value`
};

struct Example {
  std::string where;     // file:line of the ```sh line
  std::string json;      // the last ```json block before the marker
  std::string text;      // the block as written, to check that substitutions apply
  std::vector<Segment> segments;
};

// The one example marked `<!-- example: NAME -->` in `doc` (relative to the source tree).
Example FindExample(const std::string& doc, const std::string& name) {
  std::istringstream in(ReadFile(std::string(VECSEAL_SOURCE_DIR) + "/" + doc));
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  Example example;
  std::string json_block;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (Trim(lines[i]) == "```json") {
      json_block.clear();
      for (++i; i < lines.size() && Trim(lines[i]) != "```"; ++i) json_block += lines[i] + "\n";
      continue;
    }
    if (Trim(lines[i]) != "<!-- example: " + name + " -->") continue;
    size_t at = i + 1;
    while (at < lines.size() && Trim(lines[at]).empty()) ++at;
    if (at >= lines.size() || Trim(lines[at]) != "```sh") {
      ADD_FAILURE() << doc << ":" << i + 1 << ": the marker is not followed by a ```sh block";
      return example;
    }
    example.where = doc + ":" + std::to_string(at + 1);
    example.json = json_block;
    Segment segment;
    for (++at; at < lines.size() && Trim(lines[at]) != "```"; ++at) {
      const std::string& line = lines[at];
      example.text += line + "\n";
      if (line.rfind("# => ", 0) == 0) {
        const size_t colon = line.find(": ", 5);
        if (colon == std::string::npos) {
          ADD_FAILURE() << example.where << ": malformed expectation '" << line << "'";
          continue;
        }
        segment.fields.emplace_back(line.substr(5, colon - 5), line.substr(colon + 2));
      } else if (line.rfind("# ", 0) == 0) {
        segment.lines.push_back(line.substr(2));
      } else {
        if (!segment.lines.empty() || !segment.fields.empty()) {
          example.segments.push_back(std::move(segment));
          segment = Segment{};
        }
        segment.commands += line + "\n";
      }
    }
    example.segments.push_back(std::move(segment));
    return example;
  }
  ADD_FAILURE() << doc << " has no `<!-- example: " << name << " -->`";
  return example;
}

std::string Substitute(std::string text, const Substitutions& substitutions) {
  for (const auto& [from, to] : substitutions) {
    for (size_t at = text.find(from); at != std::string::npos;
         at = text.find(from, at + to.size())) {
      text.replace(at, from.size(), to);
    }
  }
  return text;
}

// Every documented value must occur, so that a reworded doc fails here instead of running
// something other than what it shows.
void ExpectMentions(const std::string& text, const Substitutions& substitutions,
                    const std::string& where) {
  for (const auto& [from, to] : substitutions) {
    EXPECT_NE(text.find(from), std::string::npos)
        << where << ": '" << from << "' no longer appears";
  }
}

// Run as root, a dev daemon makes its audit files append-only, which remove_all cannot delete.
void ClearAppendOnly(const std::string& root) {
  std::error_code error;
  for (auto it = std::filesystem::recursive_directory_iterator(root, error);
       !error && it != std::filesystem::recursive_directory_iterator(); it.increment(error)) {
    if (!it->is_regular_file(error)) continue;
    const int fd = open(it->path().c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) continue;
    int flags = 0;
    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0 && (flags & FS_APPEND_FL) != 0) {
      flags &= ~FS_APPEND_FL;
      ioctl(fd, FS_IOC_SETFLAGS, &flags);
    }
    close(fd);
  }
}

// A fresh directory, removed with everything in it on destruction.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = std::filesystem::temp_directory_path() / "vecseal-shell-docs-XXXXXX";
    path_ = mkdtemp(pattern.data()) != nullptr ? std::filesystem::canonical(pattern).string() : "";
  }
  ~ScratchDir() {
    if (path_.empty()) return;
    ClearAppendOnly(path_);
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

constexpr std::string_view kMarker = "@@vecseal-doc-segment@@";

// Runs the example's commands (after substitution) and checks each segment's expectations.
void RunExample(const Example& example, const Substitutions& substitutions,
                const std::string& work_dir, const std::string& epilogue = "") {
  SCOPED_TRACE(example.where);
  ASSERT_FALSE(example.segments.empty());
  const std::string bin_dir = std::filesystem::path(VECSEALD_PATH).parent_path();
  ExpectMentions(example.text, substitutions, example.where);
  // A background job (a daemon) does not outlive the example, even a failed one.
  std::string script = "set -eo pipefail\ntrap 'jobs -p | xargs -r kill 2>/dev/null' EXIT\n"
                       "sudo() { \"$@\"; }\nexport PATH='" + bin_dir + "':$PATH\n";
  for (const auto& segment : example.segments) {
    script += Substitute(segment.commands, substitutions);
    script += "echo '" + std::string(kMarker) + "'\n";
  }
  script += epilogue;
  const std::string script_path = work_dir + "/example.sh";
  std::ofstream(script_path, std::ios::trunc) << script;
  // A background daemon that never became ready must not hang the suite.
  const std::string command = "cd '" + work_dir + "' && timeout 120 bash example.sh";
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[4096];
  for (size_t n; (n = fread(buffer, 1, sizeof buffer, pipe)) > 0;) output.append(buffer, n);
  const int status = pclose(pipe);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "the example failed; script:\n" << script << "output:\n" << output;

  size_t start = 0;
  for (const auto& segment : example.segments) {
    const size_t end = output.find(kMarker, start);
    ASSERT_NE(end, std::string::npos) << output;
    const std::string printed = output.substr(start, end - start);
    start = end + kMarker.size() + 1;
    for (const std::string& line : segment.lines) {
      const std::string expected = Substitute(line, substitutions) + "\n";
      EXPECT_NE(("\n" + printed).find("\n" + expected), std::string::npos)
          << "missing line: " << expected << "output:\n" << printed;
    }
    if (segment.fields.empty()) continue;
    const json document = json::parse(printed, nullptr, false);
    ASSERT_FALSE(document.is_discarded()) << "not JSON: " << printed;
    for (const auto& [field, value] : segment.fields) {
      ASSERT_TRUE(document.contains(field)) << "no field '" << field << "' in " << printed;
      EXPECT_EQ(document[field], json::parse(value)) << field << " in " << printed;
    }
  }
}

std::string MyUserName() {
  const passwd* me = getpwuid(geteuid());
  return me != nullptr ? me->pw_name : "";
}

TEST(ShellDocsTest, OperationsMdCheckPolicyExampleGrantsTheScorer) {
  ScratchDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string user = MyUserName();
  ASSERT_FALSE(user.empty()) << "the test's uid has no passwd entry";
  const Example example = FindExample("docs/operations.md", "check-policy");
  ASSERT_FALSE(example.json.empty()) << "no policy before the example";
  // The scorer's program and account exist only on the reader's machine: a scratch program and
  // the test's own user stand in for them.
  WriteFile(dir / "scorer", "#!/bin/true\nthe scorer\n", std::filesystem::perms(0755));
  const Substitutions policy_substitutions = {
      {"\"user\": \"scorer\"", "\"user\": \"" + user + "\""},
      {"/opt/scorer/bin/scorer", dir / "scorer"}};
  ExpectMentions(example.json, policy_substitutions, example.where);
  WriteFile(dir / "policy.json",
            Substitute(example.json, policy_substitutions),
            std::filesystem::perms(0644));
  RunExample(example,
             {{"/etc/vecseal/policy.json", dir / "policy.json"},
              {"/opt/scorer/bin/scorer", dir / "scorer"},
              {"id -u scorer", "id -u " + user}},
             dir.path());
}

TEST(ShellDocsTest, ConfigurationMdCheckConfigExamplePrintsWhatItClaims) {
  ScratchDir dir;
  ASSERT_FALSE(dir.path().empty());
  const Example example = FindExample("docs/configuration.md", "check-config");
  // The complete example of the same page, and the policy the text names.
  const std::string markdown = ReadFile(VECSEAL_SOURCE_DIR "/docs/configuration.md");
  const size_t config_at = markdown.find("```json\n", markdown.find("## A complete example"));
  ASSERT_NE(config_at, std::string::npos);
  const std::string config_text =
      markdown.substr(config_at + 8, markdown.find("```", config_at + 8) - config_at - 8);
  const std::string policy_md = ReadFile(VECSEAL_SOURCE_DIR "/docs/policy.md");
  const size_t policy_at = policy_md.find("```json\n", policy_md.find("## Format"));
  ASSERT_NE(policy_at, std::string::npos);
  WriteFile(dir / "policy.json",
            policy_md.substr(policy_at + 8, policy_md.find("```", policy_at + 8) - policy_at - 8),
            std::filesystem::perms(0644));
  const Substitutions paths = {{"/etc/vecseal/vecseald.json", dir / "vecseald.json"},
                               {"/etc/vecseal/policy.json", dir / "policy.json"}};
  WriteFile(dir / "vecseald.json",
            Substitute(config_text, {{"/etc/vecseal/policy.json", dir / "policy.json"}}),
            std::filesystem::perms(0600));
  RunExample(example, paths, dir.path());
}

TEST(ShellDocsTest, ConfigurationMdAuditTokenExampleIsReportedByCheckConfig) {
  ScratchDir dir;
  ASSERT_FALSE(dir.path().empty());
  const Example example = FindExample("docs/configuration.md", "check-config-audit-token");
  ASSERT_NE(example.json.find("\"audit\""), std::string::npos) << "no audit.pkcs11 example before";
  const std::string policy_md = ReadFile(VECSEAL_SOURCE_DIR "/docs/policy.md");
  const size_t policy_at = policy_md.find("```json\n", policy_md.find("## Format"));
  ASSERT_NE(policy_at, std::string::npos);
  WriteFile(dir / "policy.json",
            policy_md.substr(policy_at + 8, policy_md.find("```", policy_at + 8) - policy_at - 8),
            std::filesystem::perms(0644));
  WriteFile(dir / "vecseald.json",
            Substitute(example.json, {{"/etc/vecseal/policy.json", dir / "policy.json"}}),
            std::filesystem::perms(0600));
  RunExample(example,
             {{"/etc/vecseal/vecseald.json", dir / "vecseald.json"},
              {"/etc/vecseal/policy.json", dir / "policy.json"}},
             dir.path());
}

TEST(ShellDocsTest, ConfigurationMdDevOverlayExampleStartsAndCreatesTheKey) {
  ScratchDir dir;
  ASSERT_FALSE(dir.path().empty());
  const Example example = FindExample("docs/configuration.md", "dev-overlay");
  ASSERT_FALSE(example.json.empty()) << "no overlay before the example";
  WriteFile(dir / "load.json", example.json, std::filesystem::perms(0600));
  // The daemon runs in the background; it must stop cleanly (exit 0) when the example is done.
  RunExample(example,
             {{"build/bin/vecseald", VECSEALD_PATH},
              {"/tmp/vecseal-load", dir / "vecseal-load"},
              {"/tmp/load.json", dir / "load.json"}},
             dir.path(), "kill \"$!\"\nwait \"$!\"\n");
}

// The by-hand start of docs/operations.md, as the page's root would run it: a real other uid
// (64120, with no passwd entry, so numbers stand in for the names), a SoftHSM2 token of its
// own, and the shipped configuration with scratch paths.
class WithoutSystemdTest : public ::testing::Test {
 protected:
  static constexpr uid_t kUid = 64120;

  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root: the daemon runs as another uid (setpriv)";
    ASSERT_FALSE(dir_.path().empty());
    std::filesystem::permissions(dir_.path(), std::filesystem::perms(0755));
    // What Token set-up and the package leave behind.
    ASSERT_TRUE(std::filesystem::create_directory(dir_ / "tokens"));
    WriteFile(dir_ / "softhsm2.conf",
              "directories.tokendir = " + (dir_ / "tokens") + "\nobjectstore.backend = file\n",
              std::filesystem::perms(0644));
    const std::string init_token = "SOFTHSM2_CONF='" + (dir_ / "softhsm2.conf") +
                                   "' softhsm2-util --init-token --free --label vecseal "
                                   "--pin 4711-user --so-pin 4711-so > /dev/null && chown -R " +
                                   Id() + ":" + Id() + " '" + (dir_ / "tokens") + "'";
    ASSERT_EQ(std::system(init_token.c_str()), 0) << init_token;
    WriteFile(dir_ / "hsm-pin", "4711-user\n", std::filesystem::perms(0600));
    WriteFile(dir_ / "policy.json", R"({"version": 1, "rules": []})",
              std::filesystem::perms(0644));
    ASSERT_TRUE(std::filesystem::create_directory(dir_ / "log"));
    ASSERT_EQ(chown((dir_ / "log").c_str(), kUid, kUid), 0);
    std::filesystem::permissions(dir_ / "log", std::filesystem::perms(0700));
    const Substitutions paths = {{"/run/vecseal", dir_ / "run"},
                                 {"/etc/vecseal/policy.json", dir_ / "policy.json"},
                                 {"/var/log/vecseal", dir_ / "log"},
                                 {"vecseal-clients", "nogroup"}};
    const std::string shipped = ReadFile(VECSEAL_SOURCE_DIR "/packaging/etc/vecseald.json");
    ExpectMentions(shipped, paths, "packaging/etc/vecseald.json");
    WriteFile(dir_ / "vecseald.json", Substitute(shipped, paths), std::filesystem::perms(0644));
  }

  static std::string Id() { return std::to_string(kUid); }

  // The daemon's start_failed line when started as kUid with `groups` ("" for none) and `environment`
  // (`env` arguments), after the page's first three lines with `run_owner` owning run/.
  std::string FailedStart(const std::string& run_owner, const std::string& groups,
                          const std::string& environment) {
    const std::string command =
        "install -d -o " + run_owner + " -m 0755 '" + (dir_ / "run") + "' && install -d -o " +
        Id() + " -m 0700 '" + (dir_ / "credentials") + "' && install -o " + Id() +
        " -m 0400 '" + (dir_ / "hsm-pin") + "' '" + (dir_ / "credentials/hsm-pin") + "' && " +
        "timeout 60 setpriv --reuid=" + Id() + " --regid=" + Id() + " " +
        (groups.empty() ? "--clear-groups" : "--groups=" + groups) + " env " + environment +
        " " VECSEALD_PATH " --config '" + (dir_ / "vecseald.json") + "' 2>&1 | grep 'event=start_failed'";
    FILE* pipe = popen(command.c_str(), "r");
    if (pipe == nullptr) return "popen failed";
    std::string output;
    char buffer[4096];
    for (size_t n; (n = fread(buffer, 1, sizeof buffer, pipe)) > 0;) output.append(buffer, n);
    pclose(pipe);
    return output;
  }

  std::string Conf() const { return "SOFTHSM2_CONF='" + (dir_ / "softhsm2.conf") + "'"; }
  std::string Credentials() const {
    return "CREDENTIALS_DIRECTORY='" + (dir_ / "credentials") + "'";
  }

  ScratchDir dir_;
};

TEST_F(WithoutSystemdTest, TheOperationsGuideStartsTheDaemonAsItsUser) {
  const Example example = FindExample("docs/operations.md", "without-systemd");
  RunExample(example,
             {{"-o vecseal -g vecseal", "-o " + Id() + " -g " + Id()},
              {"--reuid=vecseal --regid=vecseal", "--reuid=" + Id() + " --regid=" + Id()},
              {"vecseal-clients", "nogroup"},
              {"/run/vecseal", dir_ / "run"},
              {"/run/credentials/vecseald", dir_ / "credentials"},
              {"/etc/vecseal/hsm-pin", dir_ / "hsm-pin"},
              {"/etc/vecseal/softhsm2.conf", dir_ / "softhsm2.conf"},
              {"/etc/vecseal/vecseald.json", dir_ / "vecseald.json"},
              {"/var/log/vecseald.log", dir_ / "vecseald.log"}},
             dir_.path(), "kill -TERM \"$(pgrep -u " + Id() + " -x vecseald)\"\nwait \"$!\"\n");
  // It ran as that uid, and stopped cleanly (the epilogue's wait returned its status 0).
  EXPECT_NE(ReadFile(dir_ / "vecseald.log").find("event=ready"), std::string::npos);
  struct stat socket {};
  ASSERT_EQ(stat((dir_ / "run/vecseald.sock").c_str(), &socket), -1) << "removed at the stop";
  bool audited = false;
  for (const auto& entry : std::filesystem::directory_iterator(dir_ / "log")) {
    struct stat file {};
    if (stat(entry.path().c_str(), &file) == 0 && file.st_uid == kUid) audited = true;
  }
  EXPECT_TRUE(audited) << "the audit log is written by the daemon's uid";
}

// Each step of the page left out gives the message the page shows, with what to do.
TEST_F(WithoutSystemdTest, EachStepLeftOutIsNamedWithItsFix) {
  const std::string bind = FailedStart("root", "nogroup", Conf() + " " + Credentials());
  EXPECT_NE(bind.find("bind " + (dir_ / "run/vecseald.sock") + ": Permission denied; uid " +
                      Id() + " may not create files in " + (dir_ / "run")),
            std::string::npos)
      << bind;
  EXPECT_NE(bind.find("(docs/operations.md, \\\"Without systemd\\\")"), std::string::npos) << bind;

  const std::string group = FailedStart(Id(), "", Conf() + " " + Credentials());
  EXPECT_NE(group.find("to group nogroup: Operation not permitted; the daemon's user is not a "
                       "member of nogroup: add it"),
            std::string::npos)
      << group;

  const std::string conf = FailedStart(Id(), "nogroup", "-u SOFTHSM2_CONF " + Credentials());
  EXPECT_NE(conf.find("SOFTHSM2_CONF is not set, so SoftHSM2 read its default configuration"),
            std::string::npos)
      << conf;

  const std::string pin = FailedStart(Id(), "nogroup", Conf());
  EXPECT_NE(pin.find("$CREDENTIALS_DIRECTORY is not set; add LoadCredential=hsm-pin:<path> to "
                     "the unit, or without systemd set it"),
            std::string::npos)
      << pin;
}

}  // namespace
}  // namespace vecseal::daemon
