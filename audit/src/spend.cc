#include "vecseal/audit/spend.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <string>

#include <nlohmann/json.hpp>

namespace vecseal::audit {
namespace {

Status Unreadable(std::string message) {
  return Status(Code::kUnavailable, "audit_unreadable", std::move(message));
}

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

// Walks a record's fields in the writer's canonical form: `,"name":value` with no spaces
// (docs/audit.md), so that a field is read without searching the line for it.
class Cursor {
 public:
  Cursor(std::string_view line, size_t pos) : line_(line), pos_(pos) {}

  // At `,"name":` or `{"name":`; false at the end of an object or on anything else.
  bool NextField(std::string_view* name) {
    if (pos_ + 1 >= line_.size() || (line_[pos_] != ',' && line_[pos_] != '{') ||
        line_[pos_ + 1] != '"') {
      return false;
    }
    const size_t end = line_.find('"', pos_ + 2);  // names are the writer's, never escaped
    if (end == std::string_view::npos || end + 1 >= line_.size() || line_[end + 1] != ':') {
      return false;
    }
    *name = line_.substr(pos_ + 2, end - pos_ - 2);
    pos_ = end + 2;
    return true;
  }
  // A JSON string's raw contents, still escaped: inside one a quote is always escaped.
  bool String(std::string_view* raw) {
    if (pos_ >= line_.size() || line_[pos_] != '"') return false;
    const size_t begin = pos_ + 1;
    for (size_t end = line_.find('"', begin); end != std::string_view::npos;
         end = line_.find('"', end + 1)) {
      size_t backslashes = 0;
      while (end - backslashes > begin && line_[end - backslashes - 1] == '\\') ++backslashes;
      if (backslashes % 2 == 0) {
        *raw = line_.substr(begin, end - begin);
        pos_ = end + 1;
        return true;
      }
    }
    return false;
  }
  template <typename T>
  bool Number(T* out) {
    const auto [end, ec] = std::from_chars(line_.data() + pos_, line_.data() + line_.size(), *out);
    if (ec != std::errc()) return false;
    pos_ = static_cast<size_t>(end - line_.data());
    return true;
  }
  // Any value: a string, an object or list (skipped whole), or a number or literal.
  bool Skip() {
    if (pos_ >= line_.size()) return false;
    std::string_view ignored;
    if (line_[pos_] == '"') return String(&ignored);
    if (line_[pos_] == '{' || line_[pos_] == '[') {
      int depth = 0;
      while (pos_ < line_.size()) {
        const char c = line_[pos_];
        if (c == '"') {
          if (!String(&ignored)) return false;
          continue;
        }
        if (c == '{' || c == '[') ++depth;
        if ((c == '}' || c == ']') && --depth == 0) {
          ++pos_;
          return true;
        }
        ++pos_;
      }
      return false;
    }
    while (pos_ < line_.size() && line_[pos_] != ',' && line_[pos_] != '}') ++pos_;
    return true;
  }
  // The '}' that ends an object.
  bool Close() {
    if (pos_ >= line_.size() || line_[pos_] != '}') return false;
    ++pos_;
    return true;
  }

 private:
  std::string_view line_;
  size_t pos_;
};

// The caller, key, vectors and rule_id of an encrypt, decrypt or rewrap record, read from `pos`
// (just after its event) up to rule_id, the last of them in the canonical order.
bool ReadSpend(std::string_view line, size_t pos, Spend* spend, std::string_view* raw_unit) {
  Cursor cursor(line, pos);
  bool caller = false, key = false, vectors = false;
  *raw_unit = std::string_view();
  std::string_view name;
  while (cursor.NextField(&name)) {
    if (name == "caller") {
      caller = true;
      std::string_view field;
      while (cursor.NextField(&field)) {
        const bool ok = field == "uid"    ? cursor.Number(&spend->uid)
                        : field == "unit" ? cursor.String(raw_unit)
                                          : cursor.Skip();
        if (!ok) return false;
      }
      if (!cursor.Close()) return false;
    } else if (name == "key") {
      key = cursor.String(&spend->key);
      if (!key) return false;
    } else if (name == "vectors") {
      vectors = cursor.Number(&spend->vectors);
      if (!vectors) return false;
    } else if (name == "rule_id") {
      return caller && key && vectors && cursor.String(&spend->rule_id);
    } else if (!cursor.Skip()) {
      return false;
    }
  }
  return false;
}

std::string Unescape(std::string_view raw) {
  const auto parsed = nlohmann::json::parse("\"" + std::string(raw) + "\"", nullptr, false);
  return parsed.is_string() ? parsed.get<std::string>() : std::string(raw);
}

struct Head {
  uint64_t seq = 0;
  int64_t time_micros = 0;
  std::string_view event;
};

// {"seq":S,"time":"T","prev":"<64 hex>","event":"E" ... as the writer always begins a record.
bool ParseHead(std::string_view line, Head* head) {
  constexpr std::string_view kSeq = "{\"seq\":";
  if (!line.starts_with(kSeq)) return false;
  const char* begin = line.data() + kSeq.size();
  const auto [end, ec] = std::from_chars(begin, line.data() + line.size(), head->seq);
  if (ec != std::errc()) return false;
  std::string_view rest = line.substr(static_cast<size_t>(end - line.data()));
  constexpr std::string_view kTime = ",\"time\":\"";
  constexpr size_t kTimeLength = 27;  // 2026-11-25T03:04:31.123456Z
  if (!rest.starts_with(kTime) || rest.size() < kTime.size() + kTimeLength) return false;
  const auto time = ParseRecordTime(rest.substr(kTime.size(), kTimeLength));
  if (!time) return false;
  head->time_micros = *time;
  rest = rest.substr(kTime.size() + kTimeLength);
  constexpr std::string_view kPrev = "\",\"prev\":\"";
  constexpr std::string_view kEvent = "\",\"event\":\"";
  if (!rest.starts_with(kPrev) || rest.size() < kPrev.size() + 64 + kEvent.size()) return false;
  rest = rest.substr(kPrev.size() + 64);
  if (!rest.starts_with(kEvent)) return false;
  rest = rest.substr(kEvent.size());
  const size_t quote = rest.find('"');
  if (quote == std::string_view::npos) return false;
  head->event = rest.substr(0, quote);
  return true;
}

// A file's complete lines, read in chunks into one reused buffer (mapping a gigabyte costs a
// page fault per page; a buffer that stays in cache does not), or only those of its last 64 KiB
// (`tail`), which hold its last record. A torn last line is never returned.
class LineReader {
 public:
  Status Open(const std::string& path, bool tail) {
    Close();
    path_ = path;
    fd_ = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) return Unreadable("cannot open " + path + ": " + std::strerror(errno));
    begin_ = end_ = 0;
    eof_ = false;
    skip_first_ = false;
    if (tail) {
      struct stat st {};
      if (fstat(fd_, &st) != 0) return Unreadable("cannot stat " + path + ": " + std::strerror(errno));
      if (st.st_size > static_cast<off_t>(kTail)) {
        if (lseek(fd_, st.st_size - static_cast<off_t>(kTail), SEEK_SET) < 0) {
          return Unreadable("cannot seek in " + path + ": " + std::strerror(errno));
        }
        skip_first_ = true;  // it starts mid-record
      }
    }
    return Status::Ok();
  }
  ~LineReader() { Close(); }

  // False at the end (or on an error, which status() then holds).
  bool Next(std::string_view* line) {
    for (;;) {
      const std::string_view held(buffer_.data() + begin_, end_ - begin_);
      const size_t newline = held.find('\n');
      if (newline != std::string_view::npos) {
        begin_ += newline + 1;
        if (skip_first_) {
          skip_first_ = false;
          continue;
        }
        *line = held.substr(0, newline);
        return true;
      }
      if (eof_ || !Fill()) return false;
    }
  }
  const Status& status() const { return status_; }
  uint64_t bytes() const { return bytes_; }

 private:
  bool Fill() {
    std::memmove(buffer_.data(), buffer_.data() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
    if (buffer_.size() < end_ + kChunk) buffer_.resize(end_ + kChunk);
    for (;;) {
      const ssize_t n = read(fd_, buffer_.data() + end_, buffer_.size() - end_);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        status_ = Unreadable("cannot read " + path_ + ": " + std::strerror(errno));
        return false;
      }
      eof_ = n == 0;
      end_ += static_cast<size_t>(n);
      bytes_ += static_cast<uint64_t>(n);
      return !eof_;
    }
  }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  static constexpr size_t kChunk = 1u << 20;
  static constexpr size_t kTail = 64u << 10;
  std::string path_;
  int fd_ = -1;
  std::string buffer_;
  size_t begin_ = 0, end_ = 0;
  bool eof_ = false;
  bool skip_first_ = false;
  uint64_t bytes_ = 0;
  Status status_;
};

}  // namespace

std::optional<int64_t> ParseRecordTime(std::string_view text) {
  constexpr std::string_view kShape = "dddd-dd-ddTdd:dd:dd.ddddddZ";
  if (text.size() != kShape.size()) return std::nullopt;
  for (size_t i = 0; i < kShape.size(); ++i) {
    const char c = text[i];
    if (kShape[i] == 'd' ? (c < '0' || c > '9') : c != kShape[i]) return std::nullopt;
  }
  const auto number = [&](size_t at, size_t length) {
    int64_t value = 0;
    for (size_t i = 0; i < length; ++i) value = value * 10 + (text[at + i] - '0');
    return value;
  };
  const int64_t month = number(5, 2);
  const int64_t day = number(8, 2);
  if (month < 1 || month > 12 || day < 1 || day > 31 || number(11, 2) > 23 ||
      number(14, 2) > 59 || number(17, 2) > 60) {
    return std::nullopt;
  }
  const int64_t days = DaysFromCivil(number(0, 4), static_cast<unsigned>(month),
                                     static_cast<unsigned>(day));
  const int64_t seconds = days * 86400 + number(11, 2) * 3600 + number(14, 2) * 60 + number(17, 2);
  return seconds * 1'000'000 + number(20, 6);
}

Result<SpendScan> ScanSpends(std::span<const std::string> files, int64_t since_micros,
                             const std::function<void(const Spend&)>& each, uint64_t until_seq) {
  SpendScan scan;
  std::optional<uint64_t> last_seq;
  LineReader reader;
  std::string unit;
  Spend spend;
  for (size_t index = 0; index < files.size(); ++index) {
    const std::string& path = files[index];
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) {
      return Unreadable("cannot stat " + path + ": " + std::strerror(errno));
    }
    const int64_t modified = static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000 +
                             st.st_mtim.tv_nsec / 1000;
    const bool old = index + 1 < files.size() && modified < since_micros - 60'000'000;
    VECSEAL_RETURN_IF_ERROR(reader.Open(path, old));
    if (!old) ++scan.files_read;
    const uint64_t bytes_before = reader.bytes();
    bool first = true;
    uint64_t number = 0;
    std::string_view line;
    while (reader.Next(&line)) {
      ++number;
      Head head;
      if (!ParseHead(line, &head)) {
        return Unreadable(path + ":" + std::to_string(number) +
                          " is not an audit record; the spends of budgets cannot be counted");
      }
      if (first && !old) {
        const uint64_t expected = last_seq ? *last_seq + 1 : 1;
        // A torn record is written again under its seq, so a file may restart at the last seq.
        if (head.seq > expected) scan.complete_since_micros = head.time_micros;
      }
      first = false;
      last_seq = head.seq;
      if (old) continue;
      ++scan.records;
      if (head.event != "encrypt" && head.event != "decrypt" && head.event != "rewrap") continue;
      if (head.time_micros < since_micros || head.seq >= until_seq) continue;
      const size_t after_event =
          static_cast<size_t>(head.event.data() + head.event.size() - line.data()) + 1;
      std::string_view raw_unit;
      spend.uid = -1;
      if (!ReadSpend(line, after_event, &spend, &raw_unit)) {
        return Unreadable(path + ":" + std::to_string(number) + ": an " +
                          std::string(head.event) +
                          " record without caller, key, rule_id or vectors; the spends of "
                          "budgets cannot be counted");
      }
      spend.unit = raw_unit;
      if (raw_unit.find('\\') != std::string_view::npos) {
        unit = Unescape(raw_unit);
        spend.unit = unit;
      }
      spend.time_micros = head.time_micros;
      spend.operation = head.event;
      ++scan.spends;
      each(spend);
    }
    VECSEAL_RETURN_IF_ERROR(reader.status());
    if (!old) scan.bytes_read += reader.bytes() - bytes_before;
  }
  return scan;
}

}  // namespace vecseal::audit
