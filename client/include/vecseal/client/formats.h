// Vector files as ML pipelines keep them: .npy, .fvecs, .jsonl and raw float32. Readers and
// writers stream in chunks so that a file larger than memory works; every reader treats its
// input as untrusted (a malformed or hostile file yields a Status, never a crash or a huge
// allocation).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vecseal/core/status.h"

namespace vecseal::client {

enum class VectorFormat : uint8_t {
  kNpy,    // NumPy .npy v1-v3: 2-D float32 or float64 (converted), C order
  kFvecs,  // per row: int32le d, then d float32le (the TEXMEX/FAISS convention)
  kJsonl,  // one JSON object per line; one field holds the vector, the rest passes through
  kRaw,    // headerless n×d float32le, row-major; the dimension must be given
};

std::string_view FormatName(VectorFormat format);  // "npy" | "fvecs" | "jsonl" | "f32"
// By extension: .npy, .fvecs, .jsonl (or .ndjson), .f32.
Result<VectorFormat> FormatFromPath(std::string_view path);
// By FormatName's names.
Result<VectorFormat> FormatFromName(std::string_view name);

struct FormatOptions {
  std::optional<VectorFormat> format;  // unset: from the file's extension
  size_t dimension = 0;                // required for kRaw; elsewhere, if set, checked
  std::string field = "embedding";     // kJsonl: the member that holds the vector
};

// Vectors longer than this are refused before anything is allocated for them.
inline constexpr size_t kMaxFileDimension = 1 << 20;
// A .jsonl line longer than this is refused: it bounds the memory one row may take.
inline constexpr size_t kMaxJsonlLine = 64u << 20;

// The JSON text of one .jsonl row with the byte span of its vector's value, so that a writer
// can put a new vector there and leave every other byte of the line unchanged.
struct JsonlRecord {
  std::string line;
  size_t value_begin = 0;
  size_t value_end = 0;
};

class VectorReader {
 public:
  virtual ~VectorReader() = default;

  virtual VectorFormat format() const = 0;
  virtual size_t dimension() const = 0;
  // Known up front for every format but .jsonl.
  virtual std::optional<size_t> rows() const = 0;
  // Bytes consumed so far and the file size, for progress reporting.
  virtual uint64_t bytes_read() const = 0;
  virtual uint64_t file_size() const = 0;

  // Replaces `out` with up to max_rows rows (row-major, dimension() floats each) and returns how
  // many were read; 0 means the end of the file. Values are not checked for finiteness here:
  // the daemon does that and names the row.
  virtual Result<size_t> Next(size_t max_rows, std::vector<float>& out) = 0;

  // For .jsonl, the rows returned by the last Next(); empty for other formats.
  virtual std::span<const JsonlRecord> records() const { return {}; }
};

Result<std::unique_ptr<VectorReader>> OpenVectorReader(const std::string& path,
                                                       const FormatOptions& options = {});

// Writes to a temporary file next to the destination; Commit() flushes, fsyncs and renames it
// into place. A writer destroyed without Commit() (error, signal unwinding, exception) removes
// the temporary file, so that a half-written file never appears under the final name.
class VectorWriter {
 public:
  virtual ~VectorWriter() = default;

  // `rows` holds whole rows of the writer's dimension. For .jsonl output, `records` (from a
  // .jsonl reader, one per row) supplies the rest of each line; without them each line is
  // {"<field>": [...]}.
  virtual Status Write(std::span<const float> rows, std::span<const JsonlRecord> records = {}) = 0;
  virtual Status Commit() = 0;
};

Result<std::unique_ptr<VectorWriter>> CreateVectorWriter(const std::string& path,
                                                         size_t dimension,
                                                         const FormatOptions& options = {});

struct Matrix {
  size_t rows = 0;
  size_t dimension = 0;
  std::vector<float> data;  // rows × dimension, row-major

  std::span<const float> row(size_t i) const {
    return std::span<const float>(data).subspan(i * dimension, dimension);
  }
};

// The whole file in memory: for tools (calibration) that need every row at once.
Result<Matrix> ReadMatrix(const std::string& path, const FormatOptions& options = {});
Status WriteMatrix(const std::string& path, const Matrix& matrix,
                   const FormatOptions& options = {});

// Class labels, one per row: a 1-D or (n, 1) .npy array of integers (int8 to int64, uint8 to
// uint64), booleans or floats, or one column in any other vector format. Labels name classes,
// so a float must be a whole number; errors name the file and the row.
Result<std::vector<int64_t>> ReadLabelColumn(const std::string& path);

// A status about vector i of a batch that starts at row `first_row` of `path` (one with a
// vector index), reworded to name the file's row; other statuses pass unchanged.
Status AtRow(Status status, const std::string& path, uint64_t first_row);

// Token files hold the reversible-mode tokens of one encrypted file, row for row
// (docs/cli.md "Token files"):
//   magic "VSTOKEN1" (8) ‖ token_size u32le (41) ‖ reserved u32le (0) ‖ count u64le ‖
//   count × token_size bytes.
inline constexpr std::string_view kTokenFileMagic = "VSTOKEN1";
inline constexpr size_t kTokenFileHeaderSize = 24;

class TokenFileReader {
 public:
  static Result<std::unique_ptr<TokenFileReader>> Open(const std::string& path,
                                                       size_t token_size);
  virtual ~TokenFileReader() = default;
  virtual uint64_t count() const = 0;
  // Replaces `out` with up to max_tokens tokens; returns how many.
  virtual Result<size_t> Next(size_t max_tokens, std::vector<uint8_t>& out) = 0;
};

class TokenFileWriter {
 public:
  static Result<std::unique_ptr<TokenFileWriter>> Create(const std::string& path,
                                                         size_t token_size);
  virtual ~TokenFileWriter() = default;
  // `tokens` holds whole tokens.
  virtual Status Write(std::span<const uint8_t> tokens) = 0;
  virtual Status Commit() = 0;
};

}  // namespace vecseal::client
