// Runs every example in docs/policy.md: `json` blocks must parse, `decisions` blocks must decide
// as written, `json invalid` blocks must fail with the message in the `text` block after them,
// and the `console` transcript of --check-policy must match for the lines that do not depend on
// the machine.
#include <unistd.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "check_policy.h"
#include "test_util.h"
#include "vecseal/policy/policy.h"

namespace vecseal::policy {
namespace {

struct Block {
  std::string info;
  std::string text;
  int line;
};

std::vector<Block> FencedBlocks(const std::string& markdown) {
  std::vector<Block> blocks;
  std::istringstream in(markdown);
  std::string line;
  int number = 0;
  Block* open = nullptr;
  while (std::getline(in, line)) {
    ++number;
    if (line.rfind("```", 0) == 0) {
      if (open == nullptr) {
        blocks.push_back(Block{line.substr(3), "", number});
        open = &blocks.back();
      } else {
        open = nullptr;
      }
    } else if (open != nullptr) {
      open->text += line + "\n";
    }
  }
  return blocks;
}

std::vector<std::string> Split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::istringstream in(text);
  std::string part;
  while (std::getline(in, part, sep)) {
    if (!part.empty()) parts.push_back(part);
  }
  return parts;
}

// "user=etl groups=a,b unit=x.service" -> a CallerIdentity.
CallerIdentity ParseCaller(const std::string& text) {
  CallerIdentity caller;
  for (const std::string& field : Split(text, ' ')) {
    size_t eq = field.find('=');
    EXPECT_NE(eq, std::string::npos) << field;
    std::string name = field.substr(0, eq);
    std::string value = field.substr(eq + 1);
    if (name == "user") {
      caller.user = value;
    } else if (name == "uid") {
      caller.uid = static_cast<uid_t>(std::stoul(value));
    } else if (name == "group") {
      caller.group = value;
    } else if (name == "gid") {
      caller.gid = static_cast<gid_t>(std::stoul(value));
    } else if (name == "groups") {
      for (const std::string& group : Split(value, ',')) {
        caller.supplementary_gids.push_back(static_cast<gid_t>(10000 + caller.group_names.size()));
        caller.group_names.push_back(group);
      }
    } else if (name == "unit") {
      caller.unit = value;
    } else if (name == "exe") {
      caller.exe = value;
    } else if (name == "script") {
      caller.script = value;
    } else {
      ADD_FAILURE() << "unknown caller field " << name;
    }
  }
  return caller;
}

// "CALLER : OP [KEY] -> RULE|denied". keys.list decides as GET /v1/keys: without a KEY whether
// the caller may list, with one whether KEY shows in its listing (and through which rule).
void CheckDecisions(const Policy& policy, const Block& block) {
  for (const std::string& line : Split(block.text, '\n')) {
    SCOPED_TRACE("docs/policy.md:" + std::to_string(block.line) + ": " + line);
    size_t colon = line.find(" : ");
    size_t arrow = line.find(" -> ");
    ASSERT_NE(colon, std::string::npos);
    ASSERT_NE(arrow, std::string::npos);
    CallerIdentity caller = ParseCaller(line.substr(0, colon));
    std::vector<std::string> request = Split(line.substr(colon + 3, arrow - colon - 3), ' ');
    ASSERT_FALSE(request.empty());
    Operation op;
    ASSERT_TRUE(ParseOperation(request[0], &op));
    std::string key = request.size() > 1 ? request[1] : "";
    std::string expected = line.substr(arrow + 4);
    Decision decision = policy.Decide(caller, op, key);
    if (op == Operation::kKeysList) {
      decision = policy.DecideKeysList(caller);
      if (decision.granted && !key.empty()) decision = policy.DecideListed(caller, key);
    }
    if (expected == "denied") {
      EXPECT_FALSE(decision.granted) << "granted by " << decision.rule_id;
    } else {
      EXPECT_TRUE(decision.granted);
      EXPECT_EQ(decision.rule_id, expected);
    }
  }
}

void CheckConsole(const std::string& policy_json, const Block& block) {
  std::vector<std::string> lines = Split(block.text, '\n');
  ASSERT_FALSE(lines.empty());
  std::vector<std::string> words = Split(lines[0], ' ');
  ASSERT_GE(words.size(), 4u);
  ASSERT_EQ(words[0], "$");
  ASSERT_EQ(words[1], "vecseald");
  ASSERT_EQ(words[2], "--check-policy");
  testing_util::TempDir dir;
  std::string documented_path = words[3];
  std::string path = dir / "policy.json";
  testing_util::WriteFile(path, policy_json);
  if (!CheckTrustedFile(path).ok()) GTEST_SKIP() << "the temp dir is itself untrusted";
  std::vector<std::string> args(words.begin() + 3, words.end());
  args[0] = path;
  std::ostringstream out;
  std::ostringstream err;
  int status = daemon::RunCheckPolicy(args, out, err);
  bool asks_decision = std::find(args.begin(), args.end(), "--op") != args.end();
  std::string transcript = out.str();
  for (size_t i = 1; i < lines.size(); ++i) {
    std::string expected = lines[i];
    // The caller's details depend on the machine; the verdicts do not.
    if (expected.rfind("policy ", 0) != 0 && expected.rfind("rule ", 0) != 0 &&
        expected.rfind("decision: ", 0) != 0 && expected.rfind("budget: ", 0) != 0) {
      continue;
    }
    size_t at = expected.find(documented_path);
    if (at != std::string::npos) expected.replace(at, documented_path.size(), path);
    EXPECT_NE(transcript.find(expected + "\n"), std::string::npos)
        << "missing line: " << expected << "\nactual output:\n" << transcript << err.str();
    if (asks_decision && expected.rfind("decision: ", 0) == 0) {
      EXPECT_EQ(status, expected.find(" granted by ") != std::string::npos ? 0 : 3);
    }
  }
}

TEST(DocsTest, EveryExampleInPolicyMdRuns) {
  std::string markdown = testing_util::ReadFile(VECSEAL_SOURCE_DIR "/docs/policy.md");
  ASSERT_FALSE(markdown.empty());
  std::vector<Block> blocks = FencedBlocks(markdown);
  PolicyPtr current;
  std::string current_json;
  std::string pending_error;  // set by a `json invalid` block, checked by the next `text` block
  int counts[4] = {0, 0, 0, 0};
  for (const Block& block : blocks) {
    SCOPED_TRACE("docs/policy.md:" + std::to_string(block.line));
    if (block.info == "json") {
      Result<PolicyPtr> policy = Policy::Parse(block.text);
      ASSERT_TRUE(policy.ok()) << policy.status().ToString();
      current = std::move(policy).value();
      current_json = block.text;
      ++counts[0];
    } else if (block.info == "json invalid") {
      Result<PolicyPtr> policy = Policy::Parse(block.text);
      ASSERT_FALSE(policy.ok());
      pending_error = policy.status().message();
    } else if (block.info == "text" && !pending_error.empty()) {
      EXPECT_EQ(block.text, pending_error + "\n");
      pending_error.clear();
      ++counts[1];
    } else if (block.info == "decisions") {
      ASSERT_NE(current, nullptr);
      CheckDecisions(*current, block);
      ++counts[2];
    } else if (block.info == "console") {
      CheckConsole(current_json, block);
      ++counts[3];
    }
  }
  EXPECT_TRUE(pending_error.empty()) << "a `json invalid` block has no `text` block after it";
  // Guards against the doc's blocks being renamed so that nothing is checked any more.
  EXPECT_GE(counts[0], 3);
  EXPECT_GE(counts[1], 2);
  EXPECT_GE(counts[2], 2);
  EXPECT_GE(counts[3], 1);
}

TEST(DocsTest, DevPolicyInDocsIsWhatAllowUserWrites) {
  std::string markdown = testing_util::ReadFile(VECSEAL_SOURCE_DIR "/docs/policy.md");
  std::vector<Block> blocks = FencedBlocks(markdown);
  const Block* dev = nullptr;
  for (const Block& block : blocks) {
    if (block.info == "json" && block.text.find("dev-user-1000") != std::string::npos) dev = &block;
  }
  ASSERT_NE(dev, nullptr);
  EXPECT_EQ(nlohmann::json::parse(dev->text), nlohmann::json::parse(Policy::AllowUserJson(1000)));
}

}  // namespace
}  // namespace vecseal::policy
