// Every kind of tampering the issue lists, each detected at the exact seq (and line).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/sha.h>

#include <filesystem>
#include <functional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "audit_command.h"
#include "support/audit_test_util.h"
#include "support/software_signer.h"
#include "vecseal/audit/log.h"
#include "vecseal/audit/verify.h"

namespace vecseal::audit {
namespace {

using testing::LogFiles;
using testing::ReadLines;
using testing::SampleEvent;
using testing::SoftwareSigner;
using testing::TempDir;
using testing::WriteLines;
using ::testing::HasSubstr;
using Json = nlohmann::ordered_json;

std::string Sha256Hex(const std::string& text) {
  unsigned char digest[32];
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : digest) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 0xF]);
  }
  return out;
}

uint64_t SeqOf(const std::string& line) { return Json::parse(line)["seq"].get<uint64_t>(); }
std::string EventOf(const std::string& line) { return Json::parse(line)["event"].get<std::string>(); }

// A log of several rotated files with seals every 5 records, as a list of files of lines.
class TamperTest : public ::testing::Test {
 protected:
  void SetUp() override {
    signer_ = SoftwareSigner::Generate();
    WriteLog(5);
    // The victim: a request record in the middle file, followed by another request record.
    for (k_ = 3; k_ + 2 < lines_[1].size(); ++k_) {
      if (EventOf(lines_[1][k_]) != "seal" && EventOf(lines_[1][k_ + 1]) != "seal") break;
    }
    ASSERT_LT(k_ + 2, lines_[1].size());
  }

  // `vecseal audit verify ARGS... FILES`: its exit code, and its output in `out`.
  int RunVerify(std::vector<std::string> args, std::string* out) {
    const std::string key = dir_.path() + "/audit-key.pem";
    testing::WriteFileText(key, *signer_->PublicKeyPem());
    args.insert(args.begin(), {"verify", "--pubkey", key});
    args.insert(args.end(), files_.begin(), files_.end());
    std::ostringstream text;
    const int code = RunAuditCommand(args, text, text);
    *out = text.str();
    return code;
  }

  void Save() {
    for (size_t f = 0; f < files_.size(); ++f) WriteLines(files_[f], lines_[f]);
  }

  VerifyReport VerifyAll(std::vector<std::string> files = {}, LogEnd end = LogEnd::kStopped) {
    if (files.empty()) files = files_;
    Result<VerifyReport> report = Verify(files, *signer_->PublicKeyPem(), {}, end);
    EXPECT_TRUE(report.ok());
    return std::move(report).value();
  }

  // What an attacker without the key can do best: recompute every hash after a change.
  void Rechain(size_t file, size_t line) {
    std::string previous = line == 0 ? lines_[file - 1].back() : lines_[file][line - 1];
    for (size_t f = file; f < lines_.size(); ++f) {
      for (size_t i = f == file ? line : 0; i < lines_[f].size(); ++i) {
        Json record = Json::parse(lines_[f][i]);
        record["prev"] = Sha256Hex(previous);
        if (record["event"] == "seal") record["head"] = record["prev"];
        lines_[f][i] = record.dump();
        previous = lines_[f][i];
      }
    }
  }

  std::string Name(size_t f) const { return files_[f]; }

  // The log of the tests, in place of any before it: rotated at 8 KiB, with a count seal every
  // `seal_every_records`. A file rotated right after a count seal ends with that seal rather
  // than with a rotation seal.
  void WriteLog(uint64_t seal_every_records) {
    for (const std::string& file : LogFiles(dir_.path())) std::filesystem::remove(file);
    LogOptions options = testing::TestOptions(dir_.path());
    options.rotate_bytes = 8192;
    options.seal_every_records = seal_every_records;
    auto log = Log::Open(options, signer_);
    ASSERT_TRUE(log.ok());
    for (int i = 0; i < 70; ++i) ASSERT_TRUE((*log)->Append(SampleEvent(i)).ok());
    ASSERT_TRUE((*log)->Close().ok());
    files_ = LogFiles(dir_.path());
    ASSERT_GE(files_.size(), 4u);
    lines_.clear();
    for (const auto& file : files_) lines_.push_back(ReadLines(file));
  }

  // What deleting the newest file leaves when the file before it ended by rotating: a seal whose
  // reason is `rotation` at the end of the log.
  void DropLastFileAfterARotationSeal() {
    WriteLog(1000);
    files_.pop_back();
    lines_.pop_back();
    ASSERT_EQ(Json::parse(lines_.back().back())["reason"], "rotation");
  }

  TempDir dir_;
  std::shared_ptr<SoftwareSigner> signer_;
  std::vector<std::string> files_;
  std::vector<std::vector<std::string>> lines_;
  size_t k_ = 0;
};

TEST_F(TamperTest, UntouchedLogVerifiesWithNoWarnings) {
  const VerifyReport report = VerifyAll();
  ASSERT_TRUE(report.ok()) << report.error->message;
  EXPECT_TRUE(report.warnings.empty());
  EXPECT_EQ(report.files, files_.size());
  EXPECT_EQ(report.last_seq, SeqOf(lines_.back().back()));
  const std::vector<std::string>& last = lines_.back();
  EXPECT_EQ(EventOf(last[last.size() - 2]), "stop") << "Close writes the stop record it seals";
  EXPECT_EQ(Json::parse(last.back())["reason"], "close");
}

TEST_F(TamperTest, FlippedByteInAFieldIsAnAlteredRecord) {
  const uint64_t seq = SeqOf(lines_[1][k_]);
  std::string& line = lines_[1][k_];
  line[line.find("\"req-") + 2] ^= 0x04;  // "req-" -> "raq-": still valid JSON
  Save();
  const VerifyReport report = VerifyAll();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "altered_record");
  EXPECT_EQ(report.error->seq, seq);
  EXPECT_EQ(report.error->file, Name(1));
  EXPECT_EQ(report.error->line, k_ + 1);
  EXPECT_EQ(report.error->message, "record seq " + std::to_string(seq) +
                                       " was altered: its hash does not match the prev of seq " +
                                       std::to_string(seq + 1));
}

TEST_F(TamperTest, FlippedByteInPrevIsAnAlteredRecord) {
  const uint64_t seq = SeqOf(lines_[1][k_]);
  std::string& line = lines_[1][k_];
  char& c = line[line.find("\"prev\":\"") + 10];
  c = c == 'a' ? 'b' : 'a';
  Save();
  const VerifyReport report = VerifyAll();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "altered_record");
  EXPECT_EQ(report.error->seq, seq);
  EXPECT_EQ(report.error->line, k_ + 1);
}

TEST_F(TamperTest, FlippedByteThatBreaksTheJsonIsAMalformedRecord) {
  const uint64_t seq = SeqOf(lines_[1][k_]);
  lines_[1][k_][0] ^= 0x01;  // '{' -> 'z'
  Save();
  const VerifyReport report = VerifyAll();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "malformed_record");
  EXPECT_EQ(report.error->seq, seq);
  EXPECT_EQ(report.error->line, k_ + 1);
}

TEST_F(TamperTest, HugeOrDeeplyNestedLinesAreMalformedRecords) {
  const uint64_t seq = SeqOf(lines_[1][k_]);
  for (const std::string& hostile : {std::string(200000, '['), std::string(1 << 20, 'x')}) {
    auto lines = lines_[1];
    lines[k_] = hostile;
    WriteLines(files_[1], lines);
    const VerifyReport report = VerifyAll();
    ASSERT_FALSE(report.ok());
    EXPECT_EQ(report.error->code, "malformed_record");
    EXPECT_EQ(report.error->seq, seq);
  }
}

TEST_F(TamperTest, DeletedLineIsAMissingRecord) {
  const uint64_t seq = SeqOf(lines_[1][k_]);
  lines_[1].erase(lines_[1].begin() + static_cast<long>(k_));
  Save();
  const VerifyReport report = VerifyAll();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "missing_records");
  EXPECT_EQ(report.error->seq, seq);
  EXPECT_EQ(report.error->line, k_ + 1);
  EXPECT_EQ(report.error->message, "record seq " + std::to_string(seq) +
                                       " is missing (deleted): found seq " +
                                       std::to_string(seq + 1) + " where " +
                                       std::to_string(seq) + " was expected");
}

TEST_F(TamperTest, SwappedLinesAreOutOfOrder) {
  const uint64_t seq = SeqOf(lines_[1][k_]);
  std::swap(lines_[1][k_], lines_[1][k_ + 1]);
  Save();
  const VerifyReport report = VerifyAll();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "out_of_order");
  EXPECT_EQ(report.error->seq, seq);
  EXPECT_EQ(report.error->line, k_ + 1);
}

TEST_F(TamperTest, ForgedLineWithAConsistentHashIsAnInsertedRecord) {
  Json forged = Json::parse(lines_[1][k_]);
  const uint64_t seq = forged["seq"].get<uint64_t>() + 1;
  forged["seq"] = seq;
  forged["prev"] = Sha256Hex(lines_[1][k_]);
  forged["request_id"] = "forged";
  lines_[1].insert(lines_[1].begin() + static_cast<long>(k_ + 1), forged.dump());
  Save();
  const VerifyReport report = VerifyAll();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "inserted_record");
  EXPECT_EQ(report.error->seq, seq);
  EXPECT_EQ(report.error->line, k_ + 2) << "the forged line, not the genuine one after it";
}

TEST_F(TamperTest, ReplayedLineIsAnInsertedRecord) {
  const uint64_t seq = SeqOf(lines_[1][k_ - 2]);
  lines_[1].insert(lines_[1].begin() + static_cast<long>(k_ + 1), lines_[1][k_ - 2]);
  Save();
  const VerifyReport report = VerifyAll();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "inserted_record");
  EXPECT_EQ(report.error->seq, seq);
  EXPECT_EQ(report.error->line, k_ + 2);
}

TEST_F(TamperTest, TruncatedMiddleFileIsMissingRecords) {
  const uint64_t seq = SeqOf(lines_[1][k_]);
  std::string text;
  for (size_t i = 0; i < k_; ++i) text += lines_[1][i] + "\n";
  text += lines_[1][k_].substr(0, 40);  // cut inside record seq
  Save();
  testing::WriteFileText(files_[1], text);
  const VerifyReport report = VerifyAll();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "missing_records");
  EXPECT_EQ(report.error->seq, seq);
  EXPECT_EQ(report.error->file, Name(1));
  EXPECT_EQ(report.error->line, k_ + 1);
  EXPECT_THAT(report.error->message, HasSubstr("was truncated or deleted"));
}

TEST_F(TamperTest, DroppedMiddleFileIsAMissingFile) {
  const uint64_t seq = SeqOf(lines_[1][0]);
  const VerifyReport report = VerifyAll({files_[0], files_[2], files_[3]});
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "missing_file");
  EXPECT_EQ(report.error->seq, seq);
  EXPECT_EQ(report.error->file, Name(2));
  EXPECT_EQ(report.error->line, 1u);
  EXPECT_THAT(report.error->message,
              HasSubstr("continues \"" + std::filesystem::path(files_[1]).filename().string() +
                        "\", which was not given"));
}

TEST_F(TamperTest, AlteredSignatureIsABadSignature) {
  size_t seal = 0;
  while (EventOf(lines_[1][seal]) != "seal") ++seal;
  Json record = Json::parse(lines_[1][seal]);
  std::string sig = record["sig"];
  sig[10] = sig[10] == 'A' ? 'B' : 'A';
  record["sig"] = sig;
  lines_[1][seal] = record.dump();
  Rechain(1, seal + 1);
  Save();
  const VerifyReport report = VerifyAll();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "bad_signature");
  EXPECT_EQ(report.error->seq, record["seq"].get<uint64_t>());
  EXPECT_EQ(report.error->line, seal + 1);
}

TEST_F(TamperTest, RewrittenChainIsCaughtByTheNextSeal) {
  Json record = Json::parse(lines_[1][k_]);
  record["key"] = "someone-else";
  lines_[1][k_] = record.dump();
  Rechain(1, k_ + 1);
  Save();
  size_t seal = k_ + 1;
  while (EventOf(lines_[1][seal]) != "seal") ++seal;
  const VerifyReport report = VerifyAll();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "bad_signature");
  EXPECT_EQ(report.error->seq, SeqOf(lines_[1][seal]));
}

TEST_F(TamperTest, SealsFromAnotherKeyAreRejected) {
  auto other = SoftwareSigner::Generate();
  Result<VerifyReport> report = Verify(files_, *other->PublicKeyPem());
  ASSERT_TRUE(report.ok());
  ASSERT_FALSE(report->ok());
  EXPECT_EQ(report->error->code, "unknown_seal_key");
  size_t seal = 0;
  while (EventOf(lines_[0][seal]) != "seal") ++seal;
  EXPECT_EQ(report->error->seq, SeqOf(lines_[0][seal]));
}

TEST_F(TamperTest, AnchorsCatchATruncatedNewestFile) {
  // The final seal, as the daemon logged it when it was written.
  std::vector<std::string>& last = lines_.back();
  const size_t seal = last.size() - 1;
  ASSERT_EQ(EventOf(last[seal]), "seal");
  const Json record = Json::parse(last[seal]);
  const Anchor anchor{record["seq"].get<uint64_t>(), record["head"].get<std::string>()};
  const std::string pem = *signer_->PublicKeyPem();

  Result<VerifyReport> intact = Verify(files_, pem, std::vector<Anchor>{anchor});
  ASSERT_TRUE(intact.ok());
  EXPECT_TRUE(intact->ok());

  last.resize(seal);  // cut the newest file just before that seal: the chain alone is fine
  Save();
  EXPECT_TRUE(VerifyAll({}, LogEnd::kLive).ok());
  Result<VerifyReport> truncated =
      Verify(files_, pem, std::vector<Anchor>{anchor}, LogEnd::kLive);
  ASSERT_TRUE(truncated.ok());
  ASSERT_FALSE(truncated->ok());
  EXPECT_EQ(truncated->error->code, "missing_anchor");
  EXPECT_EQ(truncated->error->seq, anchor.seq);
  EXPECT_THAT(truncated->error->message, HasSubstr("the log was truncated"));

  Anchor wrong = anchor;
  wrong.seq = SeqOf(last[0]);  // in the files, but not that seal
  Result<VerifyReport> rewritten = Verify(files_, pem, std::vector<Anchor>{wrong});
  ASSERT_TRUE(rewritten.ok());
  ASSERT_FALSE(rewritten->ok());
  EXPECT_EQ(rewritten->error->code, "missing_anchor");
  EXPECT_THAT(rewritten->error->message, HasSubstr("the log was rewritten"));
}

// Row 8 of issue #17: each way of cutting, forging or extending the end of the log fails by
// default; --allow-unsealed-tail (LogEnd::kLive) reports it as a warning instead.

TEST_F(TamperTest, DeletedLastFileIsAMissingLastFile) {
  DropLastFileAfterARotationSeal();
  const VerifyReport report = VerifyAll();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "missing_last_file");
  EXPECT_EQ(report.error->seq, SeqOf(lines_.back().back()));
  EXPECT_EQ(report.error->file, files_.back());
  EXPECT_THAT(report.error->message, HasSubstr("was not given (deleted?)"));

  std::string out;
  EXPECT_EQ(RunVerify({}, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("FAILED: no seal vouches for the end of the audit log"));

  const VerifyReport live = VerifyAll({}, LogEnd::kLive);
  EXPECT_TRUE(live.ok());
  ASSERT_EQ(live.warnings.size(), 1u);
  EXPECT_EQ(live.warnings[0].code, "missing_last_file");
}

// The seal's reason is not signed: calling the rotation seal a close seal changes nothing.
TEST_F(TamperTest, DeletedLastFileWithItsRotationSealRelabelledIsAMissingStop) {
  DropLastFileAfterARotationSeal();
  Json seal = Json::parse(lines_.back().back());
  seal["reason"] = "close";
  lines_.back().back() = seal.dump();
  Save();
  const VerifyReport report = VerifyAll();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "missing_stop");
  EXPECT_EQ(report.error->seq, seal["seq"].get<uint64_t>());
}

// Also what a log cut after a seal that is not the final one looks like.
TEST_F(TamperTest, RecordsCutAfterASealAreAMissingStop) {
  files_.resize(2);
  lines_.resize(2);
  std::vector<std::string>& last = lines_.back();
  size_t seal = 1;
  while (EventOf(last[seal]) != "seal") ++seal;
  ASSERT_LT(seal + 1, last.size()) << "the middle file has records after its first seal";
  last.resize(seal + 1);
  Save();
  const VerifyReport report = VerifyAll();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "missing_stop");
  EXPECT_EQ(report.error->seq, SeqOf(last[seal]));
}

TEST_F(TamperTest, ForgedLogWithNoSealIsNoSeal) {
  // A consistent chain from seq 1 that no key signed: the first file up to its first seal.
  std::vector<std::string> forged;
  for (const std::string& line : lines_[0]) {
    if (EventOf(line) == "seal") break;
    forged.push_back(line);
  }
  ASSERT_GE(forged.size(), 2u);
  for (size_t f = 1; f < files_.size(); ++f) std::filesystem::remove(files_[f]);
  files_.resize(1);
  lines_ = {forged};
  Save();
  const VerifyReport report = VerifyAll();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "no_seal");
  EXPECT_EQ(report.seals, 0u);
  EXPECT_THAT(report.error->message, HasSubstr("nothing in the files is signed"));

  std::string out;
  EXPECT_EQ(RunVerify({}, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("error: " + files_[0] + ": no_seal: "));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("OK")));

  // Live, it is let through as a warning, and the summary says that nothing is signed.
  EXPECT_EQ(RunVerify({"--allow-unsealed-tail"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("warning: " + files_[0] + ": no_seal: "));
  EXPECT_THAT(out, HasSubstr("UNSIGNED: " + std::to_string(forged.size()) + " records"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("OK")));
}

TEST_F(TamperTest, RemovedFinalSealIsAnUnsealedEnd) {
  std::vector<std::string>& last = lines_.back();
  const uint64_t stop_seq = SeqOf(last[last.size() - 2]);
  last.pop_back();
  uint64_t sealed = 0;  // the seal before the final one, maybe in an earlier file
  for (const auto& file : lines_) {
    for (const auto& line : file) sealed = EventOf(line) == "seal" ? SeqOf(line) : sealed;
  }
  Save();
  const VerifyReport report = VerifyAll();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "unsealed_end");
  EXPECT_EQ(report.error->seq, stop_seq);
  EXPECT_EQ(report.error->line, last.size());
  EXPECT_EQ(report.unsealed_tail, stop_seq - sealed);
  EXPECT_THAT(report.error->message,
              ::testing::StartsWith(std::to_string(stop_seq - sealed) + " record"));
  EXPECT_THAT(report.error->message,
              HasSubstr("(seq " + std::to_string(sealed + 1) + ".." + std::to_string(stop_seq) +
                        ") follow the last seal, seq " + std::to_string(sealed)));
}

TEST_F(TamperTest, TruncatedMidRecordIsATornEnd) {
  std::string text;
  for (size_t i = 0; i + 1 < lines_.back().size(); ++i) text += lines_.back()[i] + "\n";
  text += lines_.back().back().substr(0, 40);  // cut inside the final seal
  testing::WriteFileText(files_.back(), text);
  const VerifyReport report = VerifyAll();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "torn_end");
  EXPECT_EQ(report.error->file, files_.back());
  EXPECT_EQ(report.error->line, lines_.back().size());
  EXPECT_TRUE(report.warnings.empty()) << "the error replaces the torn_line warning";

  std::string out;
  EXPECT_EQ(RunVerify({}, &out), 1) << out;
  EXPECT_EQ(RunVerify({"--allow-unsealed-tail"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("torn_line"));
  EXPECT_THAT(out, HasSubstr("unsealed_tail"));
}

TEST_F(TamperTest, EmptiedLastFileIsATornEnd) {
  testing::WriteFileText(files_.back(), "");
  const VerifyReport report = VerifyAll();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "torn_end");
  EXPECT_THAT(report.error->message, HasSubstr("holds no complete record"));
}

TEST_F(TamperTest, CorrectlyChainedRecordAfterTheLastSealIsAnUnsealedEnd) {
  // A forged stop record, even: the chain links, but no seal signs it.
  const std::string& last = lines_.back().back();
  Json forged = Json::parse(lines_.back()[lines_.back().size() - 2]);
  ASSERT_EQ(forged["event"], "stop");
  forged["seq"] = SeqOf(last) + 1;
  forged["prev"] = Sha256Hex(last);
  lines_.back().push_back(forged.dump());
  Save();
  const VerifyReport report = VerifyAll();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "unsealed_end");
  EXPECT_EQ(report.error->seq, SeqOf(last) + 1);
  EXPECT_EQ(report.last_sealed_seq, SeqOf(last));

  const VerifyReport live = VerifyAll({}, LogEnd::kLive);
  EXPECT_TRUE(live.ok());
  ASSERT_EQ(live.warnings.size(), 1u);
  EXPECT_EQ(live.warnings[0].code, "unsealed_tail");
  EXPECT_EQ(live.unsealed_tail, 1u);
}

TEST_F(TamperTest, TornLastLineIsOnlyAWarningForALiveLog) {
  const std::string& last = lines_.back().back();
  std::string text;
  for (const auto& line : lines_.back()) text += line + "\n";
  text += last.substr(0, 30);  // what a crash mid-write leaves
  testing::WriteFileText(files_.back(), text);
  EXPECT_EQ(VerifyAll().error->code, "torn_end");
  const VerifyReport report = VerifyAll({}, LogEnd::kLive);
  EXPECT_TRUE(report.ok());
  ASSERT_EQ(report.warnings.size(), 1u);
  EXPECT_EQ(report.warnings[0].code, "torn_line");
  EXPECT_EQ(report.warnings[0].line, lines_.back().size() + 1);
}

TEST_F(TamperTest, RecordsAfterTheLastSealAreAnUnsealedTailWarningForALiveLog) {
  lines_.back().pop_back();  // the final seal: as if the daemon were still running
  Save();
  const VerifyReport report = VerifyAll({}, LogEnd::kLive);
  EXPECT_TRUE(report.ok());
  ASSERT_EQ(report.warnings.size(), 1u);
  EXPECT_EQ(report.warnings[0].code, "unsealed_tail");
  EXPECT_EQ(report.unsealed_tail, report.last_seq - report.last_sealed_seq);
  EXPECT_GT(report.unsealed_tail, 0u);
  EXPECT_THAT(report.warnings[0].message,
              ::testing::StartsWith("unsealed tail: " + std::to_string(report.unsealed_tail) +
                                    " record"));
  std::string out;
  EXPECT_EQ(RunVerify({"--allow-unsealed-tail"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("OK: "));
  EXPECT_THAT(out, HasSubstr("1 warning\n"));
}

// The relaxation is for the end only: tampering before it fails as it would without it.
TEST_F(TamperTest, AllowUnsealedTailDoesNotHideTamperingBeforeTheEnd) {
  lines_.back().pop_back();
  std::string& line = lines_[1][k_];
  line[line.find("\"req-") + 2] ^= 0x04;
  Save();
  const VerifyReport report = VerifyAll({}, LogEnd::kLive);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error->code, "altered_record");
  EXPECT_EQ(report.error->seq, SeqOf(lines_[1][k_]));
  std::string out;
  EXPECT_EQ(RunVerify({"--allow-unsealed-tail"}, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("FAILED: the audit log was altered"));

  const VerifyReport dropped = VerifyAll({files_[0], files_[2], files_[3]}, LogEnd::kLive);
  ASSERT_FALSE(dropped.ok());
  EXPECT_EQ(dropped.error->code, "missing_file");
}

TEST(VerifyTest, RejectsAKeyThatIsNotP256) {
  const std::vector<std::string> none;
  Result<VerifyReport> report = Verify(none, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().reason(), "audit_bad_public_key");
}

}  // namespace
}  // namespace vecseal::audit
