#include "vecseal/daemon/vector_codec.h"

#include <cassert>
#include <charconv>
#include <cstring>
#include <limits>
#include <utility>

#include <nlohmann/json.hpp>

#include "vecseal/wire/binary_floats.h"
#include "vecseal/wire/tokens.h"

namespace vecseal::daemon {
namespace {

using nlohmann::json;

Status InvalidRequest(std::string message) {
  return Status(Code::kInvalidArgument, "invalid_request", std::move(message));
}

Status TooManyVectors(size_t max_vectors) {
  return Status(Code::kResourceExhausted, "too_many_vectors",
                "the request holds more than the limit of " + std::to_string(max_vectors) +
                    " vectors; split it into smaller batches");
}

Status TooDeep(size_t max_depth) {
  return Status(Code::kInvalidArgument, "json_too_deep",
                "the request body nests JSON arrays and objects deeper than " +
                    std::to_string(max_depth) + " levels");
}

// Counts nesting and nothing else: values are dropped as they are scanned.
class DepthSax {
 public:
  explicit DepthSax(size_t max_depth) : max_depth_(max_depth) {}
  bool null() { return true; }
  bool boolean(bool) { return true; }
  bool number_integer(json::number_integer_t) { return true; }
  bool number_unsigned(json::number_unsigned_t) { return true; }
  bool number_float(json::number_float_t, const json::string_t&) { return true; }
  bool string(json::string_t&) { return true; }
  bool binary(json::binary_t&) { return true; }
  bool key(json::string_t&) { return true; }
  bool start_object(size_t) { return Deeper(); }
  bool start_array(size_t) { return Deeper(); }
  bool end_object() { return Shallower(); }
  bool end_array() { return Shallower(); }
  bool parse_error(size_t, const std::string&, const nlohmann::detail::exception&) {
    return false;
  }
  bool too_deep() const { return too_deep_; }

 private:
  bool Deeper() {
    too_deep_ = ++depth_ > max_depth_;
    return !too_deep_;
  }
  bool Shallower() {
    --depth_;
    return true;
  }
  const size_t max_depth_;
  size_t depth_ = 0;
  bool too_deep_ = false;
};

// Accepts exactly {"vectors": [[number...]...], "reversible": bool, "tokens": [string...]} in
// any order, each at most once. Stops at the first problem, keeping it in status_.
class VectorRequestSax {
 public:
  using number_integer_t = json::number_integer_t;
  using number_unsigned_t = json::number_unsigned_t;
  using number_float_t = json::number_float_t;
  using string_t = json::string_t;
  using binary_t = json::binary_t;

  explicit VectorRequestSax(size_t max_vectors) : max_vectors_(max_vectors) {}

  bool null() { return WrongType("null"); }
  bool boolean(bool value) {
    if (state_ == State::kValue && field_ == Field::kReversible) {
      request_.reversible = value;
      state_ = State::kObject;
      return true;
    }
    return WrongType("a boolean");
  }
  bool number_integer(number_integer_t value) {
    if (IsKeyVersion()) return WrongType("a negative number");
    return Number(static_cast<float>(value));
  }
  bool number_unsigned(number_unsigned_t value) {
    if (IsKeyVersion()) {
      if (value == 0 || value > std::numeric_limits<uint32_t>::max()) {
        return WrongType("an integer outside 1 to 4294967295");
      }
      request_.key_version = static_cast<uint32_t>(value);
      state_ = State::kObject;
      return true;
    }
    return Number(static_cast<float>(value));
  }
  bool number_float(number_float_t, const string_t& text) {
    if (IsKeyVersion()) return WrongType("a fraction");
    return Number(wire::ParseFloat32(text));
  }
  bool string(string_t& value) {
    if (state_ == State::kTokens) {
      request_.tokens->push_back(std::move(value));
      return true;
    }
    return WrongType("a string");
  }
  bool binary(binary_t&) { return WrongType("binary"); }

  bool start_object(size_t) {
    if (!Deeper()) return false;
    if (state_ == State::kStart) {
      state_ = State::kObject;
      return true;
    }
    return WrongType("an object");
  }
  bool key(string_t& name) {
    Field field;
    if (name == "vectors") {
      field = Field::kVectors;
    } else if (name == "reversible") {
      field = Field::kReversible;
    } else if (name == "tokens") {
      field = Field::kTokens;
    } else if (name == "key_version") {
      field = Field::kKeyVersion;
    } else {
      return Fail(InvalidRequest("unknown field \"" + Printable(name) +
                                 "\" (expected \"vectors\", \"reversible\", \"key_version\" or "
                                 "\"tokens\")"));
    }
    const auto bit = 1u << static_cast<unsigned>(field);
    if ((seen_ & bit) != 0) return Fail(InvalidRequest("field \"" + name + "\" appears twice"));
    seen_ |= bit;
    field_ = field;
    state_ = State::kValue;
    return true;
  }
  bool end_object() {
    --depth_;
    state_ = State::kDone;
    return true;
  }
  bool start_array(size_t) {
    if (!Deeper()) return false;
    if (state_ == State::kValue && field_ == Field::kVectors) {
      state_ = State::kVectors;
      return true;
    }
    if (state_ == State::kVectors) {
      if (row_lengths_.size() == max_vectors_) return Fail(TooManyVectors(max_vectors_));
      row_lengths_.push_back(0);
      state_ = State::kRow;
      return true;
    }
    if (state_ == State::kValue && field_ == Field::kTokens) {
      request_.tokens.emplace();
      state_ = State::kTokens;
      return true;
    }
    return WrongType("an array");
  }
  bool end_array() {
    --depth_;
    if (state_ == State::kRow) {
      state_ = State::kVectors;
    } else {
      state_ = State::kObject;  // the end of "vectors" or "tokens"
    }
    return true;
  }
  bool parse_error(size_t position, const std::string&, const nlohmann::detail::exception&) {
    if (status_.ok()) {
      status_ = Status(Code::kInvalidArgument, "invalid_json",
                       "the request body is not valid JSON (syntax error at byte " +
                           std::to_string(position > 0 ? position - 1 : 0) + ")");
    }
    return false;
  }

  Result<JsonVectorRequest> Finish(bool parsed) && {
    if (!status_.ok()) return std::move(status_);
    if (!parsed || state_ != State::kDone) {
      return Status(Code::kInvalidArgument, "invalid_json", "the request body is not valid JSON");
    }
    if ((seen_ & (1u << static_cast<unsigned>(Field::kVectors))) == 0) {
      return InvalidRequest("the request needs a \"vectors\" field");
    }
    if (row_lengths_.empty()) return InvalidRequest("\"vectors\" holds no vectors");
    auto dimension = core::CommonDimension(row_lengths_);
    if (!dimension.ok()) return std::move(dimension).TakeStatus();
    request_.batch.dimension = *dimension;
    request_.batch.values = request_.batch.parsed;
    VECSEAL_RETURN_IF_ERROR(core::ValidateVectors(request_.batch.values, *dimension));
    return std::move(request_);
  }

 private:
  enum class State { kStart, kObject, kValue, kVectors, kRow, kTokens, kDone };
  enum class Field : unsigned { kVectors, kReversible, kTokens, kKeyVersion };

  // Checked before the shape, so that any body nested too deep gets the same answer.
  bool Deeper() {
    if (++depth_ <= kMaxVectorJsonDepth) return true;
    return Fail(TooDeep(kMaxVectorJsonDepth));
  }

  bool IsKeyVersion() const { return state_ == State::kValue && field_ == Field::kKeyVersion; }

  bool Number(float value) {
    if (state_ != State::kRow) return WrongType("a number");
    request_.batch.parsed.push_back(value);
    ++row_lengths_.back();
    return true;
  }

  bool WrongType(const char* what) {
    switch (state_) {
      case State::kValue:
        if (field_ == Field::kVectors) {
          return Fail(InvalidRequest(std::string("\"vectors\" must be an array of arrays of "
                                                 "numbers, not ") + what));
        }
        if (field_ == Field::kTokens) {
          return Fail(InvalidRequest(std::string("\"tokens\" must be an array of base64 "
                                                 "strings, not ") + what));
        }
        if (field_ == Field::kKeyVersion) {
          return Fail(InvalidRequest(std::string("\"key_version\" must be a key version (an "
                                                 "integer from 1), not ") + what));
        }
        return Fail(InvalidRequest(std::string("\"reversible\" must be true or false, not ") +
                                   what));
      case State::kVectors:
        return Fail(InvalidRequest("vector " + std::to_string(row_lengths_.size()) +
                                   " must be an array of numbers, not " + what)
                        .WithVectorIndex(row_lengths_.size()));
      case State::kRow:
        return Fail(InvalidRequest("vector " + std::to_string(row_lengths_.size() - 1) +
                                   " must hold only numbers, not " + what)
                        .WithVectorIndex(row_lengths_.size() - 1));
      case State::kTokens:
        return Fail(InvalidRequest(std::string("\"tokens\" must hold only strings, not ") + what));
      default:
        return Fail(InvalidRequest(std::string("the request body must be a JSON object, not ") +
                                   what));
    }
  }

  bool Fail(Status status) {
    status_ = std::move(status);
    return false;
  }

  // Field names are echoed in errors: keep them short and printable.
  static std::string Printable(const std::string& name) {
    std::string out;
    for (char c : name.substr(0, 32)) out += (c >= 0x20 && c < 0x7f && c != '"') ? c : '?';
    return out;
  }

  const size_t max_vectors_;
  size_t depth_ = 0;
  State state_ = State::kStart;
  Field field_ = Field::kVectors;
  unsigned seen_ = 0;
  std::vector<size_t> row_lengths_;
  JsonVectorRequest request_;
  Status status_;
};

}  // namespace

Status CheckJsonDepth(std::string_view body, size_t max_depth) {
  DepthSax sax(max_depth);
  json::sax_parse(body.begin(), body.end(), &sax);
  return sax.too_deep() ? TooDeep(max_depth) : Status::Ok();
}

Result<JsonVectorRequest> ParseJsonVectorRequest(std::string_view body, size_t max_vectors) {
  VectorRequestSax sax(max_vectors);
  const bool parsed = json::sax_parse(body.begin(), body.end(), &sax);
  return std::move(sax).Finish(parsed);
}

Result<size_t> ParseDimensionHeader(std::string_view value, bool present) {
  if (!present) {
    return Status(Code::kInvalidArgument, "invalid_dimension",
                  "a binary request needs the Vecseal-Dimension header");
  }
  size_t dimension = 0;
  const auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), dimension);
  if (value.empty() || error != std::errc() || end != value.data() + value.size() ||
      dimension == 0 || dimension > core::kMaxDimension) {
    return Status(Code::kInvalidArgument, "invalid_dimension",
                  "Vecseal-Dimension must be a decimal integer between 1 and " +
                      std::to_string(core::kMaxDimension));
  }
  return dimension;
}

Result<VectorBatch> ParseBinaryVectors(ByteBuffer body, size_t dimension, size_t max_vectors,
                                       std::vector<core::Token>* tokens) {
  const size_t row_bytes = dimension * sizeof(float) + (tokens != nullptr ? core::kTokenSize : 0);
  if (body.empty() || body.size() % row_bytes != 0) {
    return Status(Code::kInvalidArgument, "invalid_length",
                  "the body length " + std::to_string(body.size()) +
                      " is not a positive multiple of " + std::to_string(row_bytes) +
                      (tokens != nullptr ? " (4·dimension + 41 token bytes per vector)"
                                         : " (4·dimension bytes per vector)"));
  }
  const size_t count = body.size() / row_bytes;
  if (count > max_vectors) return TooManyVectors(max_vectors);
  VectorBatch batch;
  batch.dimension = dimension;
  // ByteBuffer storage is 64-byte aligned, so the floats can be used where they lie.
  batch.values = std::span<float>(reinterpret_cast<float*>(body.data()), count * dimension);
  wire::ConvertLittleEndian(batch.values);
  if (tokens != nullptr) {
    tokens->resize(count);
    const std::byte* token_bytes = body.data() + sizeof(float) * batch.values.size();
    for (size_t i = 0; i < count; ++i) {
      std::memcpy((*tokens)[i].data(), token_bytes + i * core::kTokenSize, core::kTokenSize);
    }
  }
  batch.body = std::move(body);
  // Finiteness is left to the cipher, which checks its input anyway and names the vector.
  return batch;
}

ByteBuffer TakeBinaryVectors(VectorBatch& batch) {
  assert(!batch.body.empty() && "a batch parsed from a binary body");
  wire::ConvertLittleEndian(batch.values);
  batch.body.Truncate(batch.values.size() * sizeof(float));
  batch.values = {};
  return std::move(batch.body);
}

Result<std::vector<core::Token>> DecodeTokens(std::span<const std::string> texts) {
  std::vector<core::Token> tokens(texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    auto token = wire::DecodeToken(texts[i]);
    if (!token) {
      return Status(Code::kInvalidArgument, "invalid_token",
                    "token " + std::to_string(i) + " is not base64 of " +
                        std::to_string(core::kTokenSize) + " bytes")
          .WithVectorIndex(i);
    }
    tokens[i] = *token;
  }
  return tokens;
}

}  // namespace vecseal::daemon
