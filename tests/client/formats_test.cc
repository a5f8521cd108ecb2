#include "vecseal/client/formats.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "npy.h"

namespace vecseal::client {
namespace {

namespace fs = std::filesystem;

class FormatsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/vecseal-formats-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  void WriteBytes(const std::string& name, const std::string& bytes) const {
    std::ofstream out(Path(name), std::ios::binary);
    out << bytes;
  }
  std::string ReadBytes(const std::string& name) const {
    std::string out;
    std::FILE* file = std::fopen(Path(name).c_str(), "rb");
    if (file == nullptr) return out;
    char block[4096];
    size_t n;
    while ((n = std::fread(block, 1, sizeof(block), file)) > 0) out.append(block, n);
    std::fclose(file);
    return out;
  }
  std::vector<std::string> Listing() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) names.push_back(entry.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

  fs::path dir_;
};

std::vector<float> Ramp(size_t n, float scale = 0.25f) {
  std::vector<float> values(n);
  for (size_t i = 0; i < n; ++i) values[i] = scale * static_cast<float>(i) - 3.0f;
  return values;
}

// A v1.0 .npy preamble plus `dict`, padded the way NumPy pads.
std::string NpyPrefix(const std::string& dict) {
  std::string header = dict;
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  return out + header;
}

std::string FloatBytes(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4);
}

TEST_F(FormatsTest, FormatFromExtension) {
  EXPECT_EQ(*FormatFromPath("a/b.npy"), VectorFormat::kNpy);
  EXPECT_EQ(*FormatFromPath("x.fvecs"), VectorFormat::kFvecs);
  EXPECT_EQ(*FormatFromPath("x.jsonl"), VectorFormat::kJsonl);
  EXPECT_EQ(*FormatFromPath("x.ndjson"), VectorFormat::kJsonl);
  EXPECT_EQ(*FormatFromPath("x.f32"), VectorFormat::kRaw);
  Result<VectorFormat> unknown = FormatFromPath("x.csv");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().reason(), "unknown_format");
  EXPECT_EQ(unknown.status().message(),
            "x.csv: unknown file type (use .npy, .fvecs, .jsonl or .f32, or name the format)");
}

// Every writable format reads back bit for bit, in chunks smaller than the file.
class RoundTripTest : public FormatsTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(RoundTripTest, WritesAndStreamsBack) {
  const std::string path = Path(std::string("v.") + GetParam());
  constexpr size_t kDim = 5, kRows = 23;
  const std::vector<float> data = Ramp(kDim * kRows, 1.0f / 3.0f);
  FormatOptions options;
  options.dimension = kDim;
  {
    Result<std::unique_ptr<VectorWriter>> writer = CreateVectorWriter(path, kDim, options);
    ASSERT_TRUE(writer.ok()) << writer.status().ToString();
    ASSERT_TRUE((*writer)->Write(std::span(data).first(7 * kDim)).ok());
    ASSERT_TRUE((*writer)->Write(std::span(data).subspan(7 * kDim)).ok());
    ASSERT_TRUE((*writer)->Commit().ok());
  }
  Result<std::unique_ptr<VectorReader>> reader = OpenVectorReader(path, options);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_EQ((*reader)->dimension(), kDim);
  if ((*reader)->format() != VectorFormat::kJsonl) {
    EXPECT_EQ((*reader)->rows(), kRows);
  }
  std::vector<float> all, chunk;
  size_t chunks = 0;
  while (true) {
    Result<size_t> n = (*reader)->Next(4, chunk);
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    if (*n == 0) break;
    EXPECT_LE(*n, 4u);
    EXPECT_EQ(chunk.size(), *n * kDim);
    all.insert(all.end(), chunk.begin(), chunk.end());
    ++chunks;
  }
  EXPECT_EQ(chunks, 6u);
  EXPECT_EQ(all, data);
  EXPECT_EQ((*reader)->bytes_read(), (*reader)->file_size());
  EXPECT_EQ(Listing(), std::vector<std::string>{fs::path(path).filename()});
}

INSTANTIATE_TEST_SUITE_P(AllFormats, RoundTripTest,
                         ::testing::Values("npy", "fvecs", "jsonl", "f32"));

TEST_F(FormatsTest, UncommittedWriterLeavesNothing) {
  WriteBytes("out.npy", "previous contents");
  {
    Result<std::unique_ptr<VectorWriter>> writer = CreateVectorWriter(Path("out.npy"), 3);
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE((*writer)->Write(Ramp(300)).ok());
    // While writing, only a hidden temporary file exists beside the untouched destination.
    EXPECT_EQ(Listing().size(), 2u);
    EXPECT_EQ(ReadBytes("out.npy"), "previous contents");
  }
  EXPECT_EQ(Listing(), std::vector<std::string>{"out.npy"});
  EXPECT_EQ(ReadBytes("out.npy"), "previous contents");
}

TEST_F(FormatsTest, WriterRejectsPartialRows) {
  Result<std::unique_ptr<VectorWriter>> writer = CreateVectorWriter(Path("o.f32"), 4);
  ASSERT_TRUE(writer.ok());
  const Status status = (*writer)->Write(Ramp(6));
  EXPECT_EQ(status.reason(), "invalid_length");
  EXPECT_EQ(status.message(), Path("o.f32") + ": 6 values are not whole rows of dimension 4");
}

TEST_F(FormatsTest, NpyFloat64AndBigEndianAreConverted) {
  const std::vector<double> wide = {1.5, -2.25, 1e-3, 3.0e38, 1e300, 0.1};
  std::string little(reinterpret_cast<const char*>(wide.data()), wide.size() * 8);
  WriteBytes("f8.npy",
             NpyPrefix("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }") + little);
  Result<Matrix> m = ReadMatrix(Path("f8.npy"));
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->rows, 2u);
  EXPECT_EQ(m->dimension, 3u);
  EXPECT_EQ(m->data[0], 1.5f);
  EXPECT_EQ(m->data[2], static_cast<float>(1e-3));
  EXPECT_EQ(m->data[3], 3.0e38f);
  EXPECT_TRUE(std::isinf(m->data[4]));  // out of float32 range: the daemon will name the row
  EXPECT_EQ(m->data[5], 0.1f);

  const std::vector<float> narrow = {1.0f, -0.5f, 2.0f, 8.0f};
  std::string big;
  for (float f : narrow) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    for (int b = 3; b >= 0; --b) big += static_cast<char>(bits >> (8 * b));
  }
  WriteBytes("be.npy",
             NpyPrefix("{\"descr\": \">f4\", \"shape\": (2, 2), \"fortran_order\": False}") + big);
  Result<Matrix> be = ReadMatrix(Path("be.npy"));
  ASSERT_TRUE(be.ok()) << be.status().ToString();
  EXPECT_EQ(be->data, narrow);
}

TEST_F(FormatsTest, NpyEmptyArray) {
  WriteBytes("e.npy", NpyPrefix("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 8), }"));
  Result<Matrix> m = ReadMatrix(Path("e.npy"));
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->rows, 0u);
  EXPECT_EQ(m->dimension, 8u);
}

struct BadNpy {
  const char* name;
  std::string bytes;
  const char* reason;
  const char* message;  // after "<path>: "
};

std::string LongHeader() {
  std::string out("\x93NUMPY\x02\x00", 8);
  out += std::string("\x01\x00\x01\x00", 4);  // 65537
  return out + std::string(65537, ' ');
}

TEST_F(FormatsTest, MalformedNpyHeadersGiveExactErrors) {
  const std::string ok_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }";
  const std::string data = FloatBytes(Ramp(4));
  const std::vector<BadNpy> cases = {
      {"short", "\x93NUM", "invalid_npy", "not an .npy file (too short)"},
      {"magic", "PK\x03\x04zipfile" + data, "invalid_npy", "not an .npy file (bad magic)"},
      {"version", std::string("\x93NUMPY\x04\x00\x00\x00", 10), "invalid_npy",
       "unsupported .npy format version 4.0"},
      {"huge_header", LongHeader(), "invalid_npy",
       "header length 65537 exceeds the 65536-byte limit"},
      {"truncated_header", NpyPrefix(ok_dict).substr(0, 40), "invalid_npy",
       "truncated .npy header"},
      {"not_dict", NpyPrefix("[1, 2]") + data, "invalid_npy", "header is not a Python dict literal"},
      {"dtype", NpyPrefix("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2), }") + data,
       "unsupported_npy_dtype",
       "dtype '<i4' is not supported (want float32 '<f4' or float64 '<f8')"},
      {"fortran", NpyPrefix("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }") + data,
       "invalid_npy", "Fortran-order arrays are not supported (save with np.ascontiguousarray)"},
      {"one_d", NpyPrefix("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }") + data,
       "invalid_npy", "shape (4,) is not 2-D (rows, dimension)"},
      {"three_d", NpyPrefix("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 2), }") + data,
       "invalid_npy", "shape (1, 2, 2) is not 2-D (rows, dimension)"},
      {"negative", NpyPrefix("{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 2), }") + data,
       "invalid_npy", "expected a non-negative integer in 'shape'"},
      {"overflow",
       NpyPrefix("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999, 2), }"),
       "invalid_npy", "shape value is too large"},
      {"product_overflow",
       NpyPrefix("{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904, 4), }"),
       "invalid_npy", "shape is too large"},
      {"missing_shape", NpyPrefix("{'descr': '<f4', 'fortran_order': False}") + data,
       "invalid_npy", "header lacks 'shape'"},
      {"duplicate", NpyPrefix("{'descr': '<f4', 'descr': '<f4', 'shape': (2, 2)}") + data,
       "invalid_npy", "duplicate key 'descr'"},
      {"extra_key",
       NpyPrefix("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), 'x': 1}") + data,
       "invalid_npy", "unexpected key 'x'"},
      {"unterminated", NpyPrefix("{'descr: <f4") + data, "invalid_npy",
       "unterminated string in header"},
      {"trailing", NpyPrefix(ok_dict + " junk") + data, "invalid_npy",
       "unexpected text after the header dict"},
      {"truncated_data", NpyPrefix(ok_dict) + data.substr(0, 12), "invalid_npy",
       "data is 12 bytes but shape (2, 2) needs 16"},
      {"extra_data", NpyPrefix(ok_dict) + data + "xxxx", "invalid_npy",
       "data is 20 bytes but shape (2, 2) needs 16"},
      {"zero_dim", NpyPrefix("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 0), }"),
       "invalid_dimension", "shape has dimension 0"},
      {"too_wide",
       NpyPrefix("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 2000000), }"),
       "invalid_dimension", "dimension 2000000 exceeds the limit of 1048576"},
  };
  for (const BadNpy& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string name = std::string(c.name) + ".npy";
    WriteBytes(name, c.bytes);
    Result<std::unique_ptr<VectorReader>> reader = OpenVectorReader(Path(name));
    ASSERT_FALSE(reader.ok());
    EXPECT_EQ(reader.status().code(), Code::kInvalidArgument);
    EXPECT_EQ(reader.status().reason(), c.reason);
    EXPECT_EQ(reader.status().message(), Path(name) + ": " + c.message);
  }
}

TEST_F(FormatsTest, NpyHeaderParserSurvivesEveryTruncation) {
  // Every prefix of a valid header must be rejected cleanly (the fuzz target's cheapest cousin).
  const std::string full =
      NpyPrefix("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }");
  for (size_t n = 0; n < full.size(); ++n) {
    EXPECT_FALSE(internal::ParseNpyHeader(full.substr(0, n)).ok()) << n;
  }
  Result<internal::NpyHeader> header = internal::ParseNpyHeader(full);
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->data_offset, full.size());
}

TEST_F(FormatsTest, NpyHeaderParserSurvivesMutations) {
  // Deterministic byte flips of a valid header: every outcome must be a clean Result, and an
  // accepted header must describe a shape within the limits (run under ASan/UBSan in CI).
  const std::string full =
      NpyPrefix("{'descr': '<f8', 'fortran_order': False, 'shape': (12, 34), }");
  uint32_t state = 12345;
  const auto next = [&state] {
    state = state * 1664525u + 1013904223u;
    return state >> 8;
  };
  const std::string alphabet = "{}()[]',:\" 0123456789LTFfx<>|\n\\\x00\xff";
  for (int i = 0; i < 20000; ++i) {
    std::string mutated = full;
    const int flips = 1 + static_cast<int>(next() % 4);
    for (int f = 0; f < flips; ++f) {
      const size_t at = next() % mutated.size();
      mutated[at] = next() % 2 ? alphabet[next() % alphabet.size()] : static_cast<char>(next());
    }
    Result<internal::NpyHeader> header = internal::ParseNpyHeader(mutated);
    if (header.ok()) {
      EXPECT_TRUE(header->item_size == 4 || header->item_size == 8);
      EXPECT_LE(header->data_offset, mutated.size());
    } else {
      EXPECT_FALSE(header.status().message().empty());
    }
    Result<internal::NpyHeader> column =
        internal::ParseNpyHeader(mutated, internal::NpyArray::kColumn);
    if (column.ok()) {
      EXPECT_TRUE(std::has_single_bit(column->item_size) && column->item_size <= 8);
      EXPECT_EQ(column->dimension, 1u);
      EXPECT_LE(column->data_offset, mutated.size());
    } else {
      EXPECT_FALSE(column.status().message().empty());
    }
  }
}

TEST_F(FormatsTest, DimensionOptionIsChecked) {
  FormatOptions options;
  options.dimension = 5;
  WriteBytes("m.npy",
             NpyPrefix("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4), }") +
                 FloatBytes(Ramp(4)));
  Result<std::unique_ptr<VectorReader>> reader = OpenVectorReader(Path("m.npy"), options);
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().reason(), "dimension_mismatch");
  EXPECT_EQ(reader.status().message(), Path("m.npy") + ": vectors have dimension 4, expected 5");
}

TEST_F(FormatsTest, RawNeedsDimensionAndWholeRows) {
  WriteBytes("r.f32", FloatBytes(Ramp(10)));
  Result<std::unique_ptr<VectorReader>> no_dim = OpenVectorReader(Path("r.f32"));
  ASSERT_FALSE(no_dim.ok());
  EXPECT_EQ(no_dim.status().reason(), "dimension_required");
  EXPECT_EQ(no_dim.status().message(),
            Path("r.f32") + ": raw float32 files carry no dimension; give it (--dim)");
  FormatOptions options;
  options.dimension = 4;
  Result<std::unique_ptr<VectorReader>> partial = OpenVectorReader(Path("r.f32"), options);
  ASSERT_FALSE(partial.ok());
  EXPECT_EQ(partial.status().reason(), "invalid_length");
  EXPECT_EQ(partial.status().message(),
            Path("r.f32") + ": size 40 bytes is not a multiple of 16 (dimension 4 × 4 bytes)");
}

TEST_F(FormatsTest, FvecsErrors) {
  auto row = [](int32_t d, size_t n) {
    std::string out(reinterpret_cast<const char*>(&d), 4);
    return out + FloatBytes(Ramp(n));
  };
  WriteBytes("bad_row.fvecs", row(3, 3) + row(3, 3) + row(7, 3));
  Result<std::unique_ptr<VectorReader>> reader = OpenVectorReader(Path("bad_row.fvecs"));
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  std::vector<float> chunk;
  Result<size_t> n = (*reader)->Next(100, chunk);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().reason(), "dimension_mismatch");
  EXPECT_EQ(n.status().message(),
            Path("bad_row.fvecs") + ": row 2 has dimension 7, expected 3");

  WriteBytes("neg.fvecs", row(-1, 3));
  EXPECT_EQ(OpenVectorReader(Path("neg.fvecs")).status().message(),
            Path("neg.fvecs") + ": row 0 declares dimension -1");
  WriteBytes("ragged.fvecs", row(3, 3) + row(3, 2));
  EXPECT_EQ(OpenVectorReader(Path("ragged.fvecs")).status().message(),
            Path("ragged.fvecs") +
                ": size 28 bytes is not a multiple of the row size 16 (dimension 3)");
}

TEST_F(FormatsTest, JsonlPassesOtherFieldsThroughByteForByte) {
  WriteBytes("in.jsonl",
             "{\"id\": 1e5, \"embedding\": [1, 2.5 ,-3], \"meta\": {\"embedding\": \"no\"}}\n"
             "\n"
             "{\"emb\\u0065dding\":[0.5,0.25,0.125],\"label\":\"a\\\"b\"}\r\n");
  FormatOptions options;
  Result<std::unique_ptr<VectorReader>> reader = OpenVectorReader(Path("in.jsonl"), options);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_EQ((*reader)->dimension(), 3u);
  EXPECT_FALSE((*reader)->rows().has_value());
  std::vector<float> rows;
  ASSERT_EQ(*(*reader)->Next(10, rows), 2u);
  EXPECT_EQ(rows, (std::vector<float>{1, 2.5f, -3, 0.5f, 0.25f, 0.125f}));
  std::vector<JsonlRecord> records((*reader)->records().begin(), (*reader)->records().end());
  ASSERT_EQ(records.size(), 2u);

  for (float& v : rows) v *= 2;
  Result<std::unique_ptr<VectorWriter>> writer = CreateVectorWriter(Path("out.jsonl"), 3);
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->Write(rows, records).ok());
  ASSERT_TRUE((*writer)->Commit().ok());
  EXPECT_EQ(ReadBytes("out.jsonl"),
            "{\"id\": 1e5, \"embedding\": [2,5,-6], \"meta\": {\"embedding\": \"no\"}}\n"
            "{\"emb\\u0065dding\":[1,0.5,0.25],\"label\":\"a\\\"b\"}\n");
}

TEST_F(FormatsTest, JsonlWritesShortestRoundTripFloats) {
  const std::vector<float> values = {0.1f, 1.0f / 3.0f, -1e-20f, 3.4028235e38f};
  Matrix m{1, 4, values};
  FormatOptions options;
  options.field = "v";
  ASSERT_TRUE(WriteMatrix(Path("f.jsonl"), m, options).ok());
  EXPECT_EQ(ReadBytes("f.jsonl"), "{\"v\":[0.1,0.33333334,-1e-20,3.4028235e+38]}\n");
  Result<Matrix> back = ReadMatrix(Path("f.jsonl"), options);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->data, values);
}

TEST_F(FormatsTest, JsonlErrorsNameTheLine) {
  struct Case {
    const char* text;
    const char* reason;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"{\"embedding\": [1, 2]}\n{\"embedding\": [1, 2, 3]}\n", "dimension_mismatch",
       "line 2 (row 1) has dimension 3, expected 2"},
      {"{\"embedding\": [1, 2]}\n\n{\"x\": 1}\n", "invalid_jsonl", "line 3: no \"embedding\" field"},
      {"{\"embedding\": [1, 2]\n", "invalid_jsonl", "line 1: not valid JSON"},
      {"[1, 2]\n", "invalid_jsonl", "line 1: not a JSON object"},
      {"{\"embedding\": \"1,2\"}\n", "invalid_jsonl",
       "line 1: \"embedding\" is not an array of numbers"},
      {"{\"embedding\": [1, null]}\n", "invalid_jsonl",
       "line 1: \"embedding\" is not an array of numbers"},
      {"{\"embedding\": [1, 1e39]}\n", "invalid_jsonl",
       "line 1: element 1 of \"embedding\" is outside the float32 range"},
      {"{\"embedding\": [1], \"embedding\": [2]}\n", "invalid_jsonl",
       "line 1: field \"embedding\" appears twice"},
      {"{\"embedding\": []}\n", "invalid_dimension", "line 1: \"embedding\" is an empty array"},
  };
  int i = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    const std::string name = "bad" + std::to_string(i++) + ".jsonl";
    WriteBytes(name, c.text);
    Result<Matrix> m = ReadMatrix(Path(name));
    ASSERT_FALSE(m.ok());
    EXPECT_EQ(m.status().reason(), c.reason);
    EXPECT_EQ(m.status().message(), Path(name) + ": " + c.message);
  }
}

TEST_F(FormatsTest, MissingFileIsNotFound) {
  Result<std::unique_ptr<VectorReader>> reader = OpenVectorReader(Path("none.npy"));
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), Code::kNotFound);
  EXPECT_EQ(reader.status().message(),
            "cannot open " + Path("none.npy") + ": No such file or directory");
}

TEST_F(FormatsTest, TokenFileRoundTripAndValidation) {
  std::vector<uint8_t> tokens(41 * 5);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint8_t>(i * 7);
  {
    Result<std::unique_ptr<TokenFileWriter>> writer = TokenFileWriter::Create(Path("t.tok"), 41);
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE((*writer)->Write(std::span(tokens).first(82)).ok());
    ASSERT_TRUE((*writer)->Write(std::span(tokens).subspan(82)).ok());
    EXPECT_EQ((*writer)->Write(std::span(tokens).first(40)).reason(), "invalid_length");
    ASSERT_TRUE((*writer)->Commit().ok());
  }
  const std::string bytes = ReadBytes("t.tok");
  ASSERT_EQ(bytes.size(), 24u + tokens.size());
  EXPECT_EQ(bytes.substr(0, 8), "VSTOKEN1");
  EXPECT_EQ(static_cast<uint8_t>(bytes[8]), 41);
  EXPECT_EQ(static_cast<uint8_t>(bytes[16]), 5);

  Result<std::unique_ptr<TokenFileReader>> reader = TokenFileReader::Open(Path("t.tok"), 41);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_EQ((*reader)->count(), 5u);
  std::vector<uint8_t> all, chunk;
  while (*(*reader)->Next(2, chunk) > 0) all.insert(all.end(), chunk.begin(), chunk.end());
  EXPECT_EQ(all, tokens);

  WriteBytes("cut.tok", bytes.substr(0, bytes.size() - 1));
  EXPECT_EQ(TokenFileReader::Open(Path("cut.tok"), 41).status().message(),
            Path("cut.tok") + ": header says 5 tokens but the file holds 204 bytes of tokens");
  WriteBytes("magic.tok", "VSTOKEN2" + bytes.substr(8));
  EXPECT_EQ(TokenFileReader::Open(Path("magic.tok"), 41).status().message(),
            Path("magic.tok") + ": not a vecseal token file (bad magic)");
  EXPECT_EQ(TokenFileReader::Open(Path("t.tok"), 40).status().message(),
            Path("t.tok") + ": token size is 41, expected 40");
}

// NumPy itself reads what we write and writes what we read.
TEST_F(FormatsTest, InteroperatesWithNumpy) {
  if (std::system("/usr/bin/python3 -c 'import numpy' 2>/dev/null") != 0) {
    GTEST_SKIP() << "/usr/bin/python3 with numpy is not available";
  }
  const std::vector<float> data = Ramp(6 * 4, 0.37f);
  ASSERT_TRUE(WriteMatrix(Path("ours.npy"), Matrix{6, 4, data}).ok());
  const std::string script =
      "import numpy as np, sys\n"
      "a = np.load(sys.argv[1])\n"
      "assert a.dtype == np.float32 and a.shape == (6, 4), (a.dtype, a.shape)\n"
      "b = (np.arange(24, dtype=np.float32) * np.float32(0.37) - np.float32(3)).reshape(6, 4)\n"
      "assert (a == b).all()\n"
      "np.save(sys.argv[2], a.astype(np.float64).T.copy())\n";
  std::ofstream(Path("check.py")) << script;
  const std::string command = "/usr/bin/python3 " + Path("check.py") + " " + Path("ours.npy") +
                              " " + Path("theirs.npy");
  ASSERT_EQ(std::system(command.c_str()), 0);
  Result<Matrix> theirs = ReadMatrix(Path("theirs.npy"));
  ASSERT_TRUE(theirs.ok()) << theirs.status().ToString();
  ASSERT_EQ(theirs->rows, 4u);
  ASSERT_EQ(theirs->dimension, 6u);
  for (size_t r = 0; r < 4; ++r) {
    for (size_t c = 0; c < 6; ++c) EXPECT_EQ(theirs->data[r * 6 + c], data[c * 4 + r]);
  }
}

}  // namespace
}  // namespace vecseal::client
