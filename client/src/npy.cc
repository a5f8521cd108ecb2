#include "npy.h"

#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace vecseal::client::internal {
namespace {

Status Invalid(std::string message) {
  return Status(Code::kInvalidArgument, "invalid_npy", std::move(message));
}

// A recursive-descent reader for the one Python literal NumPy writes:
//   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 768), }
// Only what that literal needs is accepted; anything else is an error, never a guess.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, NpyArray array) : text_(text), array_(array) {}

  Status Parse(NpyHeader& header) {
    SkipSpace();
    if (!Consume('{')) return Invalid("header is not a Python dict literal");
    bool seen_descr = false, seen_order = false, seen_shape = false;
    while (true) {
      SkipSpace();
      if (Consume('}')) break;
      std::string key;
      VECSEAL_RETURN_IF_ERROR(ParseString(key));
      SkipSpace();
      if (!Consume(':')) return Invalid("expected ':' after key '" + key + "'");
      SkipSpace();
      if (key == "descr") {
        if (seen_descr) return Invalid("duplicate key 'descr'");
        seen_descr = true;
        std::string descr;
        VECSEAL_RETURN_IF_ERROR(ParseString(descr));
        VECSEAL_RETURN_IF_ERROR(ParseDescr(descr, header));
      } else if (key == "fortran_order") {
        if (seen_order) return Invalid("duplicate key 'fortran_order'");
        seen_order = true;
        if (ConsumeWord("True")) {
          return Invalid("Fortran-order arrays are not supported (save with np.ascontiguousarray)");
        }
        if (!ConsumeWord("False")) return Invalid("'fortran_order' must be True or False");
      } else if (key == "shape") {
        if (seen_shape) return Invalid("duplicate key 'shape'");
        seen_shape = true;
        VECSEAL_RETURN_IF_ERROR(ParseShape(header));
      } else {
        return Invalid("unexpected key '" + key + "'");
      }
      SkipSpace();
      if (Consume(',')) continue;
      SkipSpace();
      if (Consume('}')) break;
      return Invalid("expected ',' or '}' after the value of '" + key + "'");
    }
    SkipSpace();
    if (pos_ != text_.size()) return Invalid("unexpected text after the header dict");
    if (!seen_descr) return Invalid("header lacks 'descr'");
    if (!seen_order) return Invalid("header lacks 'fortran_order'");
    if (!seen_shape) return Invalid("header lacks 'shape'");
    return Status::Ok();
  }

 private:
  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' || text_[pos_] == '\t'))
      ++pos_;
  }
  bool Consume(char c) {
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool ConsumeWord(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  // A quoted string without escapes: NumPy's keys and dtype strings never need them.
  Status ParseString(std::string& out) {
    if (pos_ >= text_.size() || (text_[pos_] != '\'' && text_[pos_] != '"')) {
      return Invalid("expected a quoted string at header offset " + std::to_string(pos_));
    }
    const char quote = text_[pos_++];
    const size_t end = text_.find(quote, pos_);
    if (end == std::string_view::npos) return Invalid("unterminated string in header");
    const std::string_view body = text_.substr(pos_, end - pos_);
    if (body.size() > 32 || body.find('\\') != std::string_view::npos) {
      return Invalid("unexpected string in header");
    }
    for (char c : body) {
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) {
        return Invalid("non-printable character in header string");
      }
    }
    out.assign(body);
    pos_ = end + 1;
    return Status::Ok();
  }

  Status ParseDescr(const std::string& descr, NpyHeader& header) const {
    if (descr == "<f4" || descr == ">f4" || descr == "<f8" || descr == ">f8") {
      header.big_endian = descr[0] == '>';
      header.item_size = descr[2] == '4' ? 4 : 8;
      return Status::Ok();
    }
    if (array_ == NpyArray::kColumn && descr.size() == 3 &&
        std::string_view("<>|").find(descr[0]) != std::string_view::npos &&
        std::string_view("iub").find(descr[1]) != std::string_view::npos &&
        std::string_view("1248").find(descr[2]) != std::string_view::npos) {
      header.kind = descr[1];
      header.item_size = static_cast<size_t>(descr[2] - '0');
      header.big_endian = descr[0] == '>';
      // NumPy writes '|' (no byte order) exactly for one-byte items.
      const bool one_byte = header.item_size == 1;
      if ((descr[0] == '|') == one_byte && (header.kind != 'b' || one_byte)) {
        return Status::Ok();
      }
    }
    return Status(Code::kInvalidArgument, "unsupported_npy_dtype",
                  "dtype '" + descr + "' is not supported (want " +
                      (array_ == NpyArray::kColumn
                           ? "integers, booleans, float32 or float64"
                           : "float32 '<f4' or float64 '<f8'") +
                      ")");
  }

  Result<uint64_t> ParseInt() {
    const size_t start = pos_;
    uint64_t value = 0;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      const uint64_t digit = static_cast<uint64_t>(text_[pos_] - '0');
      if (value > (std::numeric_limits<uint64_t>::max() - digit) / 10) {
        return Invalid("shape value is too large");
      }
      value = value * 10 + digit;
      ++pos_;
    }
    if (pos_ == start) return Invalid("expected a non-negative integer in 'shape'");
    // Python 3 writes (3, 768); Python 2 pickles could write 3L.
    Consume('L');
    return value;
  }

  Status ParseShape(NpyHeader& header) {
    if (!Consume('(')) return Invalid("'shape' must be a tuple");
    std::vector<uint64_t> dims;
    while (true) {
      SkipSpace();
      if (Consume(')')) break;
      if (dims.size() == 8) return Invalid("'shape' has too many dimensions");
      Result<uint64_t> value = ParseInt();
      if (!value.ok()) return std::move(value).TakeStatus();
      dims.push_back(*value);
      SkipSpace();
      if (Consume(',')) continue;
      SkipSpace();
      if (Consume(')')) break;
      return Invalid("expected ',' or ')' in 'shape'");
    }
    if (array_ == NpyArray::kColumn && (dims.size() == 1 || (dims.size() == 2 && dims[1] == 1))) {
      header.rows = dims[0];
      header.dimension = 1;
      return Status::Ok();
    }
    if (array_ == NpyArray::kVectors && dims.size() == 2) {
      header.rows = dims[0];
      header.dimension = dims[1];
      return Status::Ok();
    }
    std::string shape = "(";
    for (size_t i = 0; i < dims.size(); ++i) shape += (i ? ", " : "") + std::to_string(dims[i]);
    shape += dims.size() == 1 ? ",)" : ")";
    return Invalid("shape " + shape + (array_ == NpyArray::kColumn
                                           ? " is not one column (rows,) or (rows, 1)"
                                           : " is not 2-D (rows, dimension)"));
  }

  std::string_view text_;
  NpyArray array_;
  size_t pos_ = 0;
};

}  // namespace

Result<size_t> NpyPreambleSize(std::string_view first8) {
  if (first8.size() < 8 || first8.substr(0, 6) != kNpyMagic) {
    return Invalid("not an .npy file (bad magic)");
  }
  const auto major = static_cast<uint8_t>(first8[6]);
  if (major == 1) return size_t{10};
  if (major == 2 || major == 3) return size_t{12};
  return Invalid("unsupported .npy format version " + std::to_string(major) + "." +
                 std::to_string(static_cast<uint8_t>(first8[7])));
}

Result<NpyHeader> ParseNpyHeader(std::string_view prefix, NpyArray array) {
  Result<size_t> preamble = NpyPreambleSize(prefix.substr(0, 8));
  if (!preamble.ok()) return std::move(preamble).TakeStatus();
  if (prefix.size() < *preamble) return Invalid("truncated .npy preamble");
  const auto byte = [&](size_t i) { return static_cast<uint64_t>(static_cast<uint8_t>(prefix[i])); };
  uint64_t header_size = byte(8) | (byte(9) << 8);
  if (*preamble == 12) header_size |= (byte(10) << 16) | (byte(11) << 24);
  if (header_size > kMaxNpyHeader) {
    return Invalid("header length " + std::to_string(header_size) + " exceeds the " +
                   std::to_string(kMaxNpyHeader) + "-byte limit");
  }
  if (prefix.size() - *preamble < header_size) return Invalid("truncated .npy header");
  NpyHeader header;
  header.data_offset = *preamble + header_size;
  HeaderParser parser(prefix.substr(*preamble, header_size), array);
  VECSEAL_RETURN_IF_ERROR(parser.Parse(header));
  return header;
}

std::string FormatNpyHeader(uint64_t rows, uint64_t dimension, size_t total_size) {
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (" +
                     std::to_string(rows) + ", " + std::to_string(dimension) + "), }";
  std::string out(kNpyMagic);
  out += '\x01';
  out += '\x00';
  const size_t header_size = total_size - 10;
  out += static_cast<char>(header_size & 0xff);
  out += static_cast<char>(header_size >> 8);
  out += dict;
  out.append(total_size - out.size() - 1, ' ');
  out += '\n';
  return out;
}

}  // namespace vecseal::client::internal
