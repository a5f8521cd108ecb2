// `vecseal audit verify|show`.
#include <algorithm>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "audit_command.h"
#include "vecseal/audit/verify.h"

namespace vecseal::audit {
namespace {

bool ReadPublicKeyFile(const std::string& path, std::string* pem) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream content;
  content << in.rdbuf();
  *pem = std::move(content).str();
  return !in.bad();
}

constexpr int kExitOk = 0;
constexpr int kExitAltered = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnreadable = 3;

constexpr std::string_view kUsage =
    "usage: vecseal audit verify --pubkey KEY.pem [--anchor SEQ:HEAD]... [--allow-unsealed-tail]\n"
    "                            [--json] FILE|DIR...\n"
    "       vecseal audit show [--key NAME] [--caller USER|UID|EXE|UNIT] [--event NAME]\n"
    "                          [--since TIME] [--until TIME] [--sum] [--json] FILE|DIR...\n"
    "A DIR stands for its audit-*.jsonl files in order. verify fails unless the log ends in a\n"
    "stop record and its seal; --allow-unsealed-tail accepts a running daemon's unsealed end\n"
    "(reported as warnings). --sum adds up the vectors encrypted and decrypted per rule, key,\n"
    "caller and operation instead of listing records. TIME is UTC, ISO 8601, any prefix\n"
    "of 2026-11-25T03:04:31.123456Z (e.g. 2026-11-25 or 2026-11-25T03:04).\n";

// Directories become their audit files, oldest first.
bool ExpandPaths(const std::vector<std::string>& operands, std::vector<std::string>* files,
                 std::ostream& err) {
  for (const std::string& operand : operands) {
    std::error_code ec;
    if (std::filesystem::is_directory(operand, ec)) {
      Result<std::vector<std::string>> found = LogFilesInOrder(operand);
      if (!found.ok()) {
        err << "vecseal audit: " << found.status().message() << "\n";
        return false;
      }
      files->insert(files->end(), found->begin(), found->end());
    } else {
      files->push_back(operand);
    }
  }
  return true;
}

nlohmann::json FindingJson(const Finding& finding) {
  return {{"code", finding.code}, {"file", finding.file}, {"line", finding.line},
          {"seq", finding.seq},   {"message", finding.message}};
}

std::string FindingText(const Finding& finding) {
  std::string out = finding.file;
  if (finding.line > 0) out += ":" + std::to_string(finding.line);
  if (finding.seq > 0) out += (out.empty() ? "" : ": ") + std::string("seq ") + std::to_string(finding.seq);
  if (!out.empty()) out += ": ";
  return out + finding.code + ": " + finding.message;
}

std::string Count(uint64_t n, std::string_view noun) {
  return std::to_string(n) + " " + std::string(noun) + (n == 1 ? "" : "s");
}

int RunVerify(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  std::string pubkey_path;
  bool json = false;
  LogEnd log_end = LogEnd::kStopped;
  std::vector<std::string> operands;
  std::vector<Anchor> anchors;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--pubkey" && i + 1 < args.size()) {
      pubkey_path = args[++i];
    } else if (args[i] == "--anchor" && i + 1 < args.size()) {
      const std::string& text = args[++i];
      const size_t colon = text.find(':');
      Anchor anchor;
      const char* end = text.data() + (colon == std::string::npos ? text.size() : colon);
      const auto parsed = std::from_chars(text.data(), end, anchor.seq);
      if (colon == std::string::npos || parsed.ec != std::errc() || parsed.ptr != end ||
          text.size() - colon - 1 != 64) {
        err << "vecseal audit verify: --anchor " << text
            << ": expected SEQ:HEAD, a seal's seq and its 64-hex-digit head\n";
        return kExitUsage;
      }
      anchor.head = text.substr(colon + 1);
      anchors.push_back(anchor);
    } else if (args[i] == "--json") {
      json = true;
    } else if (args[i] == "--allow-unsealed-tail") {
      log_end = LogEnd::kLive;
    } else if (args[i].starts_with("--")) {
      err << "vecseal audit verify: unknown or incomplete option " << args[i] << "\n" << kUsage;
      return kExitUsage;
    } else {
      operands.push_back(args[i]);
    }
  }
  if (pubkey_path.empty() || operands.empty()) {
    err << "vecseal audit verify: needs --pubkey and at least one file\n" << kUsage;
    return kExitUsage;
  }
  std::string pem;
  if (!ReadPublicKeyFile(pubkey_path, &pem)) {
    err << "vecseal audit verify: cannot read " << pubkey_path << "\n";
    return kExitUnreadable;
  }
  std::vector<std::string> files;
  if (!ExpandPaths(operands, &files, err)) return kExitUnreadable;
  Result<VerifyReport> result = Verify(files, pem, anchors, log_end);
  if (!result.ok()) {
    err << "vecseal audit verify: " << pubkey_path << ": " << result.status().message() << "\n";
    return kExitUnreadable;
  }
  const VerifyReport& report = *result;
  if (json) {
    nlohmann::json warnings = nlohmann::json::array();
    for (const Finding& warning : report.warnings) warnings.push_back(FindingJson(warning));
    nlohmann::json body = {{"ok", report.ok()},
                           {"files", report.files},
                           {"records", report.records},
                           {"seals", report.seals},
                           {"first_seq", report.first_seq},
                           {"last_seq", report.last_seq},
                           {"last_sealed_seq", report.last_sealed_seq},
                           {"unsealed_tail", report.unsealed_tail},
                           {"error", report.error ? FindingJson(*report.error) : nlohmann::json()},
                           {"warnings", warnings}};
    out << body.dump(2) << "\n";
  } else {
    for (const Finding& warning : report.warnings) out << "warning: " << FindingText(warning) << "\n";
    if (report.error && IsEndOfLogFinding(report.error->code)) {
      out << "error: " << FindingText(*report.error) << "\n";
      out << "FAILED: no seal vouches for the end of the audit log (" << Count(report.records, "record")
          << " checked); for the log of a running daemon, use --allow-unsealed-tail\n";
    } else if (report.error) {
      out << "error: " << FindingText(*report.error) << "\n";
      out << "FAILED: the audit log was altered (" << Count(report.records, "record")
          << " checked before the error)\n";
    } else if (report.seals == 0) {
      out << "UNSIGNED: " << Count(report.records, "record") << " (seq " << report.first_seq << ".."
          << report.last_seq << ") in " << Count(report.files, "file")
          << ", 0 valid seals: nothing vouches for them, " << Count(report.warnings.size(), "warning")
          << "\n";
    } else {
      out << "OK: " << Count(report.records, "record") << " (seq " << report.first_seq << ".."
          << report.last_seq << ") in " << Count(report.files, "file") << ", "
          << Count(report.seals, "valid seal") << ", " << Count(report.warnings.size(), "warning")
          << "\n";
    }
  }
  if (report.error && report.error->code == "unreadable_file") return kExitUnreadable;
  return report.ok() ? kExitOk : kExitAltered;
}

struct ShowFilter {
  std::string key, caller, event, since, until;
};

bool Matches(const nlohmann::json& record, const ShowFilter& filter) {
  const auto str = [](const nlohmann::json& j, const char* name) {
    const auto it = j.find(name);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  if (!filter.key.empty() && str(record, "key") != filter.key) return false;
  if (!filter.event.empty() && str(record, "event") != filter.event) return false;
  const std::string time = str(record, "time");
  if (!filter.since.empty() && time < filter.since) return false;
  if (!filter.until.empty() && time >= filter.until) return false;
  if (!filter.caller.empty()) {
    const auto caller = record.find("caller");
    if (caller == record.end() || !caller->is_object()) return false;
    const auto uid = caller->find("uid");
    const bool uid_match = uid != caller->end() && uid->is_number_integer() &&
                           std::to_string(uid->get<int64_t>()) == filter.caller;
    if (!uid_match && str(*caller, "user") != filter.caller && str(*caller, "exe") != filter.caller &&
        str(*caller, "unit") != filter.caller) {
      return false;
    }
  }
  return true;
}

// Records are untrusted here: a field may have any type (json::value() would throw), and a
// string such as an exe path may carry control characters that forge lines on a terminal.
std::string Printable(const nlohmann::json& object, const char* name, std::string_view fallback) {
  const auto it = object.find(name);
  if (it == object.end()) return std::string(fallback);
  const std::string text =
      it->is_string() ? it->get<std::string>()
                      : it->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::string out;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7F) {
      static constexpr char kHexDigits[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHexDigits[byte >> 4]);
      out.push_back(kHexDigits[byte & 0xF]);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string HumanLine(const nlohmann::json& r) {
  std::ostringstream line;
  const auto put = [&](const char* label, const char* name) {
    if (r.contains(name)) line << " " << label << "=" << Printable(r, name, "");
  };
  line << Printable(r, "seq", "0") << " " << Printable(r, "time", "") << " "
       << Printable(r, "event", "");
  if (r.contains("decision")) line << " " << Printable(r, "decision", "");
  put("key", "key");
  put("version", "key_version");
  put("op", "operation");
  put("vectors", "vectors");
  put("dim", "dimension");
  put("reversible", "reversible");
  if (const auto caller = r.find("caller"); caller != r.end() && caller->is_object()) {
    line << " caller=" << Printable(*caller, "user", "?") << "(" << Printable(*caller, "uid", "-1")
         << ") pid=" << Printable(*caller, "pid", "-1");
    if (caller->contains("exe")) line << " exe=" << Printable(*caller, "exe", "");
    if (caller->contains("unit")) line << " unit=" << Printable(*caller, "unit", "");
  }
  put("rule", "rule_id");
  put("error", "error_code");
  put("request", "request_id");
  put("reason", "reason");
  put("last_seq", "last_seq");
  put("last_sealed_seq", "last_sealed_seq");
  return line.str();
}

// What `show --sum` adds up: one row per rule, key, caller and operation.
struct SumKey {
  std::string rule, key, uid, user, unit, operation;
  auto operator<=>(const SumKey&) const = default;
};
struct SumValue {
  uint64_t vectors = 0;
  uint64_t requests = 0;
};

void AddToSum(const nlohmann::json& record, std::map<SumKey, SumValue>* sums) {
  const std::string event = Printable(record, "event", "");
  const auto vectors = record.find("vectors");
  if ((event != "encrypt" && event != "decrypt") || vectors == record.end() ||
      !vectors->is_number_unsigned()) {
    return;
  }
  SumKey key{Printable(record, "rule_id", "-"), Printable(record, "key", "-"), "-1", "?", "-",
             event};
  if (const auto caller = record.find("caller"); caller != record.end() && caller->is_object()) {
    key.uid = Printable(*caller, "uid", "-1");
    key.user = Printable(*caller, "user", "?");
    key.unit = Printable(*caller, "unit", "-");
  }
  SumValue& value = (*sums)[key];
  value.vectors += vectors->get<uint64_t>();
  ++value.requests;
}

void PrintSums(const std::map<SumKey, SumValue>& sums, bool json, std::ostream& out) {
  for (const auto& [key, value] : sums) {
    if (json) {
      out << nlohmann::json{{"rule", key.rule}, {"key", key.key}, {"uid", key.uid},
                            {"user", key.user}, {"unit", key.unit}, {"operation", key.operation},
                            {"vectors", value.vectors}, {"requests", value.requests}}
                 .dump()
          << "\n";
    } else {
      out << "rule=" << key.rule << " key=" << key.key << " caller=" << key.user << "(" << key.uid
          << ") unit=" << key.unit << " op=" << key.operation << " vectors=" << value.vectors
          << " requests=" << value.requests << "\n";
    }
  }
}

int RunShow(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  ShowFilter filter;
  bool json = false;
  bool sum = false;
  std::map<SumKey, SumValue> sums;
  std::vector<std::string> operands;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    const bool has_value = i + 1 < args.size();
    if (arg == "--json") {
      json = true;
    } else if (arg == "--sum") {
      sum = true;
    } else if (arg == "--key" && has_value) {
      filter.key = args[++i];
    } else if (arg == "--caller" && has_value) {
      filter.caller = args[++i];
    } else if (arg == "--event" && has_value) {
      filter.event = args[++i];
    } else if ((arg == "--since" || arg == "--until") && has_value) {
      const std::string& time = args[++i];
      if (time.size() < 4 || !std::all_of(time.begin(), time.begin() + 4, [](char c) { return c >= '0' && c <= '9'; })) {
        err << "vecseal audit show: " << arg << " " << time
            << ": not an ISO 8601 UTC time such as 2026-11-25T03:04\n";
        return kExitUsage;
      }
      (arg == "--since" ? filter.since : filter.until) = time;
    } else if (arg.starts_with("--")) {
      err << "vecseal audit show: unknown or incomplete option " << arg << "\n" << kUsage;
      return kExitUsage;
    } else {
      operands.push_back(arg);
    }
  }
  if (operands.empty()) {
    err << "vecseal audit show: needs at least one file\n" << kUsage;
    return kExitUsage;
  }
  std::vector<std::string> files;
  if (!ExpandPaths(operands, &files, err)) return kExitUnreadable;
  for (const std::string& file : files) {
    std::ifstream in(file, std::ios::binary);
    if (!in) {
      err << "vecseal audit show: cannot open " << file << "\n";
      return kExitUnreadable;
    }
    std::string text;
    while (std::getline(in, text)) {
      if (in.eof()) break;  // a torn last line
      const auto record = nlohmann::json::parse(text, nullptr, false);
      if (record.is_discarded() || !record.is_object()) continue;
      if (!Matches(record, filter)) continue;
      if (sum) {
        AddToSum(record, &sums);
      } else {
        out << (json ? text : HumanLine(record)) << "\n";
      }
    }
  }
  PrintSums(sums, json, out);
  return kExitOk;
}

}  // namespace

int RunAuditCommand(std::span<const std::string> args, std::ostream& out, std::ostream& err) {
  if (args.empty()) {
    err << kUsage;
    return kExitUsage;
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "verify") return RunVerify(rest, out, err);
  if (args[0] == "show") return RunShow(rest, out, err);
  if (args[0] == "--help" || args[0] == "help") {
    out << kUsage;
    return kExitOk;
  }
  err << "vecseal audit: unknown command \"" << args[0] << "\"\n" << kUsage;
  return kExitUsage;
}

}  // namespace vecseal::audit
