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

bool ParseUint(std::string_view text, uint64_t* out) {
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *out);
  return ec == std::errc() && end != text.data();
}

// The value of `"name":` as a number, searched from `from`; the canonical writer puts no space.
bool UintAfter(std::string_view line, std::string_view needle, size_t from, uint64_t* out) {
  const size_t at = line.find(needle, from);
  return at != std::string_view::npos && ParseUint(line.substr(at + needle.size()), out);
}

// A JSON string's raw contents (still escaped) after `needle`, which ends with the opening quote.
// Inside a JSON string a quote is always escaped, so `,"name":"` cannot match inside a value.
std::optional<std::string_view> StringAfter(std::string_view line, std::string_view needle,
                                            size_t from, size_t until = std::string_view::npos) {
  const size_t at = line.find(needle, from);
  if (at == std::string_view::npos || at >= until) return std::nullopt;
  const size_t begin = at + needle.size();
  size_t end = begin;
  while (end < line.size() && line[end] != '"') end += line[end] == '\\' ? 2 : 1;
  if (end >= line.size()) return std::nullopt;
  return line.substr(begin, end - begin);
}

std::string Unescape(std::string_view raw) {
  if (raw.find('\\') == std::string_view::npos) return std::string(raw);
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

// The whole of `path`, or only its last 64 KiB (`tail`), which hold its last record.
Status ReadFile(const std::string& path, bool tail, std::string* content, struct stat* st) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Unreadable("cannot open " + path + ": " + std::strerror(errno));
  Status status;
  if (fstat(fd, st) != 0) {
    status = Unreadable("cannot stat " + path + ": " + std::strerror(errno));
  } else {
    const auto size = static_cast<size_t>(st->st_size);
    const size_t offset = tail && size > (64u << 10) ? size - (64u << 10) : 0;
    content->resize(size - offset);
    size_t done = 0;
    while (done < content->size()) {
      const ssize_t n = pread(fd, content->data() + done, content->size() - done,
                              static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        status = Unreadable("cannot read " + path + ": " + std::strerror(errno));
        break;
      }
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    content->resize(done);
  }
  close(fd);
  return status;
}

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
  std::string content;
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
    VECSEAL_RETURN_IF_ERROR(ReadFile(path, old, &content, &st));
    if (!old) {
      ++scan.files_read;
      scan.bytes_read += content.size();
    }
    const std::string_view text(content);
    size_t begin = 0;
    // A tail read starts mid-record: its first line is not one.
    if (old && static_cast<size_t>(st.st_size) > content.size()) {
      begin = text.find('\n') == std::string_view::npos ? text.size() : text.find('\n') + 1;
    }
    bool first = true;
    uint64_t number = 0;
    while (begin < text.size()) {
      const size_t end = text.find('\n', begin);
      if (end == std::string_view::npos) break;  // torn: never acknowledged
      const std::string_view line = text.substr(begin, end - begin);
      begin = end + 1;
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
      if (head.event != "encrypt" && head.event != "decrypt") continue;
      if (head.time_micros < since_micros || head.seq >= until_seq) continue;
      const size_t caller = line.find(",\"caller\":{");
      const auto key = StringAfter(line, ",\"key\":\"", 0);
      const auto rule = StringAfter(line, ",\"rule_id\":\"", 0);
      uint64_t vectors = 0;
      uint64_t uid = 0;
      if (caller == std::string_view::npos || !key || !rule ||
          !UintAfter(line, ",\"vectors\":", 0, &vectors) ||
          !UintAfter(line, ",\"uid\":", caller, &uid)) {
        return Unreadable(path + ":" + std::to_string(number) + ": an " +
                          std::string(head.event) +
                          " record without caller, key, rule_id or vectors; the spends of "
                          "budgets cannot be counted");
      }
      const size_t key_at = line.find(",\"key\":\"");
      const auto unit = StringAfter(line, ",\"unit\":\"", caller, key_at);
      spend.time_micros = head.time_micros;
      spend.operation = head.event;
      spend.rule_id = *rule;
      spend.key = *key;
      spend.uid = static_cast<int64_t>(uid);
      spend.unit = unit ? Unescape(*unit) : std::string();
      spend.vectors = vectors;
      ++scan.spends;
      each(spend);
    }
  }
  return scan;
}

}  // namespace vecseal::audit
