// Runs every ```sh block that follows a `<!-- example: curl -->` line in docs/api.md and
// README.md, in order, against one live dev daemon. Each block must exit 0, and each
// `# => field: value` line after a command must match that field of the command's JSON output.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "support/dev_daemon.h"

namespace vecseal::daemon::testing {
namespace {

using nlohmann::json;

struct Expectation {
  std::string path;   // dotted; numeric parts index arrays
  std::string value;  // JSON text, or a bare string
};

// Commands up to a run of `# =>` lines, and those lines.
struct Segment {
  std::string commands;
  std::vector<Expectation> expectations;
};

struct Example {
  std::string where;  // file:line
  std::vector<Segment> segments;
};

std::string Trim(const std::string& text) {
  const size_t start = text.find_first_not_of(" \t\r\n");
  if (start == std::string::npos) return "";
  return text.substr(start, text.find_last_not_of(" \t\r\n") - start + 1);
}

std::vector<Example> ExtractExamples(const std::string& path, const std::string& label) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::vector<Example> examples;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (Trim(lines[i]) != "<!-- example: curl -->") continue;
    size_t at = i + 1;
    while (at < lines.size() && Trim(lines[at]).empty()) ++at;
    if (at >= lines.size() || Trim(lines[at]) != "```sh") {
      ADD_FAILURE() << label << ":" << i + 1 << ": the marker is not followed by a ```sh block";
      continue;
    }
    Example example{.where = label + ":" + std::to_string(at + 1), .segments = {}};
    Segment segment;
    for (++at; at < lines.size() && Trim(lines[at]) != "```"; ++at) {
      const std::string& line = lines[at];
      constexpr std::string_view kArrow = "# => ";
      if (line.rfind(kArrow, 0) == 0) {
        const std::string rest = line.substr(kArrow.size());
        const size_t colon = rest.find(": ");
        if (colon == std::string::npos) {
          ADD_FAILURE() << example.where << ": malformed expectation '" << line << "'";
          continue;
        }
        segment.expectations.push_back({rest.substr(0, colon), rest.substr(colon + 2)});
        continue;
      }
      if (!segment.expectations.empty()) {
        example.segments.push_back(std::move(segment));
        segment = Segment{};
      }
      segment.commands += line + "\n";
    }
    example.segments.push_back(std::move(segment));
    examples.push_back(std::move(example));
    i = at;
  }
  return examples;
}

const json* Field(const json& document, const std::string& path) {
  const json* node = &document;
  std::istringstream parts(path);
  for (std::string part; std::getline(parts, part, '.');) {
    if (node->is_array()) {
      const size_t index = std::stoul(part);
      if (index >= node->size()) return nullptr;
      node = &(*node)[index];
    } else if (node->is_object() && node->contains(part)) {
      node = &(*node)[part];
    } else {
      return nullptr;
    }
  }
  return node;
}

constexpr std::string_view kMarker = "@@vecseal-doc-segment@@";

TEST(DocExamplesTest, EveryCurlExampleRunsAndPrintsWhatItClaims) {
  std::vector<Example> examples = ExtractExamples(VECSEAL_SOURCE_DIR "/docs/api.md", "docs/api.md");
  ASSERT_GE(examples.size(), 8u) << "docs/api.md lost its examples";
  for (auto& example : ExtractExamples(VECSEAL_SOURCE_DIR "/README.md", "README.md")) {
    examples.push_back(std::move(example));
  }

  std::string error;
  auto daemon = DevDaemon::Start(DevDaemonOptions{}, &error);
  ASSERT_NE(daemon, nullptr) << error;
  // Examples share a working directory, so that one may use a file an earlier one wrote.
  const std::string work_dir = daemon->root() + "/work";
  std::filesystem::create_directory(work_dir);

  for (const auto& example : examples) {
    SCOPED_TRACE(example.where);
    std::string script = "set -eo pipefail\n";
    for (const auto& segment : example.segments) {
      script += segment.commands;
      script += "echo '" + std::string(kMarker) + "'\n";
    }
    const std::string script_path = work_dir + "/example.sh";
    std::ofstream(script_path, std::ios::trunc) << script;
    const std::string command = "cd '" + work_dir + "' && VECSEAL_SOCKET='" +
                                daemon->socket_path() + "' bash example.sh";
    FILE* pipe = popen(command.c_str(), "r");
    ASSERT_NE(pipe, nullptr);
    std::string output;
    char buffer[4096];
    for (size_t n; (n = fread(buffer, 1, sizeof(buffer), pipe)) > 0;) output.append(buffer, n);
    const int status = pclose(pipe);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "the example failed; script:\n" << script << "output:\n" << output;

    size_t start = 0;
    for (const auto& segment : example.segments) {
      const size_t end = output.find(kMarker, start);
      ASSERT_NE(end, std::string::npos) << output;
      const std::string printed = output.substr(start, end - start);
      start = end + kMarker.size();
      if (segment.expectations.empty()) continue;
      const json document = json::parse(printed, nullptr, false);
      ASSERT_FALSE(document.is_discarded()) << "not JSON: " << printed;
      for (const auto& expectation : segment.expectations) {
        json expected = json::parse(expectation.value, nullptr, false);
        if (expected.is_discarded()) expected = expectation.value;
        const json* actual = Field(document, expectation.path);
        ASSERT_NE(actual, nullptr) << "no field '" << expectation.path << "' in " << printed;
        EXPECT_EQ(*actual, expected) << expectation.path << " in " << printed;
      }
    }
  }
}

}  // namespace
}  // namespace vecseal::daemon::testing
