// The offline audit-log verifier (audit::Verify): log bytes -> verdict, under a fixed test public
// key (data/audit-test-pub.pem; its private half signs the seed logs and nothing else).
// Invariants: Verify always returns a report for a good key (an unreadable or hostile file is a
// finding, not a failure); a finding has a snake_case code and a message; the counts are
// consistent; and when a seal covers the file's first record, changing one byte of that record
// is always detected.
//
// With VECSEAL_FUZZ_WRITE_SEEDS=DIR set, start-up writes genuine logs (made by audit::Log with the
// test key) to DIR, to refresh corpus/audit_verify.
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "support/software_signer.h"
#include "vecseal/audit/log.h"
#include "vecseal/audit/verify.h"

namespace {

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  VECSEAL_FUZZ_CHECK(in.good(), "cannot read %s", path.c_str());
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

const std::string& PublicKeyPem() {
  static const std::string pem = ReadText(VECSEAL_FUZZ_DATA_DIR "/audit-test-pub.pem");
  return pem;
}

void CheckFinding(const vecseal::audit::Finding& finding) {
  VECSEAL_FUZZ_CHECK(!finding.code.empty() && !finding.message.empty(), "an empty finding");
  for (char c : finding.code) {
    VECSEAL_FUZZ_CHECK((c >= 'a' && c <= 'z') || c == '_', "code is not snake_case: %s",
                       finding.code.c_str());
  }
}

vecseal::audit::VerifyReport VerifyBytes(const std::string& name, const uint8_t* data,
                                         size_t size) {
  const std::vector<std::string> files = {vecseal::fuzz::WriteScratchFile(name, data, size)};
  auto report = vecseal::audit::Verify(files, PublicKeyPem());
  VECSEAL_FUZZ_CHECK(report.ok(), "Verify failed outright: %s",
                     report.status().ToString().c_str());
  if (report->error) CheckFinding(*report->error);
  for (const auto& warning : report->warnings) CheckFinding(warning);
  VECSEAL_FUZZ_CHECK(report->seals <= report->records, "%llu seals among %llu records",
                     static_cast<unsigned long long>(report->seals),
                     static_cast<unsigned long long>(report->records));
  if (report->ok() && report->records > 0) {
    VECSEAL_FUZZ_CHECK(report->first_seq <= report->last_seq, "first_seq > last_seq");
    VECSEAL_FUZZ_CHECK(report->last_sealed_seq <= report->last_seq, "sealed beyond the end");
  }
  return std::move(report).value();
}

void WriteSeeds(const std::string& dir) {
  const std::string pem = ReadText(VECSEAL_FUZZ_DATA_DIR "/audit-test-key.pem");
  auto signer = vecseal::audit::testing::SoftwareSigner::FromPrivatePem(pem);
  VECSEAL_FUZZ_CHECK(signer != nullptr, "cannot load the test key");
  const std::string log_dir = vecseal::fuzz::ScratchDir() + "/seed-log";
  mkdir(log_dir.c_str(), 0700);
  vecseal::audit::LogOptions options;
  options.dir = log_dir;
  options.seal_every_records = 4;
  options.warn_free_bytes = 0;
  options.refuse_free_bytes = 0;
  options.reserve_bytes = 0;
  auto log = vecseal::audit::Log::Open(options, signer);
  VECSEAL_FUZZ_CHECK(log.ok(), "Log::Open: %s", log.status().ToString().c_str());
  vecseal::audit::Event start;
  start.event = "start";
  start.operation = "start";
  VECSEAL_FUZZ_CHECK((*log)->Append(start).ok(), "append start");
  for (int i = 0; i < 6; ++i) {
    vecseal::audit::Event event;
    event.event = i == 3 ? "deny" : "encrypt";
    event.request_id = "r" + std::to_string(i);
    event.caller = vecseal::audit::Caller{.pid = 100 + i, .uid = 998, .user = "scorer",
                                          .gid = 998, .exe = "/usr/bin/python3",
                                          .exe_sha256 = std::string(64, 'a'),
                                          .unit = "ticket-scorer.service", .script = {},
                                          .exe_sha256_unknown = {}};
    event.key = "demo";
    event.key_version = 1;
    event.operation = "encrypt";
    event.vectors = 2;
    event.dimension = 768;
    event.reversible = i % 2 == 0;
    event.decision = i == 3 ? "denied" : "granted";
    event.rule_id = i == 3 ? "" : "ticket-scorer";
    if (i == 3) event.error_code = "permission_denied";
    VECSEAL_FUZZ_CHECK((*log)->Append(event).ok(), "append %d", i);
  }
  const std::string file = (*log)->current_file();
  VECSEAL_FUZZ_CHECK((*log)->Close().ok(), "close");
  const std::string text = ReadText(file);
  std::ofstream(dir + "/sealed_log", std::ios::binary) << text;
  // The same log cut in the middle of its last line, as a crash leaves it.
  std::ofstream(dir + "/torn_tail", std::ios::binary) << text.substr(0, text.size() - 40);
  // Only the records before the first seal: an unsealed tail.
  size_t cut = 0;
  for (int lines = 0; lines < 3; ++lines) cut = text.find('\n', cut) + 1;
  std::ofstream(dir + "/unsealed", std::ios::binary) << text.substr(0, cut);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)PublicKeyPem();
  if (const char* dir = std::getenv("VECSEAL_FUZZ_WRITE_SEEDS")) WriteSeeds(dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The verifier reads names of the form audit-<seq>-<id>.jsonl; any name is accepted for a file
  // given explicitly, but use the real shape so that name checks are exercised too.
  const char* kName = "audit-00000000000000000001-00000000.jsonl";
  const auto report = VerifyBytes(kName, data, size);
  static const bool verbose = std::getenv("VECSEAL_FUZZ_VERBOSE") != nullptr;
  if (verbose) {
    std::fprintf(stderr, "verdict %s, records %llu, seals %llu, sealed up to %llu\n",
                 report.ok() ? "ok" : report.error->code.c_str(),
                 static_cast<unsigned long long>(report.records),
                 static_cast<unsigned long long>(report.seals),
                 static_cast<unsigned long long>(report.last_sealed_seq));
  }
  if (!report.ok() || report.seals == 0 || report.last_sealed_seq <= report.first_seq) return 0;

  // The first record is under a valid seal: changing any byte of it must be detected.
  const std::string text(reinterpret_cast<const char*>(data), size);
  const size_t first_line_end = text.find('\n');
  if (first_line_end == std::string::npos || first_line_end == 0) return 0;
  std::string tampered = text;
  tampered[first_line_end / 2] = static_cast<char>(tampered[first_line_end / 2] ^ 0x01);
  const auto after = VerifyBytes(kName, reinterpret_cast<const uint8_t*>(tampered.data()),
                                 tampered.size());
  VECSEAL_FUZZ_CHECK(!after.ok(), "a change to sealed record 1 went undetected");
  return 0;
}
