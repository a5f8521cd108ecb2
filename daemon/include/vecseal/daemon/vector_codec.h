// Request bodies as the daemon reads them: JSON parsed with a SAX handler, little-endian float32
// binary bodies taken over in place, and base64 tokens. The encodings themselves are wire/'s.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vecseal/core/cipher.h"
#include "vecseal/core/status.h"
#include "vecseal/daemon/http_body.h"
#include "vecseal/wire/base64.h"
#include "vecseal/wire/json_floats.h"

namespace vecseal::daemon {

// n vectors of `dimension` floats, row-major, in place in whichever of the two owners holds
// them: the floats parsed from JSON, or the binary request body itself (so that a 3 MB batch is
// encrypted where it was read and written back from there). Move-only: `values` points into
// the owners' heap storage, which a move keeps.
struct VectorBatch {
  VectorBatch() = default;
  VectorBatch(VectorBatch&&) = default;
  VectorBatch& operator=(VectorBatch&&) = default;
  VectorBatch(const VectorBatch&) = delete;
  VectorBatch& operator=(const VectorBatch&) = delete;

  std::span<float> values;
  size_t dimension = 0;
  std::vector<float> parsed;
  ByteBuffer body;  // vectors first, then (decrypt) tokens

  size_t count() const { return dimension == 0 ? 0 : values.size() / dimension; }
};

// JSON nesting depth allowed in request bodies. An encrypt or decrypt body needs exactly 3
// (object, "vectors", a row); a key creation body needs 1, and 16 leaves room for fields to
// come. Anything deeper is refused as json_too_deep while it is scanned, so that no parse ever
// holds a stack or tree for it.
inline constexpr size_t kMaxVectorJsonDepth = 3;
inline constexpr size_t kMaxKeyJsonDepth = 16;

// json_too_deep (400) when `body` nests arrays and objects deeper than `max_depth`; a streaming
// scan that stops at the first level too deep. Syntax errors are left to the real parse.
Status CheckJsonDepth(std::string_view body, size_t max_depth);

// The body of an encrypt or decrypt request in JSON. Fields absent from the body stay empty.
struct JsonVectorRequest {
  VectorBatch batch;
  std::optional<bool> reversible;
  std::optional<uint32_t> key_version;  // encrypt under this version rather than the newest
  std::optional<std::vector<std::string>> tokens;  // base64 text, decoded by DecodeTokens
};

// Errors: invalid_json (syntax, with the byte offset), json_too_deep (nesting beyond
// kMaxVectorJsonDepth), invalid_request (wrong shape, unknown or
// duplicate field, no vectors), too_many_vectors (more than max_vectors rows, kResourceExhausted),
// core's ragged-row and dimension reasons, non_finite_value (a number outside float32's range)
// with its vector_index.
Result<JsonVectorRequest> ParseJsonVectorRequest(std::string_view body, size_t max_vectors);

// A binary body: n×d little-endian float32 (then, for decrypt, n tokens of 41 bytes when
// `tokens` is non-null), taken over by the batch and converted in place on a big-endian host.
// Errors: invalid_length, too_many_vectors. Values are not checked here: the cipher refuses
// non-finite ones (non_finite_value with the vector's index) before using any.
Result<VectorBatch> ParseBinaryVectors(ByteBuffer body, size_t dimension, size_t max_vectors,
                                       std::vector<core::Token>* tokens);

// The batch's body cut to its vectors, in wire order (little-endian), for a binary response
// written without a copy. Requires a batch from ParseBinaryVectors.
ByteBuffer TakeBinaryVectors(VectorBatch& batch);

// The Vecseal-Dimension header's value; invalid_dimension when missing or not a decimal in
// [1, core::kMaxDimension].
Result<size_t> ParseDimensionHeader(std::string_view value, bool present);

// The wire's encodings, named here too for the daemon's routes, its tests and the token fuzzer.
using wire::AppendFloat;
using wire::AppendVectorsJson;
using wire::Base64Decode;
using wire::Base64Encode;

// Every token must be base64 of exactly core::kTokenSize bytes: invalid_token with its
// vector_index otherwise.
Result<std::vector<core::Token>> DecodeTokens(std::span<const std::string> texts);

}  // namespace vecseal::daemon
