#include "vecseal/client/formats.h"

#include <bit>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <utility>

#include <nlohmann/json.hpp>

#include "file_io.h"
#include "npy.h"

namespace vecseal::client {
namespace {

using internal::AtomicOutputFile;
using internal::InputFile;
using internal::LineReader;

// Files are little-endian; so is every platform vecseal ships on, but decode portably anyway.
uint32_t LoadU32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t LoadU64(const uint8_t* p) {
  return static_cast<uint64_t>(LoadU32(p)) | (static_cast<uint64_t>(LoadU32(p + 4)) << 32);
}
void StoreU32(uint32_t v, uint8_t* p) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void StoreU64(uint64_t v, uint8_t* p) {
  StoreU32(static_cast<uint32_t>(v), p);
  StoreU32(static_cast<uint32_t>(v >> 32), p + 4);
}

// The smallest double that rounds to infinity as a float: FLT_MAX plus half an ulp.
constexpr double kFloatOverflow = 0x1.ffffffp127;

// Converts `count` float32 (item 4) or float64 (item 8) values of the given byte order.
void DecodeFloats(const uint8_t* in, size_t count, size_t item_size, bool big_endian, float* out) {
  if (item_size == 4 && !big_endian && std::endian::native == std::endian::little) {
    std::memcpy(out, in, count * 4);
    return;
  }
  for (size_t i = 0; i < count; ++i) {
    uint8_t bytes[8];
    for (size_t b = 0; b < item_size; ++b) {
      const size_t from = big_endian ? item_size - 1 - b : b;
      bytes[std::endian::native == std::endian::little ? b : item_size - 1 - b] =
          in[i * item_size + from];
    }
    if (item_size == 4) {
      std::memcpy(&out[i], bytes, 4);
    } else {
      double wide;
      std::memcpy(&wide, bytes, 8);
      // Out-of-range doubles become ±inf explicitly (a plain conversion is undefined); the
      // daemon then rejects the row as non-finite and names it.
      if (std::isfinite(wide) && std::fabs(wide) >= kFloatOverflow) {
        out[i] = std::signbit(wide) ? -std::numeric_limits<float>::infinity()
                                    : std::numeric_limits<float>::infinity();
      } else {
        out[i] = static_cast<float>(wide);
      }
    }
  }
}

void EncodeFloats(std::span<const float> in, std::vector<uint8_t>& out) {
  out.resize(in.size() * 4);
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(out.data(), in.data(), out.size());
  } else {
    for (size_t i = 0; i < in.size(); ++i) StoreU32(std::bit_cast<uint32_t>(in[i]), &out[i * 4]);
  }
}

Status Invalid(std::string_view reason, const std::string& path, const std::string& message) {
  return Status(Code::kInvalidArgument, std::string(reason), path + ": " + message);
}

Status CheckDimension(const std::string& path, size_t found, const FormatOptions& options) {
  if (options.dimension != 0 && found != 0 && found != options.dimension) {
    return Invalid("dimension_mismatch", path,
                   "vectors have dimension " + std::to_string(found) + ", expected " +
                       std::to_string(options.dimension));
  }
  if (found > kMaxFileDimension) {
    return Invalid("invalid_dimension", path,
                   "dimension " + std::to_string(found) + " exceeds the limit of " +
                       std::to_string(kMaxFileDimension));
  }
  return Status::Ok();
}

// Rows are read in bounded blocks so that a huge max_rows cannot force a huge allocation.
size_t ClampRows(size_t max_rows, size_t row_bytes) {
  constexpr size_t kMaxChunkBytes = 64u << 20;
  return std::max<size_t>(1, std::min(max_rows, kMaxChunkBytes / std::max<size_t>(row_bytes, 1)));
}

// .npy and raw .f32: a header (possibly empty) then rows × dimension fixed-size items.
class DenseReader final : public VectorReader {
 public:
  DenseReader(VectorFormat format, InputFile file, size_t dimension, uint64_t rows,
              size_t item_size, bool big_endian)
      : format_(format),
        file_(std::move(file)),
        dimension_(dimension),
        rows_(rows),
        item_size_(item_size),
        big_endian_(big_endian) {}

  VectorFormat format() const override { return format_; }
  size_t dimension() const override { return dimension_; }
  std::optional<size_t> rows() const override { return rows_; }
  uint64_t bytes_read() const override { return file_.position(); }
  uint64_t file_size() const override { return file_.size(); }

  Result<size_t> Next(size_t max_rows, std::vector<float>& out) override {
    const size_t row_bytes = dimension_ * item_size_;
    const size_t n = static_cast<size_t>(
        std::min<uint64_t>(ClampRows(max_rows, row_bytes), rows_ - next_row_));
    out.resize(n * dimension_);
    if (n == 0) return size_t{0};
    if (item_size_ == 4 && !big_endian_ && std::endian::native == std::endian::little) {
      VECSEAL_RETURN_IF_ERROR(file_.ReadExact(
          std::span<uint8_t>(reinterpret_cast<uint8_t*>(out.data()), n * row_bytes)));
    } else {
      bytes_.resize(n * row_bytes);
      VECSEAL_RETURN_IF_ERROR(file_.ReadExact(bytes_));
      DecodeFloats(bytes_.data(), n * dimension_, item_size_, big_endian_, out.data());
    }
    next_row_ += n;
    return n;
  }

 private:
  VectorFormat format_;
  InputFile file_;
  size_t dimension_;
  uint64_t rows_;
  size_t item_size_;
  bool big_endian_;
  uint64_t next_row_ = 0;
  std::vector<uint8_t> bytes_;
};

// The header of an .npy file, and the file positioned at its data, which must be exactly the
// size the shape says.
Result<internal::NpyHeader> ReadNpyHeader(InputFile& file, internal::NpyArray array) {
  const std::string path = file.path();
  std::string prefix(8, '\0');
  if (file.size() < 8) return Invalid("invalid_npy", path, "not an .npy file (too short)");
  VECSEAL_RETURN_IF_ERROR(
      file.ReadExact(std::span<uint8_t>(reinterpret_cast<uint8_t*>(prefix.data()), 8)));
  Result<size_t> preamble = internal::NpyPreambleSize(prefix);
  if (!preamble.ok()) return Invalid("invalid_npy", path, preamble.status().message());
  if (file.size() < *preamble) return Invalid("invalid_npy", path, "truncated .npy preamble");
  prefix.resize(*preamble);
  VECSEAL_RETURN_IF_ERROR(file.ReadExact(
      std::span<uint8_t>(reinterpret_cast<uint8_t*>(prefix.data()) + 8, *preamble - 8)));
  const auto byte = [&](size_t i) { return static_cast<uint64_t>(static_cast<uint8_t>(prefix[i])); };
  uint64_t header_size = byte(8) | (byte(9) << 8);
  if (*preamble == 12) header_size |= (byte(10) << 16) | (byte(11) << 24);
  // Bound the header before allocating it; ParseNpyHeader repeats the check for its other callers.
  if (header_size <= internal::kMaxNpyHeader && header_size <= file.size() - *preamble) {
    prefix.resize(*preamble + header_size);
    VECSEAL_RETURN_IF_ERROR(file.ReadExact(std::span<uint8_t>(
        reinterpret_cast<uint8_t*>(prefix.data()) + *preamble, header_size)));
  }
  Result<internal::NpyHeader> header = internal::ParseNpyHeader(prefix, array);
  if (!header.ok()) {
    return Invalid(header.status().reason(), path, header.status().message());
  }
  if (header->dimension == 0 && header->rows != 0) {
    return Invalid("invalid_dimension", path, "shape has dimension 0");
  }
  const uint64_t row_bytes = header->dimension * header->item_size;
  const uint64_t data_size = file.size() - header->data_offset;
  if (row_bytes != 0 && header->rows > std::numeric_limits<uint64_t>::max() / row_bytes) {
    return Invalid("invalid_npy", path, "shape is too large");
  }
  if (header->rows * row_bytes != data_size) {
    return Invalid("invalid_npy", path,
                   "data is " + std::to_string(data_size) + " bytes but shape (" +
                       std::to_string(header->rows) + ", " + std::to_string(header->dimension) +
                       ") needs " + std::to_string(header->rows * row_bytes));
  }
  return header;
}

Result<std::unique_ptr<VectorReader>> OpenNpy(InputFile file, const FormatOptions& options) {
  Result<internal::NpyHeader> header = ReadNpyHeader(file, internal::NpyArray::kVectors);
  if (!header.ok()) return std::move(header).TakeStatus();
  VECSEAL_RETURN_IF_ERROR(CheckDimension(file.path(), header->dimension, options));
  return std::unique_ptr<VectorReader>(std::make_unique<DenseReader>(VectorFormat::kNpy, std::move(file),
                                       static_cast<size_t>(header->dimension), header->rows,
                                       header->item_size, header->big_endian));
}

Result<std::unique_ptr<VectorReader>> OpenRaw(InputFile file, const FormatOptions& options) {
  const std::string path = file.path();
  if (options.dimension == 0) {
    return Invalid("dimension_required", path,
                   "raw float32 files carry no dimension; give it (--dim)");
  }
  VECSEAL_RETURN_IF_ERROR(CheckDimension(path, options.dimension, options));
  const uint64_t row_bytes = options.dimension * 4;
  if (file.size() % row_bytes != 0) {
    return Invalid("invalid_length", path,
                   "size " + std::to_string(file.size()) + " bytes is not a multiple of " +
                       std::to_string(row_bytes) + " (dimension " +
                       std::to_string(options.dimension) + " × 4 bytes)");
  }
  const uint64_t rows = file.size() / row_bytes;
  return std::unique_ptr<VectorReader>(std::make_unique<DenseReader>(VectorFormat::kRaw, std::move(file), options.dimension,
                                       rows, 4, false));
}

class FvecsReader final : public VectorReader {
 public:
  FvecsReader(InputFile file, size_t dimension)
      : file_(std::move(file)),
        dimension_(dimension),
        rows_(dimension == 0 ? 0 : file_.size() / (4 + 4 * dimension)) {}

  VectorFormat format() const override { return VectorFormat::kFvecs; }
  size_t dimension() const override { return dimension_; }
  std::optional<size_t> rows() const override { return rows_; }
  uint64_t bytes_read() const override { return file_.position(); }
  uint64_t file_size() const override { return file_.size(); }

  Result<size_t> Next(size_t max_rows, std::vector<float>& out) override {
    const size_t row_bytes = 4 + 4 * dimension_;
    const size_t n = static_cast<size_t>(
        std::min<uint64_t>(ClampRows(max_rows, row_bytes), rows_ - next_row_));
    out.resize(n * dimension_);
    if (n == 0) return size_t{0};
    bytes_.resize(n * row_bytes);
    VECSEAL_RETURN_IF_ERROR(file_.ReadExact(bytes_));
    for (size_t i = 0; i < n; ++i) {
      const uint8_t* row = bytes_.data() + i * row_bytes;
      const uint32_t declared = LoadU32(row);
      if (declared != dimension_) {
        return Invalid("dimension_mismatch", file_.path(),
                       "row " + std::to_string(next_row_ + i) + " has dimension " +
                           std::to_string(static_cast<int32_t>(declared)) + ", expected " +
                           std::to_string(dimension_));
      }
      DecodeFloats(row + 4, dimension_, 4, false, out.data() + i * dimension_);
    }
    next_row_ += n;
    return n;
  }

 private:
  InputFile file_;
  size_t dimension_;
  uint64_t rows_;
  uint64_t next_row_ = 0;
  std::vector<uint8_t> bytes_;
};

Result<std::unique_ptr<VectorReader>> OpenFvecs(InputFile file, const FormatOptions& options) {
  const std::string path = file.path();
  if (file.size() == 0) return std::unique_ptr<VectorReader>(std::make_unique<FvecsReader>(std::move(file), 0));
  uint8_t first[4];
  if (file.size() < 4) return Invalid("invalid_fvecs", path, "file is shorter than one row header");
  VECSEAL_RETURN_IF_ERROR(file.ReadExact(first));
  const auto declared = static_cast<int32_t>(LoadU32(first));
  if (declared <= 0) {
    return Invalid("invalid_fvecs", path,
                   "row 0 declares dimension " + std::to_string(declared));
  }
  const auto dimension = static_cast<size_t>(declared);
  VECSEAL_RETURN_IF_ERROR(CheckDimension(path, dimension, options));
  const uint64_t row_bytes = 4 + 4 * static_cast<uint64_t>(dimension);
  if (file.size() % row_bytes != 0) {
    return Invalid("invalid_fvecs", path,
                   "size " + std::to_string(file.size()) + " bytes is not a multiple of the row size " +
                       std::to_string(row_bytes) + " (dimension " + std::to_string(dimension) + ")");
  }
  // Start over at byte 0 so that every row, the first included, is checked the same way.
  Result<InputFile> reopened = InputFile::Open(path);
  if (!reopened.ok()) return std::move(reopened).TakeStatus();
  return std::unique_ptr<VectorReader>(std::make_unique<FvecsReader>(std::move(reopened).value(), dimension));
}

// Finds the top-level member `field` of the JSON object in `line`. The line has already been
// validated as JSON, so this only has to be correct on valid input.
class MemberLocator {
 public:
  explicit MemberLocator(std::string_view text) : text_(text) {}

  // Returns false when `field` is absent; sets begin/end to the value's byte span.
  Result<bool> Find(std::string_view field, size_t& begin, size_t& end) {
    SkipSpace();
    if (!Consume('{')) return Status(Code::kInvalidArgument, "invalid_jsonl", "not a JSON object");
    bool found = false;
    SkipSpace();
    if (Consume('}')) return false;
    while (true) {
      SkipSpace();
      const size_t key_begin = pos_;
      SkipString();
      const std::string_view raw_key = text_.substr(key_begin + 1, pos_ - key_begin - 2);
      bool match = raw_key == field;
      if (!match && raw_key.find('\\') != std::string_view::npos) {
        match = nlohmann::json::parse(text_.substr(key_begin, pos_ - key_begin))
                    .get_ref<const std::string&>() == field;
      }
      SkipSpace();
      Consume(':');
      SkipSpace();
      const size_t value_begin = pos_;
      SkipValue();
      if (match) {
        if (found) {
          return Status(Code::kInvalidArgument, "invalid_jsonl",
                        "field \"" + std::string(field) + "\" appears twice");
        }
        found = true;
        begin = value_begin;
        end = pos_;
      }
      SkipSpace();
      if (Consume(',')) continue;
      Consume('}');
      return found;
    }
  }

 private:
  void SkipSpace() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r'))
      ++pos_;
  }
  bool Consume(char c) {
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  void SkipString() {
    ++pos_;  // opening quote
    while (pos_ < text_.size() && text_[pos_] != '"') pos_ += text_[pos_] == '\\' ? 2 : 1;
    ++pos_;
  }
  void SkipValue() {
    if (pos_ >= text_.size()) return;
    if (text_[pos_] == '"') return SkipString();
    if (text_[pos_] == '[' || text_[pos_] == '{') {
      int depth = 0;
      while (pos_ < text_.size()) {
        const char c = text_[pos_];
        if (c == '"') {
          SkipString();
          continue;
        }
        if (c == '[' || c == '{') ++depth;
        if (c == ']' || c == '}') --depth;
        ++pos_;
        if (depth == 0) return;
      }
      return;
    }
    while (pos_ < text_.size() && text_[pos_] != ',' && text_[pos_] != '}' && text_[pos_] != ' ' &&
           text_[pos_] != '\t' && text_[pos_] != '\n' && text_[pos_] != '\r')
      ++pos_;
  }

  std::string_view text_;
  size_t pos_ = 0;
};

class JsonlReader final : public VectorReader {
 public:
  static Result<std::unique_ptr<VectorReader>> Open(InputFile file, const FormatOptions& options) {
    if (options.field.empty()) {
      return Invalid("invalid_field", file.path(), "the vector field name is empty");
    }
    std::unique_ptr<JsonlReader> reader(new JsonlReader(std::move(file), options));
    // The first row fixes the dimension, so it is read now and kept for the first Next().
    Result<bool> has_row = reader->ReadRow(reader->first_values_, reader->first_record_);
    if (!has_row.ok()) return std::move(has_row).TakeStatus();
    reader->has_first_ = *has_row;
    if (*has_row) {
      reader->dimension_ = reader->first_values_.size();
      if (reader->dimension_ == 0) {
        return Invalid("invalid_dimension", reader->path_,
                       "line " + std::to_string(reader->line_number_) + ": \"" + options.field +
                           "\" is an empty array");
      }
      VECSEAL_RETURN_IF_ERROR(CheckDimension(reader->path_, reader->dimension_, options));
    } else {
      reader->dimension_ = options.dimension;
    }
    return std::unique_ptr<VectorReader>(std::move(reader));
  }

  VectorFormat format() const override { return VectorFormat::kJsonl; }
  size_t dimension() const override { return dimension_; }
  std::optional<size_t> rows() const override { return std::nullopt; }
  uint64_t bytes_read() const override { return lines_.bytes_consumed(); }
  uint64_t file_size() const override { return lines_.file().size(); }
  std::span<const JsonlRecord> records() const override { return records_; }

  Result<size_t> Next(size_t max_rows, std::vector<float>& out) override {
    out.clear();
    records_.clear();
    const size_t limit = ClampRows(max_rows, dimension_ * 4);
    if (has_first_) {
      out.insert(out.end(), first_values_.begin(), first_values_.end());
      records_.push_back(std::move(first_record_));
      has_first_ = false;
    }
    std::vector<float> values;
    while (records_.size() < limit) {
      JsonlRecord record;
      Result<bool> has_row = ReadRow(values, record);
      if (!has_row.ok()) return std::move(has_row).TakeStatus();
      if (!*has_row) break;
      if (values.size() != dimension_) {
        return Invalid("dimension_mismatch", path_,
                       "line " + std::to_string(line_number_) + " (row " +
                           std::to_string(row_number_ - 1) + ") has dimension " +
                           std::to_string(values.size()) + ", expected " +
                           std::to_string(dimension_));
      }
      out.insert(out.end(), values.begin(), values.end());
      records_.push_back(std::move(record));
    }
    return records_.size();
  }

 private:
  JsonlReader(InputFile file, const FormatOptions& options)
      : path_(file.path()), lines_(std::move(file), kMaxJsonlLine), field_(options.field) {}

  Status LineError(const std::string& what) const {
    return Invalid("invalid_jsonl", path_, "line " + std::to_string(line_number_) + ": " + what);
  }

  // Reads the next non-blank line; false at the end of the file.
  Result<bool> ReadRow(std::vector<float>& values, JsonlRecord& record) {
    while (true) {
      Result<bool> more = lines_.Next(record.line);
      if (!more.ok()) return std::move(more).TakeStatus();
      if (!*more) return false;
      ++line_number_;
      if (record.line.find_first_not_of(" \t\r") != std::string::npos) break;
    }
    if (!nlohmann::json::accept(record.line)) return LineError("not valid JSON");
    MemberLocator locator(record.line);
    Result<bool> found = locator.Find(field_, record.value_begin, record.value_end);
    if (!found.ok()) return LineError(found.status().message());
    if (!*found) return LineError("no \"" + field_ + "\" field");
    const nlohmann::json value = nlohmann::json::parse(
        std::string_view(record.line).substr(record.value_begin, record.value_end - record.value_begin));
    if (!value.is_array()) return LineError("\"" + field_ + "\" is not an array of numbers");
    values.clear();
    values.reserve(value.size());
    for (const nlohmann::json& element : value) {
      if (!element.is_number()) return LineError("\"" + field_ + "\" is not an array of numbers");
      const double wide = element.get<double>();
      if (!std::isfinite(wide) || std::fabs(wide) >= kFloatOverflow) {
        return LineError("element " + std::to_string(values.size()) +
                         " of \"" + field_ + "\" is outside the float32 range");
      }
      values.push_back(static_cast<float>(wide));
    }
    ++row_number_;
    return true;
  }

  std::string path_;
  LineReader lines_;
  std::string field_;
  size_t dimension_ = 0;
  size_t line_number_ = 0;
  size_t row_number_ = 0;
  bool has_first_ = false;
  std::vector<float> first_values_;
  JsonlRecord first_record_;
  std::vector<JsonlRecord> records_;
};

// Writers.

Status CheckRows(const std::string& path, std::span<const float> rows, size_t dimension) {
  if (dimension == 0 ? !rows.empty() : rows.size() % dimension != 0) {
    return Status(Code::kInvalidArgument, "invalid_length",
                  path + ": " + std::to_string(rows.size()) +
                      " values are not whole rows of dimension " + std::to_string(dimension));
  }
  return Status::Ok();
}

class DenseWriter final : public VectorWriter {
 public:
  // `header_size` is reserved at the start (the .npy header, rewritten at Commit()).
  DenseWriter(VectorFormat format, AtomicOutputFile file, size_t dimension)
      : format_(format), file_(std::move(file)), dimension_(dimension) {}

  Status Start() {
    if (format_ != VectorFormat::kNpy) return Status::Ok();
    return file_.Write(internal::FormatNpyHeader(0, dimension_, kNpyHeaderSize));
  }

  Status Write(std::span<const float> rows, std::span<const JsonlRecord>) override {
    VECSEAL_RETURN_IF_ERROR(CheckRows(file_.path(), rows, dimension_));
    if (rows.empty()) return Status::Ok();
    const size_t n = rows.size() / dimension_;
    if (format_ == VectorFormat::kFvecs) {
      bytes_.resize(n * (4 + 4 * dimension_));
      for (size_t i = 0; i < n; ++i) {
        uint8_t* row = bytes_.data() + i * (4 + 4 * dimension_);
        StoreU32(static_cast<uint32_t>(dimension_), row);
        for (size_t j = 0; j < dimension_; ++j) {
          StoreU32(std::bit_cast<uint32_t>(rows[i * dimension_ + j]), row + 4 + 4 * j);
        }
      }
    } else {
      EncodeFloats(rows, bytes_);
    }
    VECSEAL_RETURN_IF_ERROR(file_.Write(bytes_));
    rows_written_ += n;
    return Status::Ok();
  }

  Status Commit() override {
    if (format_ == VectorFormat::kNpy) {
      const std::string header = internal::FormatNpyHeader(rows_written_, dimension_, kNpyHeaderSize);
      VECSEAL_RETURN_IF_ERROR(file_.WriteAt(
          0, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(header.data()), header.size())));
    }
    return file_.Commit();
  }

 private:
  // Room for any uint64 row count, so that the final header fits the space reserved up front.
  static constexpr size_t kNpyHeaderSize = 128;

  VectorFormat format_;
  AtomicOutputFile file_;
  size_t dimension_;
  uint64_t rows_written_ = 0;
  std::vector<uint8_t> bytes_;
};

class JsonlWriter final : public VectorWriter {
 public:
  JsonlWriter(AtomicOutputFile file, size_t dimension, const std::string& field)
      : file_(std::move(file)), dimension_(dimension), quoted_field_(nlohmann::json(field).dump()) {}

  Status Write(std::span<const float> rows, std::span<const JsonlRecord> records) override {
    VECSEAL_RETURN_IF_ERROR(CheckRows(file_.path(), rows, dimension_));
    const size_t n = dimension_ == 0 ? 0 : rows.size() / dimension_;
    if (!records.empty() && records.size() != n) {
      return Status(Code::kInvalidArgument, "invalid_length",
                    file_.path() + ": " + std::to_string(records.size()) + " records for " +
                        std::to_string(n) + " rows");
    }
    for (size_t i = 0; i < n; ++i) {
      text_.clear();
      if (records.empty()) {
        text_ += "{" + quoted_field_ + ":";
        VECSEAL_RETURN_IF_ERROR(AppendVector(rows.subspan(i * dimension_, dimension_)));
        text_ += "}";
      } else {
        const JsonlRecord& record = records[i];
        text_.append(record.line, 0, record.value_begin);
        VECSEAL_RETURN_IF_ERROR(AppendVector(rows.subspan(i * dimension_, dimension_)));
        text_.append(record.line, record.value_end);
      }
      text_ += '\n';
      VECSEAL_RETURN_IF_ERROR(file_.Write(text_));
      ++rows_written_;
    }
    return Status::Ok();
  }

  Status Commit() override { return file_.Commit(); }

 private:
  // Shortest text that reads back as the same float32 (api.md: the bytes a token's tag covers).
  Status AppendVector(std::span<const float> row) {
    text_ += '[';
    char buffer[32];
    for (size_t j = 0; j < row.size(); ++j) {
      if (!std::isfinite(row[j])) {
        return Status(Code::kInvalidArgument, "non_finite_value",
                      file_.path() + ": row " + std::to_string(rows_written_) +
                          " holds a value JSON cannot represent (NaN or infinity)");
      }
      if (j) text_ += ',';
      const auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), row[j]);
      text_.append(buffer, end);
    }
    text_ += ']';
    return Status::Ok();
  }

  AtomicOutputFile file_;
  size_t dimension_;
  std::string quoted_field_;
  std::string text_;
  uint64_t rows_written_ = 0;
};

Result<VectorFormat> ResolveFormat(const std::string& path, const FormatOptions& options) {
  if (options.format) return *options.format;
  return FormatFromPath(path);
}

bool EndsWith(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

}  // namespace

std::string_view FormatName(VectorFormat format) {
  switch (format) {
    case VectorFormat::kNpy: return "npy";
    case VectorFormat::kFvecs: return "fvecs";
    case VectorFormat::kJsonl: return "jsonl";
    case VectorFormat::kRaw: return "f32";
  }
  return "unknown";
}

Result<VectorFormat> FormatFromPath(std::string_view path) {
  if (EndsWith(path, ".npy")) return VectorFormat::kNpy;
  if (EndsWith(path, ".fvecs")) return VectorFormat::kFvecs;
  if (EndsWith(path, ".jsonl") || EndsWith(path, ".ndjson")) return VectorFormat::kJsonl;
  if (EndsWith(path, ".f32")) return VectorFormat::kRaw;
  return Status(Code::kInvalidArgument, "unknown_format",
                std::string(path) +
                    ": unknown file type (use .npy, .fvecs, .jsonl or .f32, or name the format)");
}

Result<VectorFormat> FormatFromName(std::string_view name) {
  for (VectorFormat format :
       {VectorFormat::kNpy, VectorFormat::kFvecs, VectorFormat::kJsonl, VectorFormat::kRaw}) {
    if (FormatName(format) == name) return format;
  }
  return Status(Code::kInvalidArgument, "unknown_format",
                "unknown format '" + std::string(name) + "' (use npy, fvecs, jsonl or f32)");
}

Result<std::unique_ptr<VectorReader>> OpenVectorReader(const std::string& path,
                                                       const FormatOptions& options) {
  Result<VectorFormat> format = ResolveFormat(path, options);
  if (!format.ok()) return std::move(format).TakeStatus();
  Result<InputFile> file = InputFile::Open(path);
  if (!file.ok()) return std::move(file).TakeStatus();
  switch (*format) {
    case VectorFormat::kNpy: return OpenNpy(std::move(file).value(), options);
    case VectorFormat::kFvecs: return OpenFvecs(std::move(file).value(), options);
    case VectorFormat::kJsonl: return JsonlReader::Open(std::move(file).value(), options);
    case VectorFormat::kRaw: return OpenRaw(std::move(file).value(), options);
  }
  return Status(Code::kInternal, "internal", "unhandled vector format");
}

Result<std::unique_ptr<VectorWriter>> CreateVectorWriter(const std::string& path,
                                                         size_t dimension,
                                                         const FormatOptions& options) {
  Result<VectorFormat> format = ResolveFormat(path, options);
  if (!format.ok()) return std::move(format).TakeStatus();
  if (dimension > kMaxFileDimension) {
    return Status(Code::kInvalidArgument, "invalid_dimension",
                  path + ": dimension " + std::to_string(dimension) + " exceeds the limit of " +
                      std::to_string(kMaxFileDimension));
  }
  if (*format == VectorFormat::kJsonl && options.field.empty()) {
    return Invalid("invalid_field", path, "the vector field name is empty");
  }
  Result<AtomicOutputFile> file = AtomicOutputFile::Create(path);
  if (!file.ok()) return std::move(file).TakeStatus();
  if (*format == VectorFormat::kJsonl) {
    return std::unique_ptr<VectorWriter>(std::make_unique<JsonlWriter>(std::move(file).value(), dimension, options.field));
  }
  auto writer = std::make_unique<DenseWriter>(*format, std::move(file).value(), dimension);
  VECSEAL_RETURN_IF_ERROR(writer->Start());
  return std::unique_ptr<VectorWriter>(std::move(writer));
}

Result<Matrix> ReadMatrix(const std::string& path, const FormatOptions& options) {
  Result<std::unique_ptr<VectorReader>> reader = OpenVectorReader(path, options);
  if (!reader.ok()) return std::move(reader).TakeStatus();
  Matrix matrix;
  matrix.dimension = (*reader)->dimension();
  std::vector<float> chunk;
  while (true) {
    Result<size_t> n = (*reader)->Next(65536, chunk);
    if (!n.ok()) return std::move(n).TakeStatus();
    if (*n == 0) break;
    matrix.data.insert(matrix.data.end(), chunk.begin(), chunk.end());
    matrix.rows += *n;
  }
  return matrix;
}

Status WriteMatrix(const std::string& path, const Matrix& matrix, const FormatOptions& options) {
  if (matrix.data.size() != matrix.rows * matrix.dimension) {
    return Status(Code::kInvalidArgument, "invalid_length",
                  path + ": matrix holds " + std::to_string(matrix.data.size()) +
                      " values, not rows × dimension");
  }
  Result<std::unique_ptr<VectorWriter>> writer =
      CreateVectorWriter(path, matrix.dimension, options);
  if (!writer.ok()) return std::move(writer).TakeStatus();
  VECSEAL_RETURN_IF_ERROR((*writer)->Write(matrix.data));
  return (*writer)->Commit();
}

namespace {

Status LabelError(const std::string& path, uint64_t row, const std::string& problem) {
  return Invalid("invalid_label", path,
                 "row " + std::to_string(row) + ": label " + problem +
                     " (labels name classes: map them to whole numbers first)");
}

Result<int64_t> WholeLabel(const std::string& path, uint64_t row, double value) {
  // 2^63 is exact as a double; every whole double below it in magnitude fits an int64.
  constexpr double kLimit = 9223372036854775808.0;
  if (std::isfinite(value) && value == std::trunc(value) && value >= -kLimit && value < kLimit) {
    return static_cast<int64_t>(value);
  }
  if (std::isnan(value)) return LabelError(path, row, "NaN is not a whole number");
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", value);
  const bool whole = std::isfinite(value) && value == std::trunc(value);
  return LabelError(path, row, std::string(text) + (whole ? " is outside the int64 range"
                                                         : " is not a whole number"));
}

Result<int64_t> DecodeLabel(const std::string& path, uint64_t row, const uint8_t* item,
                            const internal::NpyHeader& header) {
  uint64_t bits = 0;
  for (size_t b = 0; b < header.item_size; ++b) {
    const size_t from = header.big_endian ? header.item_size - 1 - b : b;
    bits |= static_cast<uint64_t>(item[from]) << (8 * b);
  }
  const unsigned width = static_cast<unsigned>(8 * header.item_size);
  switch (header.kind) {
    case 'b':
    case 'u':
      if (bits > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return LabelError(path, row, std::to_string(bits) + " is outside the int64 range");
      }
      return static_cast<int64_t>(bits);
    case 'i':
      // Sign-extend from the item's width.
      if (width < 64 && (bits >> (width - 1)) != 0) bits |= ~uint64_t{0} << width;
      return static_cast<int64_t>(bits);
    default:
      return WholeLabel(path, row,
                        header.item_size == 4 ? static_cast<double>(std::bit_cast<float>(
                                                    static_cast<uint32_t>(bits)))
                                              : std::bit_cast<double>(bits));
  }
}

}  // namespace

Result<std::vector<int64_t>> ReadLabelColumn(const std::string& path) {
  std::vector<int64_t> labels;
  Result<VectorFormat> format = FormatFromPath(path);
  if (format.ok() && *format == VectorFormat::kNpy) {
    Result<InputFile> file = InputFile::Open(path);
    if (!file.ok()) return std::move(file).TakeStatus();
    Result<internal::NpyHeader> header = ReadNpyHeader(*file, internal::NpyArray::kColumn);
    if (!header.ok()) return std::move(header).TakeStatus();
    std::vector<uint8_t> bytes(static_cast<size_t>(header->rows * header->item_size));
    VECSEAL_RETURN_IF_ERROR(file->ReadExact(bytes));
    labels.reserve(static_cast<size_t>(header->rows));
    for (uint64_t row = 0; row < header->rows; ++row) {
      Result<int64_t> label = DecodeLabel(path, row, &bytes[row * header->item_size], *header);
      if (!label.ok()) return std::move(label).TakeStatus();
      labels.push_back(*label);
    }
    return labels;
  }
  Result<Matrix> matrix = ReadMatrix(path);
  if (!matrix.ok()) return std::move(matrix).TakeStatus();
  if (matrix->dimension != 1) {
    return Invalid("invalid_label", path,
                   "labels must be one column, not " + std::to_string(matrix->dimension));
  }
  for (size_t row = 0; row < matrix->rows; ++row) {
    Result<int64_t> label = WholeLabel(path, row, matrix->data[row]);
    if (!label.ok()) return std::move(label).TakeStatus();
    labels.push_back(*label);
  }
  return labels;
}

Status AtRow(Status status, const std::string& path, uint64_t first_row) {
  if (!status.vector_index()) return status;
  const uint64_t row = first_row + *status.vector_index();
  // The daemon counts within the request ("vector 5 has ..."); the user counts in the file.
  std::string message = status.message();
  const std::string batch_prefix = "vector " + std::to_string(*status.vector_index()) + " ";
  if (message.rfind(batch_prefix, 0) == 0) {
    message = "the vector " + message.substr(batch_prefix.size());
  }
  return Status(status.code(), status.reason(),
                path + ": row " + std::to_string(row) + ": " + message);
}

// Token files.

namespace {

class TokenReaderImpl final : public TokenFileReader {
 public:
  TokenReaderImpl(InputFile file, size_t token_size, uint64_t count)
      : file_(std::move(file)), token_size_(token_size), count_(count) {}
  uint64_t count() const override { return count_; }
  Result<size_t> Next(size_t max_tokens, std::vector<uint8_t>& out) override {
    const size_t n = static_cast<size_t>(
        std::min<uint64_t>(ClampRows(max_tokens, token_size_), count_ - next_));
    out.resize(n * token_size_);
    VECSEAL_RETURN_IF_ERROR(file_.ReadExact(out));
    next_ += n;
    return n;
  }

 private:
  InputFile file_;
  size_t token_size_;
  uint64_t count_;
  uint64_t next_ = 0;
};

class TokenWriterImpl final : public TokenFileWriter {
 public:
  TokenWriterImpl(AtomicOutputFile file, size_t token_size)
      : file_(std::move(file)), token_size_(token_size) {}

  Status Start() { return file_.Write(Header()); }
  Status Write(std::span<const uint8_t> tokens) override {
    if (tokens.size() % token_size_ != 0) {
      return Status(Code::kInvalidArgument, "invalid_length",
                    file_.path() + ": " + std::to_string(tokens.size()) +
                        " bytes are not whole tokens");
    }
    VECSEAL_RETURN_IF_ERROR(file_.Write(tokens));
    count_ += tokens.size() / token_size_;
    return Status::Ok();
  }
  Status Commit() override {
    VECSEAL_RETURN_IF_ERROR(file_.WriteAt(0, Header()));
    return file_.Commit();
  }

 private:
  std::vector<uint8_t> Header() const {
    std::vector<uint8_t> header(kTokenFileHeaderSize, 0);
    std::memcpy(header.data(), kTokenFileMagic.data(), kTokenFileMagic.size());
    StoreU32(static_cast<uint32_t>(token_size_), &header[8]);
    StoreU64(count_, &header[16]);
    return header;
  }

  AtomicOutputFile file_;
  size_t token_size_;
  uint64_t count_ = 0;
};

}  // namespace

Result<std::unique_ptr<TokenFileReader>> TokenFileReader::Open(const std::string& path,
                                                               size_t token_size) {
  Result<InputFile> file = InputFile::Open(path);
  if (!file.ok()) return std::move(file).TakeStatus();
  if (file->size() < kTokenFileHeaderSize) {
    return Invalid("invalid_token_file", path, "not a vecseal token file (too short)");
  }
  uint8_t header[kTokenFileHeaderSize];
  VECSEAL_RETURN_IF_ERROR(file->ReadExact(header));
  if (std::memcmp(header, kTokenFileMagic.data(), kTokenFileMagic.size()) != 0) {
    return Invalid("invalid_token_file", path, "not a vecseal token file (bad magic)");
  }
  const uint32_t stored_size = LoadU32(header + 8);
  if (stored_size != token_size) {
    return Invalid("invalid_token_file", path,
                   "token size is " + std::to_string(stored_size) + ", expected " +
                       std::to_string(token_size));
  }
  if (LoadU32(header + 12) != 0) {
    return Invalid("invalid_token_file", path, "reserved header field is not zero");
  }
  const uint64_t count = LoadU64(header + 16);
  const uint64_t data_size = file->size() - kTokenFileHeaderSize;
  if (count > data_size / token_size || count * token_size != data_size) {
    return Invalid("invalid_token_file", path,
                   "header says " + std::to_string(count) + " tokens but the file holds " +
                       std::to_string(data_size) + " bytes of tokens");
  }
  return std::unique_ptr<TokenFileReader>(
      std::make_unique<TokenReaderImpl>(std::move(file).value(), token_size, count));
}

Result<std::unique_ptr<TokenFileWriter>> TokenFileWriter::Create(const std::string& path,
                                                                 size_t token_size) {
  if (token_size == 0) {
    return Status(Code::kInvalidArgument, "invalid_argument", "token size must be positive");
  }
  Result<AtomicOutputFile> file = AtomicOutputFile::Create(path);
  if (!file.ok()) return std::move(file).TakeStatus();
  auto writer = std::make_unique<TokenWriterImpl>(std::move(file).value(), token_size);
  VECSEAL_RETURN_IF_ERROR(writer->Start());
  return std::unique_ptr<TokenFileWriter>(std::move(writer));
}

}  // namespace vecseal::client
