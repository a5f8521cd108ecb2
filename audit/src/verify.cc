#include "vecseal/audit/verify.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <set>
#include <string_view>

#include <nlohmann/json.hpp>

#include "record.h"

namespace vecseal::audit {
namespace {

using internal::Digest;

struct Line {
  std::string text;  // without the newline
  uint64_t number = 0;
  bool parsed = false;
  nlohmann::json json;
  uint64_t seq = 0;
  std::string prev;
  std::string event;
};

bool IsHex(const nlohmann::json& value, size_t bytes) {
  if (!value.is_string()) return false;
  std::vector<uint8_t> out(bytes);
  return internal::ParseHex(value.get_ref<const std::string&>(), out);
}

Line ParseLine(std::string_view text, uint64_t number) {
  Line line;
  line.number = number;
  if (text.size() > 4 * internal::kMaxRecordBytes) return line;  // not parsed: never written so
  line.json = nlohmann::json::parse(text, nullptr, false);
  line.text = std::string(text);
  const nlohmann::json& j = line.json;
  if (j.is_discarded() || !j.is_object()) return line;
  const auto seq = j.find("seq");
  const auto prev = j.find("prev");
  const auto event = j.find("event");
  const auto time = j.find("time");
  if (seq == j.end() || !seq->is_number_unsigned() || prev == j.end() || !IsHex(*prev, 32) ||
      event == j.end() || !event->is_string() || time == j.end() || !time->is_string()) {
    return line;
  }
  line.seq = seq->get<uint64_t>();
  line.prev = prev->get<std::string>();
  line.event = event->get<std::string>();
  line.parsed = line.seq > 0;
  return line;
}

std::string Basename(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string StringField(const nlohmann::json& object, const char* name) {
  const auto it = object.find(name);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// An unsigned field as text, or "?" when a (forged or damaged) record has something else there.
std::string SeqField(const nlohmann::json& object, const char* name) {
  const auto it = object.find(name);
  return it != object.end() && it->is_number_unsigned() ? std::to_string(it->get<uint64_t>())
                                                        : std::string("?");
}

std::string CountOf(uint64_t n, std::string_view noun) {
  return std::to_string(n) + " " + std::string(noun) + (n == 1 ? "" : "s");
}

class Verifier {
 public:
  Verifier(const internal::PublicKey& key, std::span<const Anchor> anchors, LogEnd end)
      : key_(key), anchors_(anchors.begin(), anchors.end()), end_(end) {}

  // False once an alteration is found.
  bool VerifyFile(const std::string& path) {
    ++report_.files;
    last_file_ = path;
    last_file_incomplete_.reset();
    std::string content;
    if (!internal::ReadWholeFile(path, &content)) {
      return Fail("unreadable_file", path, 0, expected_seq_, "cannot read " + path);
    }

    const std::string_view complete(content.data(), content.rfind('\n') + 1);  // npos + 1 == 0
    if (complete.size() < content.size()) {
      last_file_incomplete_ = report_.warnings.size();
      Warn("torn_line", path,
           static_cast<uint64_t>(std::count(complete.begin(), complete.end(), '\n')) + 1, 0,
           "the last line of " + Basename(path) + " is incomplete (" +
               std::to_string(content.size() - complete.size()) +
               " bytes without a newline), as a crash leaves it; it is not part of the chain");
    }
    if (complete.empty()) {
      if (!last_file_incomplete_) last_file_incomplete_ = report_.warnings.size();
      Warn("empty_file", path, 0, 0, Basename(path) + " holds no complete record");
      return true;
    }
    // Parsed as the checks reach them, with the two lines of look-ahead that the order checks
    // need: holding every parsed line cost ~140 bytes per line, gigabytes for a hostile file of
    // empty lines, and a bad line stops the work early.
    size_t begin = 0;
    uint64_t number = 0;
    std::deque<Line> window;
    const auto read_next = [&] {
      if (begin == complete.size()) return;
      const size_t end = complete.find('\n', begin);
      window.push_back(ParseLine(complete.substr(begin, end - begin), ++number));
      begin = end + 1;
    };
    for (int i = 0; i < 3; ++i) read_next();
    for (bool first = true; !window.empty(); first = false) {
      const Line* next = window.size() > 1 && window[1].parsed ? &window[1] : nullptr;
      const Line* after_next = window.size() > 2 && window[2].parsed ? &window[2] : nullptr;
      if (!CheckLine(path, window[0], first, next, after_next)) return false;
      window.pop_front();
      read_next();
    }
    prev_file_path_ = path;
    return true;
  }

  VerifyReport Finish() {
    if (report_.ok() && report_.records == 0) {
      Fail("no_records", "", 0, 0, "the files hold no audit record");
    }
    for (const Anchor& anchor : anchors_) {
      if (!report_.ok()) break;
      if (anchor.seq > report_.last_seq || anchor.seq < report_.first_seq) {
        Fail("missing_anchor", last_record_file_, 0, anchor.seq,
             "the seal seq " + std::to_string(anchor.seq) +
                 " noted earlier is not in the files (they end at seq " +
                 std::to_string(report_.last_seq) + "): the log was truncated");
      } else if (!anchors_found_.contains(anchor.seq)) {
        Fail("missing_anchor", "", 0, anchor.seq,
             "record seq " + std::to_string(anchor.seq) +
                 " is not the seal noted earlier, with head " + anchor.head +
                 ": the log was rewritten");
      }
    }
    if (report_.ok()) {
      report_.unsealed_tail = report_.last_seq - std::max(report_.last_sealed_seq,
                                                          report_.first_seq - 1);
      CheckEnd();
    }
    return std::move(report_);
  }

 private:
  // Seals vouch for what comes before them, so only a stop record and the seal right after it,
  // at the very end of the last file, show that nothing was cut from or appended to the end.
  // The seal's own `reason` is not signed: the stop record, which the seal signs, is the proof.
  // Stopped, the first of these is the error; live, each that applies is a warning.
  void CheckEnd() {
    const bool live = end_ == LogEnd::kLive;
    const std::string last = Basename(last_file_);
    if (report_.seals == 0) {
      EndFinding("no_seal", last_record_file_, 0, 0,
                 "no valid seal: nothing in the files is signed, so nothing vouches for their " +
                     CountOf(report_.records, "record") +
                     " (a forged log, or a daemon that has not sealed yet)");
      if (!live) return;
    }
    if (last_file_incomplete_ && !live) {
      // The warning said it as for a crash mid-write; at the end of the log it is an error.
      Finding torn = report_.warnings[*last_file_incomplete_];
      report_.warnings.erase(report_.warnings.begin() +
                             static_cast<std::ptrdiff_t>(*last_file_incomplete_));
      const std::string what = torn.code == "empty_file"
                                   ? last + " holds no complete record"
                                   : last + " ends in an incomplete record";
      Fail("torn_end", torn.file, torn.line, 0,
           what + ": the log was truncated there, or bytes were appended after its last record, "
                  "or the writer was killed mid-write; no seal vouches for the end");
      return;
    }
    if (report_.unsealed_tail > 0) {
      const std::string range = std::to_string(report_.last_seq - report_.unsealed_tail + 1) +
                                ".." + std::to_string(report_.last_seq);
      if (live) {
        Warn("unsealed_tail", last_record_file_, last_record_line_, report_.last_seq,
             "unsealed tail: " + CountOf(report_.unsealed_tail, "record") + " (seq " + range +
                 ") were written after the last seal; no signature covers them yet");
      } else if (report_.seals > 0) {
        Fail("unsealed_end", last_record_file_, last_record_line_, report_.last_seq,
             CountOf(report_.unsealed_tail, "record") + " (seq " + range +
                 (report_.unsealed_tail == 1 ? ") follows" : ") follow") +
                 " the last seal, seq " + std::to_string(report_.last_sealed_seq) +
                 ": appended (forged) records, a removed final seal, or a daemon that is still "
                 "running or was killed");
      }
      return;
    }
    if (report_.seals == 0 || event_before_last_ == "stop") return;
    if (last_seal_reason_ == "rotation") {
      EndFinding("missing_last_file", last_record_file_, last_record_line_, report_.last_seq,
                 last + " ends with the seal written before a rotation, seq " +
                     std::to_string(report_.last_seq) +
                     ": the file the daemon started after it was not given (deleted?)");
    } else {
      EndFinding("missing_stop", last_record_file_, last_record_line_, report_.last_seq,
                 "the last seal, seq " + std::to_string(report_.last_seq) +
                     ", does not follow a stop record: the records after it were cut, or the "
                     "daemon is still running or was killed right after sealing");
    }
  }

  void EndFinding(std::string code, const std::string& path, uint64_t line, uint64_t seq,
                  std::string message) {
    if (end_ == LogEnd::kLive) {
      Warn(std::move(code), path, line, seq, std::move(message));
    } else {
      Fail(std::move(code), path, line, seq, std::move(message));
    }
  }

  bool CheckLine(const std::string& path, const Line& line, bool first_in_file, const Line* next,
                 const Line* after_next) {
    const std::string file = Basename(path);
    if (!line.parsed) {
      return Fail("malformed_record", path, line.number, expected_seq_,
                  "line " + std::to_string(line.number) + " of " + file +
                      " is not an audit record (not JSON, or seq, time, prev or event missing)");
    }
    if (have_head_ && !CheckOrder(path, line, first_in_file, next, after_next)) return false;
    if (!have_head_ && !CheckChainStart(path, line)) return false;

    if (first_in_file) {
      if (line.event != "file_start" || !IsHex(line.json.value("file_id", nlohmann::json()), 16)) {
        return Fail("missing_file_start", path, line.number, line.seq,
                    file + " does not begin with a file_start record");
      }
      file_id_hex_ = line.json["file_id"].get<std::string>();
      const std::string named = StringField(line.json, "prev_file");
      if (have_head_ && named != Basename(prev_file_path_)) {
        Warn("renamed_file", path, line.number, line.seq,
             file + " names \"" + named + "\" as its predecessor, but the chain continues from " +
                 Basename(prev_file_path_) + " (renamed?)");
      }
    } else if (line.event == "file_start") {
      return Fail("unexpected_file_start", path, line.number, line.seq,
                  "a file_start record in the middle of " + file);
    }
    if (line.event == "seal" && !CheckSeal(path, line)) return false;
    if (line.event == "unclean_stop") {
      Warn("unclean_stop", path, line.number, line.seq,
           "the daemon did not stop cleanly before seq " + std::to_string(line.seq) +
               " (killed, crashed or a power cut): its last record was seq " +
               SeqField(line.json, "last_seq") + ", its last seal seq " +
               SeqField(line.json, "last_sealed_seq") +
               " (0: none found); the seals from here on cover those records");
    }
    event_before_last_ = std::move(last_event_);
    last_event_ = line.event;

    previous_head_hex_ = head_hex_;
    head_hex_ = internal::Hex(internal::Sha256(line.text));
    have_head_ = true;
    expected_seq_ = line.seq + 1;
    if (report_.records == 0) report_.first_seq = line.seq;
    ++report_.records;
    report_.last_seq = line.seq;
    last_record_file_ = path;
    last_record_line_ = line.number;
    return true;
  }

  // The record expected next is seq expected_seq_ linked to head_hex_.
  bool CheckOrder(const std::string& path, const Line& line, bool first_in_file, const Line* next,
                  const Line* after_next) {
    const uint64_t expected = expected_seq_;
    const std::string e = std::to_string(expected);
    const std::string s = std::to_string(line.seq);
    if (line.seq > expected) {
      const std::string missing =
          line.seq == expected + 1 ? "record seq " + e + " is"
                                   : "records seq " + e + ".." + std::to_string(line.seq - 1) + " are";
      if (first_in_file) {
        const std::string named = StringField(line.json, "prev_file");
        if (!named.empty() && named != Basename(prev_file_path_)) {
          return Fail("missing_file", path, line.number, expected,
                      missing + " missing: " + Basename(path) + " continues \"" + named +
                          "\", which was not given (the file before it here is " +
                          Basename(prev_file_path_) + ")");
        }
        return Fail("missing_records", last_record_file_, last_record_line_ + 1, expected,
                    missing + " missing: the end of " + Basename(last_record_file_) +
                        " was truncated or deleted");
      }
      if (next != nullptr && next->seq == expected) {
        if (line.seq == expected + 1 && (after_next == nullptr || after_next->seq == expected + 2)) {
          return Fail("out_of_order", path, line.number, expected,
                      "records seq " + e + " and " + s + " are out of order (swapped)");
        }
        return Fail("inserted_record", path, line.number, line.seq,
                    "line " + std::to_string(line.number) + " (seq " + s +
                        ") does not belong here: seq " + e + " was expected");
      }
      return Fail("missing_records", path, line.number, expected,
                  missing + " missing (deleted): found seq " + s + " where " + e +
                      " was expected");
    }
    if (line.seq < expected) {
      // A repeated seq: either the line before was forged in, or this one is.
      if (!first_in_file && line.prev == previous_head_hex_) {
        return Fail("inserted_record", path, line.number - 1, line.seq,
                    "seq " + s + " appears twice: line " + std::to_string(line.number - 1) +
                        " was inserted (line " + std::to_string(line.number) +
                        " continues the chain without it)");
      }
      return Fail("inserted_record", path, line.number, line.seq,
                  "line " + std::to_string(line.number) + " repeats seq " + s +
                      " (replayed or inserted): seq " + e + " was expected");
    }
    if (line.prev != head_hex_) {
      // A changed record changes its own hash, so it breaks the link after it; only a change
      // to its prev field also breaks the link before it.
      const bool this_altered =
          next != nullptr && next->prev != internal::Hex(internal::Sha256(line.text));
      if (this_altered) {
        return Fail("altered_record", path, line.number, line.seq,
                    "record seq " + s + " was altered: its prev does not match the hash of seq " +
                        std::to_string(line.seq - 1) + ", nor its hash the prev of seq " +
                        std::to_string(line.seq + 1));
      }
      return Fail("altered_record", last_record_file_, last_record_line_, line.seq - 1,
                  "record seq " + std::to_string(line.seq - 1) +
                      " was altered: its hash does not match the prev of seq " + s);
    }
    return true;
  }

  bool CheckChainStart(const std::string& path, const Line& line) {
    if (line.event != "file_start") return true;  // reported as missing_file_start
    const auto prev_file = line.json.find("prev_file");
    if (prev_file != line.json.end() && prev_file->is_null()) {
      if (line.seq != 1 || line.prev != internal::kZeroHead) {
        return Fail("altered_record", path, line.number, line.seq,
                    "the first record ever must have seq 1 and an all-zero prev");
      }
      return true;
    }
    Warn("chain_starts_later", path, line.number, line.seq,
         Basename(path) + " continues \"" + StringField(line.json, "prev_file") +
             "\", which was not given: records before seq " + std::to_string(line.seq) +
             " were not checked");
    return true;
  }

  bool CheckSeal(const std::string& path, const Line& line) {
    const std::string s = std::to_string(line.seq);
    const std::string file_id = StringField(line.json, "file_id");
    const std::string head = StringField(line.json, "head");
    const std::string key_id = StringField(line.json, "key_id");
    if (file_id != file_id_hex_) {
      return Fail("bad_seal", path, line.number, line.seq,
                  "seal seq " + s + " names file id " + file_id + ", not this file's " +
                      file_id_hex_ + " (copied from another file?)");
    }
    if (head != line.prev) {
      return Fail("bad_seal", path, line.number, line.seq,
                  "seal seq " + s + " signs a head that is not its prev");
    }
    if (key_id != key_.key_id()) {
      return Fail("unknown_seal_key", path, line.number, line.seq,
                  "seal seq " + s + " was made by key " + key_id +
                      ", not by the given public key (key id " + key_.key_id() + ")");
    }
    std::vector<uint8_t> signature;
    std::array<uint8_t, 16> file_id_bytes{};
    Digest head_bytes{};
    if (!internal::ParseBase64(StringField(line.json, "sig"), &signature) ||
        !internal::ParseHex(file_id, file_id_bytes) || !internal::ParseHex(head, head_bytes) ||
        !key_.VerifyDigest(internal::SealDigest(file_id_bytes, line.seq, head_bytes), signature)) {
      return Fail("bad_signature", path, line.number, line.seq,
                  "the signature of seal seq " + s + " does not verify under the given public key");
    }
    ++report_.seals;
    report_.last_sealed_seq = line.seq;
    last_seal_reason_ = StringField(line.json, "reason");
    for (const Anchor& anchor : anchors_) {
      if (anchor.seq == line.seq && anchor.head == head) anchors_found_.insert(line.seq);
    }
    return true;
  }

  bool Fail(std::string code, const std::string& path, uint64_t line, uint64_t seq,
            std::string message) {
    report_.error = Finding{std::move(code), path, line, seq, std::move(message)};
    return false;
  }

  void Warn(std::string code, const std::string& path, uint64_t line, uint64_t seq,
            std::string message) {
    report_.warnings.push_back(Finding{std::move(code), path, line, seq, std::move(message)});
  }

  const internal::PublicKey& key_;
  const std::vector<Anchor> anchors_;
  const LogEnd end_;
  std::set<uint64_t> anchors_found_;
  VerifyReport report_;
  bool have_head_ = false;
  uint64_t expected_seq_ = 0;
  std::string head_hex_;
  std::string previous_head_hex_;
  std::string file_id_hex_;
  std::string prev_file_path_;
  std::string last_record_file_;
  uint64_t last_record_line_ = 0;
  std::string last_file_;
  // Index in report_.warnings of the torn_line or empty_file warning of the last file, if any.
  std::optional<size_t> last_file_incomplete_;
  std::string last_event_;
  std::string event_before_last_;
  std::string last_seal_reason_;
};

}  // namespace

bool IsEndOfLogFinding(std::string_view code) {
  return code == "no_seal" || code == "torn_end" || code == "unsealed_end" ||
         code == "missing_stop" || code == "missing_last_file";
}

namespace {

bool HoldsCompleteLine(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char buffer[1 << 14];
  while (in.read(buffer, sizeof buffer) || in.gcount() > 0) {
    if (std::memchr(buffer, '\n', static_cast<size_t>(in.gcount())) != nullptr) return true;
  }
  return false;
}

}  // namespace

Result<std::vector<std::string>> LogFilesInOrder(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.starts_with("audit-") && name.ends_with(".jsonl")) files.push_back(entry.path());
  }
  if (ec) {
    return Status(Code::kNotFound, "audit_dir_unreadable",
                  "cannot list " + dir + ": " + ec.message());
  }
  std::sort(files.begin(), files.end());
  // "audit-" and the 20 digits of the first seq: what two files of one start have in common.
  const auto seq_part = [](const std::string& path) { return Basename(path).substr(0, 26); };
  for (size_t begin = 0; begin < files.size();) {
    size_t end = begin + 1;
    while (end < files.size() && seq_part(files[end]) == seq_part(files[begin])) ++end;
    if (end - begin > 1) {
      std::stable_partition(files.begin() + static_cast<std::ptrdiff_t>(begin),
                            files.begin() + static_cast<std::ptrdiff_t>(end),
                            [](const std::string& path) { return !HoldsCompleteLine(path); });
    }
    begin = end;
  }
  return files;
}

Result<VerifyReport> Verify(std::span<const std::string> files, const std::string& pubkey_pem,
                            std::span<const Anchor> anchors, LogEnd end) {
  Result<internal::PublicKey> key = internal::PublicKey::FromPem(pubkey_pem);
  if (!key.ok()) return std::move(key).TakeStatus();
  Verifier verifier(*key, anchors, end);
  for (const std::string& file : files) {
    if (!verifier.VerifyFile(file)) break;
  }
  return verifier.Finish();
}

}  // namespace vecseal::audit
