// `vecseal calibrate` as a user runs it: real files in a temporary directory, exact error lines
// and exit codes.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "synthetic.h"
#include "calibrate_command.h"
#include "vecseal/client/formats.h"

namespace vecseal::calibrate {
namespace {

namespace fs = std::filesystem;

class CommandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "vecseal-calibrate-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    const auto data = testing::MakeClustered(300, 16, 4, 0.4, 41);
    client::Matrix sample{data.vectors.rows, data.vectors.cols, data.vectors.values};
    ASSERT_TRUE(client::WriteMatrix(Path("sample.npy"), sample).ok());
    std::ofstream labels(Path("labels.txt"));
    for (uint32_t label : data.labels) labels << "class-" << label << "\n";
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  int Run(std::vector<std::string> args) {
    out_.str("");
    err_.str("");
    return RunCalibrateCommand(args, out_, err_);
  }

  fs::path dir_;
  std::ostringstream out_;
  std::ostringstream err_;
};

TEST_F(CommandTest, WritesTableJsonAndSvg) {
  ASSERT_EQ(Run({"--sample", Path("sample.npy"), "--labels", Path("labels.txt"), "--betas",
                 "2,0.5,1", "--transform=permute", "--out", Path("r")}),
            0)
      << err_.str();
  EXPECT_EQ(err_.str(), "");
  EXPECT_NE(out_.str().find("vecseal calibrate: 300 vectors of dimension 16, permute transform"),
            std::string::npos)
      << out_.str();
  EXPECT_NE(out_.str().find("wrote " + Path("r") + ".json and " + Path("r") + ".svg"),
            std::string::npos);

  std::ifstream json_file(Path("r.json"));
  const nlohmann::json json = nlohmann::json::parse(json_file);
  EXPECT_EQ(json["key"], "ephemeral");
  EXPECT_EQ(json["transform"], "permute");
  EXPECT_EQ(json["data"]["labels"]["classes"], 4);
  ASSERT_EQ(json["results"].size(), 3u);
  EXPECT_EQ(json["results"][0]["beta"], 0.5);  // sorted
  EXPECT_EQ(json["results"][2]["beta"], 2.0);
  EXPECT_EQ(json["results"][0]["leakage"]["known_plaintext_inversion"].size(), 3u);
  EXPECT_TRUE(json["results"][0]["utility"]["knn_accuracy"].contains("ci95"));
  EXPECT_TRUE(json["guidance"]["text"].is_string());

  std::ifstream svg_file(Path("r.svg"));
  std::ostringstream svg_text;
  svg_text << svg_file.rdbuf();
  const std::string svg = svg_text.str();
  EXPECT_TRUE(svg.starts_with("<?xml")) << svg.substr(0, 40);
  EXPECT_TRUE(svg.ends_with("</svg>\n"));
  // Three utility series and four leakage series, each a line through three β.
  size_t polylines = 0;
  for (size_t at = svg.find("<polyline"); at != std::string::npos; at = svg.find("<polyline", at + 1)) {
    ++polylines;
  }
  EXPECT_EQ(polylines, 7u);
  EXPECT_FALSE(fs::exists(Path("r.json.tmp")));
}

TEST_F(CommandTest, HelpGoesToStdoutAndSucceeds) {
  EXPECT_EQ(Run({"--help"}), 0);
  EXPECT_TRUE(out_.str().starts_with("usage: vecseal calibrate --sample S.npy")) << out_.str();
}

struct UsageCase {
  std::string name;
  std::vector<std::string> args;  // "S" stands for the sample path
  int exit_code;
  std::string error;
};

class CommandErrorTest : public CommandTest, public ::testing::WithParamInterface<UsageCase> {};

TEST_P(CommandErrorTest, OneLineErrorAndExitCode) {
  std::vector<std::string> args = GetParam().args;
  for (std::string& arg : args) {
    if (arg == "S") arg = Path("sample.npy");
    if (arg == "L") arg = Path("labels.txt");
    if (arg == "D") arg = Path("no/such/dir/report");
  }
  EXPECT_EQ(Run(args), GetParam().exit_code);
  std::string error = GetParam().error;
  if (const size_t at = error.find("D.json"); at != std::string::npos) {
    error.replace(at, 1, Path("no/such/dir/report"));
  }
  EXPECT_EQ(err_.str(), "vecseal calibrate: " + error + "\n");
  EXPECT_EQ(out_.str(), "");
}

INSTANTIATE_TEST_SUITE_P(
    Cases, CommandErrorTest,
    ::testing::Values(
        UsageCase{"no_sample", {}, 2, "--sample is required (see --help)"},
        UsageCase{"missing_value", {"--sample"}, 2, "option --sample needs a value (see --help)"},
        UsageCase{"unknown_option", {"--sample", "S", "--beta", "1"}, 2,
                  "unknown option '--beta' (see --help)"},
        UsageCase{"twice", {"--sample=S", "--sample", "S"}, 2,
                  "option --sample is given twice (see --help)"},
        UsageCase{"positional", {"--sample", "S", "extra"}, 2,
                  "unexpected argument 'extra' (see --help)"},
        UsageCase{"empty_value", {"--sample="}, 2,
                  "option --sample needs a non-empty value (see --help)"},
        UsageCase{"empty_beta", {"--sample", "S", "--betas", "1,,2"}, 2,
                  "--betas: '' is not a positive number"},
        UsageCase{"negative_beta", {"--sample", "S", "--betas", "1,-1"}, 2,
                  "--betas: '-1' is not a positive number"},
        UsageCase{"infinite_beta", {"--sample", "S", "--betas", "inf"}, 2,
                  "--betas: 'inf' is not a positive number"},
        UsageCase{"text_beta", {"--sample", "S", "--betas", "1.5x"}, 2,
                  "--betas: '1.5x' is not a positive number"},
        UsageCase{"repeated_beta", {"--sample", "S", "--betas", "1,2,1"}, 2,
                  "--betas: 1 is listed twice"},
        UsageCase{"transform", {"--sample", "S", "--transform", "shuffle"}, 2,
                  "--transform: 'shuffle' is not rotate or permute"},
        UsageCase{"seed", {"--sample", "S", "--seed", "-3"}, 2,
                  "--seed: '-3' is not a non-negative integer"},
        UsageCase{"unwritable_out", {"--sample", "S", "--betas", "1", "--out", "D"}, 1,
                  "cannot write D.json: No such file or directory"}),
    [](const auto& test_info) { return test_info.param.name; });

TEST_F(CommandTest, UnreadableSampleNamesTheFile) {
  EXPECT_EQ(Run({"--sample", Path("missing.npy")}), 1);
  const std::string path = Path("missing.npy");
  const size_t named = err_.str().find(path);
  ASSERT_NE(named, std::string::npos) << err_.str();
  EXPECT_EQ(err_.str().find(path, named + 1), std::string::npos) << "named twice: " << err_.str();
  EXPECT_EQ(std::ranges::count(err_.str(), '\n'), 1);
}

TEST_F(CommandTest, LabelProblemsNameTheFileAndLine) {
  {
    std::ofstream labels(Path("short.txt"));
    labels << "a\nb\n";
  }
  EXPECT_EQ(Run({"--sample", Path("sample.npy"), "--labels", Path("short.txt")}), 1);
  EXPECT_EQ(err_.str(), "vecseal calibrate: there are 2 labels for 300 sample vectors\n");
  {
    std::ofstream labels(Path("gap.txt"));
    labels << "a\nb\n\nc\n";
  }
  EXPECT_EQ(Run({"--sample", Path("sample.npy"), "--labels", Path("gap.txt")}), 1);
  EXPECT_EQ(err_.str(), "vecseal calibrate: " + Path("gap.txt") + ": line 3 is empty\n");
}

// An .npy file as NumPy writes it, of one column of `values` stored as `descr`.
std::string NpyColumn(const std::string& descr, const std::string& shape,
                      const std::vector<double>& values) {
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  dict.append(63 - (10 + dict.size()) % 64, ' ');
  std::string out = std::string("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>((dict.size() + 1) & 0xff);
  out += static_cast<char>((dict.size() + 1) >> 8);
  out += dict + "\n";
  const size_t size = static_cast<size_t>(descr[2] - '0');
  for (double value : values) {
    uint64_t bits = 0;
    if (descr[1] != 'f') {
      bits = static_cast<uint64_t>(static_cast<int64_t>(value));
    } else if (size == 4) {
      bits = std::bit_cast<uint32_t>(static_cast<float>(value));
    } else {
      bits = std::bit_cast<uint64_t>(value);
    }
    for (size_t b = 0; b < size; ++b) {
      const size_t shift = 8 * (descr[0] == '>' ? size - 1 - b : b);
      out += static_cast<char>((bits >> shift) & 0xff);
    }
  }
  return out;
}

struct LabelCase {
  std::string name;
  std::string descr;
  bool column;  // (n, 1) rather than (n,)
};

class LabelFormatTest : public CommandTest, public ::testing::WithParamInterface<LabelCase> {};

// What scikit-learn and NumPy hand a user: any integer type, booleans or floats, 1-D or (n, 1).
TEST_P(LabelFormatTest, ClassesComeFromAnyNumericColumn) {
  const LabelCase& c = GetParam();
  const auto data = testing::MakeClustered(300, 16, 4, 0.4, 41);
  std::vector<double> labels;
  // Booleans hold two classes; the others four, spread out and (where signed) negative too.
  for (uint32_t label : data.labels) {
    const double spread = label * 50.0;
    labels.push_back(c.descr[1] == 'b' ? label % 2 : c.descr[1] == 'u' ? spread : spread - 75);
  }
  const std::string shape = c.column ? "(300, 1)" : "(300,)";
  std::ofstream(Path("labels.npy"), std::ios::binary) << NpyColumn(c.descr, shape, labels);
  ASSERT_EQ(Run({"--sample", Path("sample.npy"), "--labels", Path("labels.npy"), "--betas", "1",
                 "--out", Path("r")}),
            0)
      << err_.str();
  std::ifstream json_file(Path("r.json"));
  EXPECT_EQ(nlohmann::json::parse(json_file)["data"]["labels"]["classes"],
            c.descr[1] == 'b' ? 2 : 4);
}

INSTANTIATE_TEST_SUITE_P(
    Dtypes, LabelFormatTest,
    ::testing::Values(LabelCase{"int64", "<i8", false}, LabelCase{"int32", "<i4", false},
                      LabelCase{"int16_column", "<i2", true}, LabelCase{"uint8", "|u1", false},
                      LabelCase{"uint16", "<u2", false}, LabelCase{"uint32_column", "<u4", true},
                      LabelCase{"uint64", "<u8", false}, LabelCase{"int64_big_endian", ">i8", true},
                      LabelCase{"float64", "<f8", false}, LabelCase{"float32_column", "<f4", true},
                      LabelCase{"bool", "|b1", false}),
    [](const auto& test_info) { return test_info.param.name; });

TEST_F(CommandTest, LabelValuesThatNameNoClassAreRefusedByFileAndRow) {
  const std::vector<std::pair<double, std::string>> cases = {
      {2.5, "label 2.5 is not a whole number"},
      {std::nan(""), "label NaN is not a whole number"},
      {1e20, "label 1e+20 is outside the int64 range"}};
  for (const auto& [value, problem] : cases) {
    SCOPED_TRACE(problem);
    std::vector<double> labels(300, 1.0);
    labels[7] = value;
    std::ofstream(Path("labels.npy"), std::ios::binary) << NpyColumn("<f8", "(300,)", labels);
    EXPECT_EQ(Run({"--sample", Path("sample.npy"), "--labels", Path("labels.npy")}), 1);
    EXPECT_EQ(err_.str(), "vecseal calibrate: " + Path("labels.npy") + ": row 7: " + problem +
                              " (labels name classes: map them to whole numbers first)\n");
  }
  std::vector<double> labels(300, 1.0);
  std::ofstream(Path("huge.npy"), std::ios::binary) << NpyColumn("<u8", "(300,)", labels);
  {  // 2^64 - 1 in row 0
    std::fstream patch(Path("huge.npy"), std::ios::binary | std::ios::in | std::ios::out);
    patch.seekp(128);
    patch << std::string(8, '\xff');
  }
  EXPECT_EQ(Run({"--sample", Path("sample.npy"), "--labels", Path("huge.npy")}), 1);
  EXPECT_EQ(err_.str(), "vecseal calibrate: " + Path("huge.npy") +
                            ": row 0: label 18446744073709551615 is outside the int64 range "
                            "(labels name classes: map them to whole numbers first)\n");

  client::Matrix wide{300, 2, std::vector<float>(600, 1.0f)};
  ASSERT_TRUE(client::WriteMatrix(Path("wide.npy"), wide).ok());
  EXPECT_EQ(Run({"--sample", Path("sample.npy"), "--labels", Path("wide.npy")}), 1);
  EXPECT_EQ(err_.str(), "vecseal calibrate: " + Path("wide.npy") +
                            ": shape (300, 2) is not one column (rows,) or (rows, 1)\n");
  std::ofstream(Path("complex.npy"), std::ios::binary) << NpyColumn("<c8", "(300,)", {});
  EXPECT_EQ(Run({"--sample", Path("sample.npy"), "--labels", Path("complex.npy")}), 1);
  EXPECT_EQ(err_.str(), "vecseal calibrate: " + Path("complex.npy") +
                            ": dtype '<c8' is not supported (want integers, booleans, float32 or "
                            "float64)\n");
}

TEST_F(CommandTest, LabelsInAnotherVectorFormatAreOneColumnOfWholeNumbers) {
  const auto data = testing::MakeClustered(300, 16, 4, 0.4, 41);
  client::Matrix labels{300, 1, {}};
  for (uint32_t label : data.labels) labels.data.push_back(static_cast<float>(label) * 10);
  ASSERT_TRUE(client::WriteMatrix(Path("labels.fvecs"), labels).ok());
  ASSERT_EQ(Run({"--sample", Path("sample.npy"), "--labels", Path("labels.fvecs"), "--betas", "1",
                 "--out", Path("r")}),
            0)
      << err_.str();
  labels.data[7] = 2.5f;
  ASSERT_TRUE(client::WriteMatrix(Path("labels.fvecs"), labels).ok());
  EXPECT_EQ(Run({"--sample", Path("sample.npy"), "--labels", Path("labels.fvecs")}), 1);
  EXPECT_EQ(err_.str(), "vecseal calibrate: " + Path("labels.fvecs") +
                            ": row 7: label 2.5 is not a whole number (labels name classes: map "
                            "them to whole numbers first)\n");
}

TEST_F(CommandTest, NonFiniteVectorsAreNamedByFileAndRow) {
  const auto data = testing::MakeClustered(300, 16, 4, 0.4, 41);
  client::Matrix sample{data.vectors.rows, data.vectors.cols, data.vectors.values};
  sample.data[137 * 16 + 5] = std::nanf("");
  ASSERT_TRUE(client::WriteMatrix(Path("nan.npy"), sample).ok());
  EXPECT_EQ(Run({"--sample", Path("nan.npy")}), 1);
  EXPECT_EQ(err_.str(), "vecseal calibrate: " + Path("nan.npy") +
                            ": row 137: the vector has a non-finite value (NaN) at component 5; "
                            "repair or drop that row\n");
  EXPECT_EQ(Run({"--sample", Path("sample.npy"), "--queries", Path("nan.npy")}), 1);
  EXPECT_NE(err_.str().find(Path("nan.npy") + ": row 137: "), std::string::npos) << err_.str();
}

}  // namespace
}  // namespace vecseal::calibrate
