// The client's vector file readers (client::OpenVectorReader), one target per format chosen at
// build time (VECSEAL_FUZZ_FORMAT: 0 .npy, 1 .fvecs, 2 .jsonl). Input: the file's bytes.
// Invariants: errors are typed; reading in chunks makes progress, returns whole rows and, where
// the format states the row count, exactly that many; ReadMatrix agrees with the chunked reader;
// what was read, written back in the same format and read again, is the same floats bit for bit.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "vecseal/client/formats.h"

namespace {

using vecseal::client::FormatOptions;
using vecseal::client::JsonlRecord;
using vecseal::client::VectorFormat;
using vecseal::client::VectorReader;

#if VECSEAL_FUZZ_FORMAT == 0
constexpr VectorFormat kFormat = VectorFormat::kNpy;
constexpr const char* kExtension = ".npy";
#elif VECSEAL_FUZZ_FORMAT == 1
constexpr VectorFormat kFormat = VectorFormat::kFvecs;
constexpr const char* kExtension = ".fvecs";
#else
constexpr VectorFormat kFormat = VectorFormat::kJsonl;
constexpr const char* kExtension = ".jsonl";
#endif

constexpr size_t kChunkRows = 3;

struct Contents {
  size_t dimension = 0;
  size_t rows = 0;
  std::vector<float> values;
  std::vector<JsonlRecord> records;
};

// Reads the whole file in chunks; nullopt (after checking the error) when the reader refuses it.
std::optional<Contents> ReadAll(const std::string& path, uint64_t file_size) {
  const FormatOptions options{.format = kFormat, .dimension = 0, .field = "embedding"};
  auto reader = vecseal::client::OpenVectorReader(path, options);
  if (!reader.ok()) {
    vecseal::fuzz::CheckTypedError(reader.status(), {});
    return std::nullopt;
  }
  VectorReader& r = **reader;
  VECSEAL_FUZZ_CHECK(r.format() == kFormat, "format changed");
  // Dimension 0 means "no row to tell": only a file without rows may say so.
  VECSEAL_FUZZ_CHECK(r.dimension() <= vecseal::client::kMaxFileDimension, "dimension %zu",
                     r.dimension());
  VECSEAL_FUZZ_CHECK(r.file_size() == file_size, "file_size %llu, not %llu",
                     static_cast<unsigned long long>(r.file_size()),
                     static_cast<unsigned long long>(file_size));
  Contents contents{.dimension = r.dimension(), .rows = 0, .values = {}, .records = {}};
  std::vector<float> chunk;
  // Each successful call returns at least one row or ends the file; a file of n bytes has at most
  // n rows, so this bound can only be hit by a reader that stopped making progress.
  for (size_t calls = 0;; ++calls) {
    VECSEAL_FUZZ_CHECK(calls <= file_size + 2, "no progress after %zu calls", calls);
    auto got = r.Next(kChunkRows, chunk);
    if (!got.ok()) {
      vecseal::fuzz::CheckTypedError(got.status(), {});
      return std::nullopt;
    }
    VECSEAL_FUZZ_CHECK(*got <= kChunkRows, "%zu rows for a chunk of %zu", *got, kChunkRows);
    VECSEAL_FUZZ_CHECK(chunk.size() == *got * contents.dimension, "%zu floats for %zu rows",
                       chunk.size(), *got);
    VECSEAL_FUZZ_CHECK(r.bytes_read() <= r.file_size(), "read past the end");
    if (kFormat == VectorFormat::kJsonl) {
      const auto records = r.records();
      VECSEAL_FUZZ_CHECK(records.size() == *got, "%zu records for %zu rows", records.size(),
                         *got);
      for (const JsonlRecord& record : records) {
        VECSEAL_FUZZ_CHECK(record.value_begin < record.value_end &&
                               record.value_end <= record.line.size(),
                           "vector span [%zu, %zu) in a line of %zu bytes", record.value_begin,
                           record.value_end, record.line.size());
        contents.records.push_back(record);
      }
    }
    VECSEAL_FUZZ_CHECK(*got == 0 || contents.dimension > 0, "%zu rows of dimension 0", *got);
    if (*got == 0) break;
    contents.rows += *got;
    contents.values.insert(contents.values.end(), chunk.begin(), chunk.end());
  }
  if (auto rows = r.rows()) {
    VECSEAL_FUZZ_CHECK(*rows == contents.rows, "header says %zu rows, read %zu", *rows,
                       contents.rows);
  }
  return contents;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path =
      vecseal::fuzz::WriteScratchFile(std::string("input") + kExtension, data, size);
  const auto contents = ReadAll(path, size);

  const FormatOptions options{.format = kFormat, .dimension = 0, .field = "embedding"};
  auto matrix = vecseal::client::ReadMatrix(path, options);
  VECSEAL_FUZZ_CHECK(matrix.ok() == contents.has_value(), "ReadMatrix verdict %d differs",
                     matrix.ok());
  if (!contents) return 0;
  VECSEAL_FUZZ_CHECK(matrix->rows == contents->rows && matrix->dimension == contents->dimension &&
                         SameBits(matrix->data, contents->values),
                     "ReadMatrix read other values than the chunked reader");
  if (contents->rows == 0) return 0;

  // Write back in the same format and read again.
  const std::string copy = vecseal::fuzz::ScratchDir() + "/copy" + kExtension;
  auto writer = vecseal::client::CreateVectorWriter(copy, contents->dimension, options);
  VECSEAL_FUZZ_CHECK(writer.ok(), "CreateVectorWriter: %s", writer.status().ToString().c_str());
  const vecseal::Status wrote = (*writer)->Write(contents->values, contents->records);
  VECSEAL_FUZZ_CHECK(wrote.ok(), "Write: %s", wrote.ToString().c_str());
  const vecseal::Status committed = (*writer)->Commit();
  VECSEAL_FUZZ_CHECK(committed.ok(), "Commit: %s", committed.ToString().c_str());
  struct stat st {};
  VECSEAL_FUZZ_CHECK(stat(copy.c_str(), &st) == 0, "no copy written");
  const auto reread = ReadAll(copy, static_cast<uint64_t>(st.st_size));
  VECSEAL_FUZZ_CHECK(reread.has_value(), "the written copy does not read back");
  VECSEAL_FUZZ_CHECK(reread->rows == contents->rows && reread->dimension == contents->dimension,
                     "copy has %zu×%zu, original %zu×%zu", reread->rows, reread->dimension,
                     contents->rows, contents->dimension);
  VECSEAL_FUZZ_CHECK(SameBits(reread->values, contents->values),
                     "values changed through write and read");
  return 0;
}
