// Two implementations agree: the independent Python reference (tools/reference) checks a
// random case produced here, and regenerates the known answers printed in docs/format.md.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.h"
#include "vecseal/core/cipher.h"

namespace vecseal::core {
namespace {

using testing::FixedNonces;
using testing::ToHex;

constexpr const char* kPython = "/usr/bin/python3";

// Runs a command, returning its exit status and capturing stdout+stderr.
int RunCommand(const std::string& command, std::string& output) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

class ReferenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string output;
    if (access(kPython, X_OK) != 0 ||
        RunCommand(std::string(kPython) + " -c 'import numpy'", output) != 0) {
      GTEST_SKIP() << kPython << " with numpy is needed to run the Python reference: " << output;
    }
  }
};

// The "m", "c_f32_hex" and "tokens" members of a case dump for the reference's `check`.
std::string CaseVectors(const std::vector<float>& m, const std::vector<float>& c,
                        const std::vector<Token>& tokens, size_t d) {
  std::ostringstream json;
  json << "\"m\": [";
  for (size_t k = 0; k < tokens.size(); ++k) {
    json << (k ? ", [" : "[");
    for (size_t i = 0; i < d; ++i) {
      char text[32];
      std::snprintf(text, sizeof(text), "%.9g", double{m[k * d + i]});
      json << (i ? ", " : "") << text;
    }
    json << "]";
  }
  json << "], \"c_f32_hex\": [";
  for (size_t k = 0; k < tokens.size(); ++k) {
    const auto* bytes = reinterpret_cast<const uint8_t*>(&c[k * d]);
    json << (k ? ", " : "") << '"' << ToHex({bytes, d * sizeof(float)}) << '"';
  }
  json << "], \"tokens\": [";
  for (size_t k = 0; k < tokens.size(); ++k) json << (k ? ", " : "") << '"' << ToHex(tokens[k]) << '"';
  json << "]";
  return json.str();
}

TEST_F(ReferenceTest, AgreesOnARandomCaseInBothTransforms) {
  constexpr size_t kD = 64, kN = 16;
  constexpr uint32_t kGroup = 4;
  std::mt19937 rng(64);
  std::vector<uint8_t> key(32);
  for (auto& b : key) b = static_cast<uint8_t>(rng());
  std::normal_distribution<float> normal;
  std::vector<float> m(kD * kN);
  for (float& v : m) v = normal(rng);
  for (TransformKind transform : {TransformKind::kPermute, TransformKind::kRotate}) {
    std::vector<Nonce> nonces(kN / kGroup);
    for (auto& nonce : nonces) {
      for (auto& b : nonce) b = static_cast<uint8_t>(rng());
    }
    auto cipher = testing::MakeCipher(transform, 2.0, key);
    FixedNonces source(nonces);
    std::vector<float> c(m.size());
    std::vector<Token> tokens(kN);
    ASSERT_TRUE(cipher->Encrypt(m, c, kD, EncryptOptions{true, kGroup, &source}, tokens).ok());

    const std::string path = ::testing::TempDir() + "/vecseal_reference_" +
                             std::string(TransformName(transform)) + "_" +
                             std::to_string(getpid()) + ".json";
    {
      std::ofstream json(path);
      json << "{\"key\": \"" << ToHex(key) << "\", \"transform\": \"" << TransformName(transform)
           << "\", \"beta\": 2.0, \"key_version\": 1, \"dimension\": " << kD
           << ", \"group_size\": " << kGroup << ", \"nonces\": [";
      for (size_t g = 0; g < nonces.size(); ++g)
        json << (g ? ", " : "") << '"' << ToHex(nonces[g]) << '"';
      json << "], " << CaseVectors(m, c, tokens, kD) << "}\n";
    }
    std::string output;
    const int rc =
        RunCommand(std::string(kPython) + " " VECSEAL_REFERENCE_SCRIPT " check " + path, output);
    EXPECT_EQ(rc, 0) << output;
    std::printf("%s: %s", std::string(TransformName(transform)).c_str(), output.c_str());
    std::remove(path.c_str());
  }
}

TEST_F(ReferenceTest, FormatDocumentListsTheReferenceKnownAnswers) {
  std::string output;
  EXPECT_EQ(RunCommand(std::string(kPython) + " " VECSEAL_REFERENCE_SCRIPT
                                              " check-docs " VECSEAL_FORMAT_DOC,
                       output),
            0)
      << output;
}

// Where `generated` and `stored` first differ, or "" when they agree. Decimal numbers may differ
// by a few units in the last place: the reference's QR runs through the machine's LAPACK, whose
// kernels round differently on different CPUs. Hex strings (seeds, ciphertext bits, tokens) and
// integers must match exactly.
std::string FirstDifference(const std::string& generated, const std::string& stored) {
  size_t i = 0, j = 0;
  const auto starts_number = [](const std::string& s, size_t k) {
    const bool word_start = k == 0 || (!std::isalnum(static_cast<unsigned char>(s[k - 1])) &&
                                       s[k - 1] != '"');
    const size_t digit = s[k] == '-' ? k + 1 : k;
    return word_start && digit < s.size() && std::isdigit(static_cast<unsigned char>(s[digit]));
  };
  while (i < generated.size() && j < stored.size()) {
    if (starts_number(generated, i) && starts_number(stored, j)) {
      char* generated_end = nullptr;
      char* stored_end = nullptr;
      const double a = std::strtod(generated.c_str() + i, &generated_end);
      const double b = std::strtod(stored.c_str() + j, &stored_end);
      const std::string a_text(generated, i, static_cast<size_t>(generated_end - generated.c_str()) - i);
      const std::string b_text(stored, j, static_cast<size_t>(stored_end - stored.c_str()) - j);
      const bool decimal = a_text.find_first_of(".e") != std::string::npos;
      const bool equal = decimal ? std::fabs(a - b) <= 1e-13 * std::max(1.0, std::fabs(a))
                                 : a_text == b_text;
      if (!equal) return "at offset " + std::to_string(i) + ": " + a_text + " vs " + b_text;
      i = static_cast<size_t>(generated_end - generated.c_str());
      j = static_cast<size_t>(stored_end - stored.c_str());
      continue;
    }
    if (generated[i] != stored[j]) {
      return "at offset " + std::to_string(i) + ": " + generated.substr(i, 40) + " vs " +
             stored.substr(j, 40);
    }
    ++i;
    ++j;
  }
  if (i != generated.size() || j != stored.size()) return "one ends before the other";
  return "";
}

std::string ReadFile(const char* path) {
  std::string text;
  if (FILE* file = std::fopen(path, "r")) {
    char buffer[4096];
    while (size_t n = std::fread(buffer, 1, sizeof(buffer), file)) text.append(buffer, n);
    std::fclose(file);
  }
  return text;
}

TEST_F(ReferenceTest, KnownAnswerTableIsTheReferenceOutput) {
  std::string generated;
  ASSERT_EQ(RunCommand(std::string(kPython) + " " VECSEAL_REFERENCE_SCRIPT " cpp", generated), 0)
      << generated;
  EXPECT_EQ(FirstDifference(generated, ReadFile(VECSEAL_KAT_TABLE)), "")
      << "regenerate tests/core/kat_vectors.inc with `sap_reference.py cpp`";
  std::string generated_v2;
  ASSERT_EQ(
      RunCommand(std::string(kPython) + " " VECSEAL_REFERENCE_SCRIPT " cpp-v2", generated_v2), 0)
      << generated_v2;
  EXPECT_EQ(FirstDifference(generated_v2, ReadFile(VECSEAL_KAT_TABLE_V2)), "")
      << "regenerate tests/core/kat_vectors_v2.inc with `sap_reference.py cpp-v2`";
}

// Format v2: a random batch encrypted by the C++ library, one nonce per vector, checked by the
// reference (ciphertexts to 1e-5, tokens bit for bit, its decryption of our ciphertexts).
TEST_F(ReferenceTest, AgreesOnARandomFormatV2CaseInBothTransforms) {
  constexpr size_t kD = 64, kN = 16;
  std::mt19937 rng(2);
  std::vector<uint8_t> key(32);
  for (auto& b : key) b = static_cast<uint8_t>(rng());
  std::normal_distribution<float> normal;
  std::vector<float> m(kD * kN);
  for (float& v : m) v = normal(rng);
  for (TransformKind transform : {TransformKind::kPermute, TransformKind::kRotate}) {
    std::vector<Nonce> nonces(kN);
    for (auto& nonce : nonces) {
      for (size_t i = 0; i < kNonceSizeV2; ++i) nonce[i] = static_cast<uint8_t>(rng());
    }
    auto deriver = SoftwareDeriver::Create(key, KeyFormat::kV2);
    ASSERT_TRUE(deriver.ok());
    auto cipher = Cipher::Create(std::move(deriver).value(), SchemeParams{2.0, transform, 1});
    ASSERT_TRUE(cipher.ok());
    FixedNonces source(nonces);
    std::vector<float> c(m.size());
    std::vector<Token> tokens(kN);
    ASSERT_TRUE((*cipher)->Encrypt(m, c, kD, EncryptOptions{true, 1, &source}, tokens).ok());

    const std::string path = ::testing::TempDir() + "/vecseal_reference_v2_" +
                             std::string(TransformName(transform)) + "_" +
                             std::to_string(getpid()) + ".json";
    {
      std::ofstream json(path);
      json << "{\"format\": 2, \"key\": \"" << ToHex(key) << "\", \"transform\": \""
           << TransformName(transform) << "\", \"beta\": 2.0, \"key_version\": 1, "
           << "\"dimension\": " << kD << ", \"nonces\": [";
      for (size_t k = 0; k < kN; ++k) {
        json << (k ? ", " : "") << '"' << ToHex({nonces[k].data(), kNonceSizeV2}) << '"';
      }
      json << "], " << CaseVectors(m, c, tokens, kD) << "}\n";
    }
    std::string output;
    const int rc =
        RunCommand(std::string(kPython) + " " VECSEAL_REFERENCE_SCRIPT " check " + path, output);
    EXPECT_EQ(rc, 0) << output;
    std::printf("v2 %s: %s", std::string(TransformName(transform)).c_str(), output.c_str());
    std::remove(path.c_str());
  }
}

}  // namespace
}  // namespace vecseal::core
