#include "cli.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <iomanip>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "audit_command.h"
#include "calibrate_command.h"
#include "vecseal/client/client.h"
#include "vecseal/client/formats.h"

namespace vecseal::cli {
namespace {

using client::AtRow;
using client::Client;
using client::ClientOptions;

constexpr std::string_view kUsage = R"(usage: vecseal [--socket PATH] COMMAND [ARGS]

Commands:
  encrypt --key NAME [--key-version N] [--reversible --tokens OUT.tok] [--field F] [--dim D]
          [--batch N] [--format npy|fvecs|jsonl|f32] IN OUT
  decrypt --key NAME --tokens IN.tok [--field F] [--dim D] [--batch N]
          [--format npy|fvecs|jsonl|f32] IN OUT
  rewrap --key NAME --tokens IN.tok --tokens-out OUT.tok [--field F] [--dim D] [--batch N]
         [--format npy|fvecs|jsonl|f32] IN OUT
          reversible ciphertexts re-encrypted under the newest key version, in vecseald
  keys list
  keys create NAME --approximation-factor BETA [--transform rotate|permute] [--dimension D]
                   [--derivation aes|hmac]
  keys rotate NAME
  keys show NAME          the key's versions, which of them are retired, its minimum versions
  keys config NAME [--min-encryption-version N] [--min-decryption-version M]
  keys delete NAME [--force]   destroy every version in the HSM (--force: although the
                               policy still names the key)
  whoami          what vecseald knows about you and what the policy grants you
  status          vecseald's health (HSM, audit log)
  audit verify|show ...   check or read the audit log (vecseal audit --help)
  calibrate ...           choose the approximation factor on your own vectors

Files are read and written by extension: .npy (float32/float64, 2-D), .fvecs, .jsonl (one
object per line, vector in --field, default "embedding"; other fields are copied), .f32 (raw
little-endian float32, needs --dim). Outputs appear only when complete.

The socket is --socket, else $VECSEAL_SOCKET, else /run/vecseal/vecseald.sock.

Exit codes:
  0 success          4 permission denied     7 vecseald unavailable (HSM, audit log, busy)
  1 other failure    5 input rejected        8 local file cannot be read or written
  2 usage error      6 no such key / exists  130 interrupted (outputs removed)
  3 cannot reach vecseald
)";

constexpr size_t kDefaultBatch = 1024;

Status Usage(std::string message) {
  return Status(Code::kInvalidArgument, "usage", std::move(message));
}

// A small option parser: "--name VALUE", "--name=VALUE", flags, and positionals.
class Args {
 public:
  Args(std::span<const std::string> args, std::initializer_list<std::string_view> with_value,
       std::initializer_list<std::string_view> flags)
      : args_(args), with_value_(with_value), flags_(flags) {}

  Status Parse() {
    for (size_t i = 0; i < args_.size(); ++i) {
      const std::string& arg = args_[i];
      if (arg == "--") {
        positionals_.insert(positionals_.end(), args_.begin() + static_cast<ptrdiff_t>(i) + 1, args_.end());
        break;
      }
      if (arg.size() < 2 || arg.compare(0, 2, "--") != 0) {
        positionals_.push_back(arg);
        continue;
      }
      const size_t eq = arg.find('=');
      const std::string name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
      if (std::find(flags_.begin(), flags_.end(), name) != flags_.end()) {
        if (eq != std::string::npos) return Usage("option --" + name + " takes no value");
        values_[name] = "true";
      } else if (std::find(with_value_.begin(), with_value_.end(), name) != with_value_.end()) {
        if (eq != std::string::npos) {
          values_[name] = arg.substr(eq + 1);
        } else if (i + 1 < args_.size()) {
          values_[name] = args_[++i];
        } else {
          return Usage("option --" + name + " needs a value");
        }
      } else {
        return Usage("unknown option " + arg.substr(0, eq));
      }
    }
    return Status::Ok();
  }

  bool Has(const std::string& name) const { return values_.count(name) != 0; }
  std::string Get(const std::string& name, std::string fallback = "") const {
    const auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
  }
  Result<size_t> GetSize(const std::string& name, size_t fallback, size_t min) const {
    if (!Has(name)) return fallback;
    const std::string text = Get(name);
    size_t value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size() || value < min) {
      return Usage("--" + name + " must be an integer of at least " + std::to_string(min) +
                   ", not '" + text + "'");
    }
    return value;
  }
  const std::vector<std::string>& positionals() const { return positionals_; }

 private:
  std::span<const std::string> args_;
  std::vector<std::string_view> with_value_;
  std::vector<std::string_view> flags_;
  std::map<std::string, std::string> values_;
  std::vector<std::string> positionals_;
};

// Rate and ETA on stderr when it is a terminal; nothing otherwise, so logs stay clean.
class Progress {
 public:
  Progress(std::ostream& err, bool enabled, uint64_t total_bytes)
      : err_(err), enabled_(enabled), total_bytes_(total_bytes), start_(Clock::now()) {}

  void Update(uint64_t rows, uint64_t bytes) {
    if (!enabled_) return;
    const auto now = Clock::now();
    if (now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    const double seconds = std::chrono::duration<double>(now - start_).count();
    const double fraction = total_bytes_ == 0 ? 1.0 : static_cast<double>(bytes) / static_cast<double>(total_bytes_);
    const double rate = seconds > 0 ? static_cast<double>(rows) / seconds : 0;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(fraction * kWidth);
    std::ostringstream line;
    line << "\r[" << std::string(static_cast<size_t>(filled), '=')
         << std::string(static_cast<size_t>(kWidth - filled), ' ') << "] " << std::setw(3)
         << static_cast<int>(fraction * 100) << "% " << rows << " vectors, "
         << static_cast<uint64_t>(rate) << "/s";
    if (fraction > 0 && fraction < 1) {
      const auto eta = static_cast<uint64_t>(seconds * (1 - fraction) / fraction);
      line << ", ETA " << eta / 60 << ":" << std::setw(2) << std::setfill('0') << eta % 60;
    }
    line << "   ";
    err_ << line.str() << std::flush;
    drawn_ = true;
  }

  void Finish() {
    if (drawn_) err_ << "\r" << std::string(78, ' ') << "\r" << std::flush;
  }

 private:
  using Clock = std::chrono::steady_clock;
  std::ostream& err_;
  bool enabled_;
  uint64_t total_bytes_;
  Clock::time_point start_;
  Clock::time_point last_draw_{};
  bool drawn_ = false;
};

Status Interrupted() {
  return Status(Code::kUnavailable, "interrupted", "interrupted; no output was written");
}

// The daemon's limits.max_vectors or max_body_bytes is below --batch: say which option to lower.
Status NameBatchOption(Status status, size_t batch) {
  if (status.reason() != "too_many_vectors" && status.reason() != "body_too_large") return status;
  return Status(status.code(), status.reason(),
                "--batch " + std::to_string(batch) + " is too large for this daemon: " +
                    status.message());
}

Result<std::unique_ptr<Client>> ConnectClient(const std::string& socket,
                                              const std::atomic<bool>* cancel = nullptr) {
  ClientOptions options;
  options.socket_path = socket;
  options.cancel = cancel;
  return Client::Connect(std::move(options));
}

// What a file transfer asks of the daemon for each batch.
enum class Transfer { kEncrypt, kDecrypt, kRewrap };

std::string TransferName(Transfer transfer) {
  switch (transfer) {
    case Transfer::kEncrypt: return "encrypt";
    case Transfer::kDecrypt: return "decrypt";
    case Transfer::kRewrap: return "rewrap";
  }
  return "";
}

struct TransferArgs {
  Transfer transfer = Transfer::kEncrypt;
  std::string key, in, out, tokens, field;
  std::string tokens_out;  // rewrap: the new tokens
  size_t dimension = 0;
  size_t batch = kDefaultBatch;
  bool reversible = false;
  std::optional<uint32_t> key_version;  // empty: the newest
  // --format: of IN and OUT where the name does not say it (no known extension).
  std::optional<client::VectorFormat> format;
};

// The format of `path`: its extension's, else --format's.
Result<client::VectorFormat> FormatOf(const std::string& path,
                                      std::optional<client::VectorFormat> format) {
  Result<client::VectorFormat> by_name = client::FormatFromPath(path);
  if (by_name.ok() || format) return by_name.ok() ? *by_name : *format;
  return Status(by_name.status().code(), by_name.status().reason(),
                by_name.status().message() + " with --format npy|fvecs|jsonl|f32");
}

Result<TransferArgs> ParseTransfer(std::span<const std::string> args, Transfer transfer) {
  Args parsed(args,
              {"key", "tokens", "tokens-out", "field", "dim", "batch", "key-version", "format"},
              {"reversible"});
  VECSEAL_RETURN_IF_ERROR(parsed.Parse());
  TransferArgs t;
  t.transfer = transfer;
  t.key = parsed.Get("key");
  t.tokens = parsed.Get("tokens");
  t.tokens_out = parsed.Get("tokens-out");
  t.field = parsed.Get("field", "embedding");
  t.reversible = parsed.Has("reversible");
  const bool encrypt = transfer == Transfer::kEncrypt;
  const std::string command = TransferName(transfer);
  if (!encrypt && t.reversible) return Usage(command + " takes no --reversible");
  if (!encrypt && parsed.Has("key-version")) {
    return Usage(command + " takes no --key-version: the tokens name the version");
  }
  if ((transfer == Transfer::kRewrap) == t.tokens_out.empty()) {
    return Usage(transfer == Transfer::kRewrap ? "rewrap needs --tokens-out OUT.tok"
                                               : command + " takes no --tokens-out");
  }
  Result<size_t> version = parsed.GetSize("key-version", 0, 1);
  if (!version.ok()) return std::move(version).TakeStatus();
  if (*version > UINT32_MAX) return Usage("--key-version is too large");
  if (*version != 0) t.key_version = static_cast<uint32_t>(*version);
  if (t.key.empty()) return Usage(command + " needs --key NAME");
  if (parsed.positionals().size() != 2) return Usage(command + " needs IN and OUT files");
  t.in = parsed.positionals()[0];
  t.out = parsed.positionals()[1];
  if (encrypt && t.reversible != !t.tokens.empty()) {
    return Usage("--reversible and --tokens OUT.tok go together");
  }
  if (!encrypt && t.tokens.empty()) return Usage(command + " needs --tokens IN.tok");
  Result<size_t> dim = parsed.GetSize("dim", 0, 1);
  if (!dim.ok()) return std::move(dim).TakeStatus();
  t.dimension = *dim;
  Result<size_t> batch = parsed.GetSize("batch", kDefaultBatch, 1);
  if (!batch.ok()) return std::move(batch).TakeStatus();
  t.batch = *batch;
  if (parsed.Has("format")) {
    Result<client::VectorFormat> format = client::FormatFromName(parsed.Get("format"));
    if (!format.ok()) return Usage("--format: " + format.status().message());
    t.format = *format;
  }
  std::vector<std::string> files = {t.in, t.out};
  for (const std::string& named : {t.tokens, t.tokens_out}) {
    if (!named.empty()) files.push_back(named);
  }
  std::sort(files.begin(), files.end());
  if (std::adjacent_find(files.begin(), files.end()) != files.end()) {
    return Usage("IN, OUT and the token files must be different files");
  }
  return t;
}

Status RunTransfer(const TransferArgs& t, const std::string& socket, std::ostream& err,
                   const std::atomic<bool>& interrupted) {
  const bool encrypt = t.transfer == Transfer::kEncrypt;
  client::FormatOptions in_options;
  in_options.dimension = t.dimension;
  in_options.field = t.field;
  Result<client::VectorFormat> in_format = FormatOf(t.in, t.format);
  if (!in_format.ok()) return std::move(in_format).TakeStatus();
  in_options.format = *in_format;
  Result<client::VectorFormat> out_format = FormatOf(t.out, t.format);
  if (!out_format.ok()) return std::move(out_format).TakeStatus();

  Result<std::unique_ptr<client::VectorReader>> reader = client::OpenVectorReader(t.in, in_options);
  if (!reader.ok()) return std::move(reader).TakeStatus();
  const size_t dimension = (*reader)->dimension();

  std::unique_ptr<client::TokenFileReader> token_in;
  if (!encrypt) {
    Result<std::unique_ptr<client::TokenFileReader>> opened =
        client::TokenFileReader::Open(t.tokens, client::kTokenSize);
    if (!opened.ok()) return std::move(opened).TakeStatus();
    token_in = std::move(opened).value();
    if ((*reader)->rows() && *(*reader)->rows() != token_in->count()) {
      return Status(Code::kInvalidArgument, "token_count_mismatch",
                    t.tokens + " holds " + std::to_string(token_in->count()) + " tokens but " +
                        t.in + " holds " + std::to_string(*(*reader)->rows()) + " vectors");
    }
  }

  Result<std::unique_ptr<Client>> connected = ConnectClient(socket, &interrupted);
  if (!connected.ok()) return std::move(connected).TakeStatus();
  Client& daemon = **connected;

  // The destination files exist only as temporaries until both are committed.
  std::unique_ptr<client::TokenFileWriter> token_out;
  if ((encrypt && t.reversible) || t.transfer == Transfer::kRewrap) {
    Result<std::unique_ptr<client::TokenFileWriter>> created =
        client::TokenFileWriter::Create(encrypt ? t.tokens : t.tokens_out, client::kTokenSize);
    if (!created.ok()) return std::move(created).TakeStatus();
    token_out = std::move(created).value();
  }
  client::FormatOptions out_options;
  out_options.field = t.field;
  out_options.format = *out_format;
  Result<std::unique_ptr<client::VectorWriter>> writer =
      client::CreateVectorWriter(t.out, dimension, out_options);
  if (!writer.ok()) return std::move(writer).TakeStatus();

  Progress progress(err, ::isatty(STDERR_FILENO) == 1, (*reader)->file_size());
  std::vector<float> chunk;
  std::vector<uint8_t> tokens;
  uint64_t rows_done = 0;
  std::optional<uint32_t> key_version;
  while (true) {
    if (interrupted.load()) return Interrupted();
    Result<size_t> n = (*reader)->Next(t.batch, chunk);
    if (!n.ok()) return std::move(n).TakeStatus();
    if (*n == 0) break;
    std::vector<client::JsonlRecord> records((*reader)->records().begin(), (*reader)->records().end());
    uint32_t version = 0;
    if (encrypt) {
      Result<client::EncryptResult> sealed = daemon.Encrypt(t.key, chunk, dimension, t.reversible, t.key_version);
      if (!sealed.ok()) {
        return NameBatchOption(AtRow(std::move(sealed).TakeStatus(), t.in, rows_done), t.batch);
      }
      version = sealed->key_version;
      VECSEAL_RETURN_IF_ERROR((*writer)->Write(sealed->vectors, records));
      if (token_out) VECSEAL_RETURN_IF_ERROR(token_out->Write(sealed->tokens));
    } else {
      Result<size_t> got = token_in->Next(*n, tokens);
      if (!got.ok()) return std::move(got).TakeStatus();
      if (*got != *n) {
        return Status(Code::kInvalidArgument, "token_count_mismatch",
                      t.tokens + " holds fewer tokens than " + t.in + " holds vectors");
      }
      if (t.transfer == Transfer::kRewrap) {
        Result<client::EncryptResult> moved = daemon.Rewrap(t.key, chunk, dimension, tokens);
        if (!moved.ok()) {
          return NameBatchOption(AtRow(std::move(moved).TakeStatus(), t.in, rows_done), t.batch);
        }
        version = moved->key_version;
        VECSEAL_RETURN_IF_ERROR((*writer)->Write(moved->vectors, records));
        VECSEAL_RETURN_IF_ERROR(token_out->Write(moved->tokens));
      } else {
        Result<client::DecryptResult> opened = daemon.Decrypt(t.key, chunk, dimension, tokens);
        if (!opened.ok()) {
          return NameBatchOption(AtRow(std::move(opened).TakeStatus(), t.in, rows_done), t.batch);
        }
        VECSEAL_RETURN_IF_ERROR((*writer)->Write(opened->vectors, records));
      }
    }
    // One output file, one key version: a rotation mid-run would mix two keys in one training
    // set, which no model could use.
    if (t.transfer != Transfer::kDecrypt) {
      if (key_version && *key_version != version) {
        return Status(Code::kFailedPrecondition, "key_rotated",
                      "key '" + t.key + "' was rotated during the run (version " +
                          std::to_string(*key_version) + " then " + std::to_string(version) +
                          "); run the command again");
      }
      key_version = version;
    }
    rows_done += *n;
    progress.Update(rows_done, (*reader)->bytes_read());
  }
  if (!encrypt && rows_done != token_in->count()) {
    return Status(Code::kInvalidArgument, "token_count_mismatch",
                  t.tokens + " holds " + std::to_string(token_in->count()) + " tokens but " +
                      t.in + " holds " + std::to_string(rows_done) + " vectors");
  }
  if (interrupted.load()) return Interrupted();
  if (token_out) VECSEAL_RETURN_IF_ERROR(token_out->Commit());
  VECSEAL_RETURN_IF_ERROR((*writer)->Commit());
  progress.Finish();
  if (::isatty(STDERR_FILENO) == 1) {
    err << (encrypt ? "encrypted " : t.transfer == Transfer::kDecrypt ? "decrypted " : "rewrapped ")
        << rows_done << " vectors of dimension "
        << dimension << " with key '" << t.key << "'"
        << (key_version ? " version " + std::to_string(*key_version) : std::string()) << " into "
        << t.out << "\n";
  }
  return Status::Ok();
}

void PrintKey(const client::KeyInfo& key, std::ostream& out) {
  out << key.name << "  version " << key.version << "  " << key.transform << "  beta "
      << key.approximation_factor << "  dimension "
      << (key.dimension ? std::to_string(*key.dimension) : std::string("any"));
  if (key.format != 0) out << "  format v" << key.format << " (" << key.derivation << ")";
  out << "  created " << key.created << "\n";
  // Older versions in another format still decrypt their tokens: say which they are.
  if (key.formats.size() == key.versions.size()) {
    std::string older;
    for (size_t i = 0; i < key.versions.size(); ++i) {
      if (key.versions[i] == key.version || key.formats[i] == key.format) continue;
      older += (older.empty() ? "" : ", ") + std::string("v") + std::to_string(key.versions[i]) +
               " format v" + std::to_string(key.formats[i]);
    }
    if (!older.empty()) out << "  older versions: " << older << "\n";
  }
}

// "  versions: v1 retired, v2 decrypt_only, v3 active  (min encryption 3, min decryption 2)".
void PrintVersionStates(const client::KeyInfo& key, std::ostream& out) {
  out << "  versions:";
  for (size_t i = 0; i < key.versions.size(); ++i) {
    out << (i == 0 ? " v" : ", v") << key.versions[i] << " "
        << (i < key.states.size() ? key.states[i] : "?");
  }
  out << "  (min encryption " << key.min_encryption_version << ", min decryption "
      << key.min_decryption_version << ")\n";
}

Status RunKeys(std::span<const std::string> args, const std::string& socket, std::ostream& out) {
  Args parsed(args,
              {"approximation-factor", "transform", "dimension", "derivation",
               "min-encryption-version", "min-decryption-version"},
              {"force"});
  VECSEAL_RETURN_IF_ERROR(parsed.Parse());
  const std::vector<std::string>& pos = parsed.positionals();
  if (pos.empty()) return Usage("keys needs list, create, rotate, show, config or delete");
  const std::string& sub = pos[0];
  if (sub == "list") {
    if (pos.size() != 1) return Usage("keys list takes no arguments");
    Result<std::unique_ptr<Client>> daemon = ConnectClient(socket);
    if (!daemon.ok()) return std::move(daemon).TakeStatus();
    Result<std::vector<client::KeyInfo>> keys = (*daemon)->ListKeys();
    if (!keys.ok()) return std::move(keys).TakeStatus();
    if (keys->empty()) out << "no keys (or none the policy lets you use)\n";
    for (const client::KeyInfo& key : *keys) PrintKey(key, out);
    return Status::Ok();
  }
  if (sub == "create") {
    if (pos.size() != 2) return Usage("keys create needs exactly one NAME");
    client::KeySpec spec;
    spec.name = pos[1];
    if (!parsed.Has("approximation-factor")) {
      return Usage("keys create needs --approximation-factor BETA (see: vecseal calibrate)");
    }
    const std::string beta = parsed.Get("approximation-factor");
    const auto [end, ec] = std::from_chars(beta.data(), beta.data() + beta.size(), spec.approximation_factor);
    if (ec != std::errc() || end != beta.data() + beta.size() || !(spec.approximation_factor > 0)) {
      return Usage("--approximation-factor must be a positive number, not '" + beta + "'");
    }
    spec.transform = parsed.Get("transform", "rotate");
    if (spec.transform != "rotate" && spec.transform != "permute") {
      return Usage("--transform must be rotate or permute, not '" + spec.transform + "'");
    }
    spec.derivation = parsed.Get("derivation", "");
    if (!spec.derivation.empty() && spec.derivation != "aes" && spec.derivation != "hmac") {
      return Usage("--derivation must be aes or hmac, not '" + spec.derivation + "'");
    }
    if (parsed.Has("dimension")) {
      Result<size_t> dim = parsed.GetSize("dimension", 0, 1);
      if (!dim.ok()) return std::move(dim).TakeStatus();
      spec.dimension = *dim;
    }
    Result<std::unique_ptr<Client>> daemon = ConnectClient(socket);
    if (!daemon.ok()) return std::move(daemon).TakeStatus();
    Result<client::KeyInfo> key = (*daemon)->CreateKey(spec);
    if (!key.ok()) return std::move(key).TakeStatus();
    out << "created ";
    PrintKey(*key, out);
    return Status::Ok();
  }
  if (sub == "rotate") {
    if (pos.size() != 2) return Usage("keys rotate needs exactly one NAME");
    Result<std::unique_ptr<Client>> daemon = ConnectClient(socket);
    if (!daemon.ok()) return std::move(daemon).TakeStatus();
    Result<client::KeyInfo> key = (*daemon)->RotateKey(pos[1]);
    if (!key.ok()) return std::move(key).TakeStatus();
    out << "rotated ";
    PrintKey(*key, out);
    return Status::Ok();
  }
  if (sub == "show") {
    if (pos.size() != 2) return Usage("keys show needs exactly one NAME");
    Result<std::unique_ptr<Client>> daemon = ConnectClient(socket);
    if (!daemon.ok()) return std::move(daemon).TakeStatus();
    Result<client::KeyInfo> key = (*daemon)->GetKey(pos[1]);
    if (!key.ok()) return std::move(key).TakeStatus();
    PrintKey(*key, out);
    PrintVersionStates(*key, out);
    return Status::Ok();
  }
  if (sub == "config") {
    if (pos.size() != 2) return Usage("keys config needs exactly one NAME");
    std::optional<uint32_t> minimums[2];
    const char* names[2] = {"min-encryption-version", "min-decryption-version"};
    for (size_t i = 0; i < 2; ++i) {
      if (!parsed.Has(names[i])) continue;
      Result<size_t> version = parsed.GetSize(names[i], 0, 1);
      if (!version.ok()) return std::move(version).TakeStatus();
      if (*version > UINT32_MAX) return Usage(std::string("--") + names[i] + " is too large");
      minimums[i] = static_cast<uint32_t>(*version);
    }
    if (!minimums[0] && !minimums[1]) {
      return Usage("keys config needs --min-encryption-version N, --min-decryption-version M "
                   "or both");
    }
    Result<std::unique_ptr<Client>> daemon = ConnectClient(socket);
    if (!daemon.ok()) return std::move(daemon).TakeStatus();
    Result<client::KeyInfo> key = (*daemon)->ConfigureKey(pos[1], minimums[0], minimums[1]);
    if (!key.ok()) return std::move(key).TakeStatus();
    out << "configured ";
    PrintKey(*key, out);
    PrintVersionStates(*key, out);
    return Status::Ok();
  }
  if (sub == "delete") {
    if (pos.size() != 2) return Usage("keys delete needs exactly one NAME");
    Result<std::unique_ptr<Client>> daemon = ConnectClient(socket);
    if (!daemon.ok()) return std::move(daemon).TakeStatus();
    Result<std::vector<uint32_t>> destroyed = (*daemon)->DeleteKey(pos[1], parsed.Has("force"));
    if (!destroyed.ok()) return std::move(destroyed).TakeStatus();
    out << "deleted " << pos[1] << ": destroyed versions";
    for (uint32_t version : *destroyed) out << " " << version;
    out << "\n";
    return Status::Ok();
  }
  return Usage("unknown keys command '" + sub + "' (list, create, rotate, show, config or delete)");
}

std::string Scalar(const nlohmann::json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_null()) return "-";
  // A group of whoami's "groups": its name, and its gid as the kernel gave it.
  if (value.is_object() && value.contains("gid")) {
    const nlohmann::json name = value.value("name", nlohmann::json());
    return (name.is_string() ? name.get<std::string>() + " " : std::string()) + "(" +
           value["gid"].dump() + ")";
  }
  if (value.is_array()) {
    std::string joined;
    for (const nlohmann::json& v : value) joined += (joined.empty() ? "" : ", ") + Scalar(v);
    return joined.empty() ? "-" : joined;
  }
  return value.dump();
}

Status RunWhoami(std::span<const std::string> args, const std::string& socket, std::ostream& out) {
  if (!args.empty()) return Usage("whoami takes no arguments");
  Result<std::unique_ptr<Client>> daemon = ConnectClient(socket);
  if (!daemon.ok()) return std::move(daemon).TakeStatus();
  Result<std::string> body = (*daemon)->Whoami();
  if (!body.ok()) return std::move(body).TakeStatus();
  const nlohmann::json who = nlohmann::json::parse(*body, nullptr, false);
  if (!who.is_object()) {
    return Status(Code::kInternal, "bad_response", "unexpected answer from vecseald: whoami is not JSON");
  }
  if (who.contains("identity") && who["identity"].is_object()) {
    size_t width = 0;
    for (const auto& [name, value] : who["identity"].items()) width = std::max(width, name.size());
    for (const auto& [name, value] : who["identity"].items()) {
      out << std::left << std::setw(static_cast<int>(width + 2)) << (name + ":") << Scalar(value)
          << "\n";
    }
  }
  out << "grants:";
  if (!who.contains("grants") || !who["grants"].is_array() || who["grants"].empty()) {
    out << " none (the policy grants this caller nothing)\n";
    return Status::Ok();
  }
  out << "\n";
  for (const nlohmann::json& grant : who["grants"]) {
    if (!grant.is_object()) continue;
    out << "  rule " << Scalar(grant.value("rule", nlohmann::json())) << ": "
        << Scalar(grant.value("operations", nlohmann::json())) << " on keys "
        << Scalar(grant.value("keys", nlohmann::json())) << "\n";
  }
  return Status::Ok();
}

Result<int> RunStatus(std::span<const std::string> args, const std::string& socket, std::ostream& out) {
  if (!args.empty()) return Usage("status takes no arguments");
  Result<std::unique_ptr<Client>> daemon = ConnectClient(socket);
  if (!daemon.ok()) return std::move(daemon).TakeStatus();
  Result<client::HttpResponse> health = (*daemon)->Health();
  if (!health.ok()) return std::move(health).TakeStatus();
  const nlohmann::json body = nlohmann::json::parse(health->body, nullptr, false);
  const auto field = [&](const char* name) {
    return body.is_object() && body.contains(name) ? Scalar(body[name]) : std::string("?");
  };
  out << "vecseald at " << (*daemon)->socket_path() << ": " << field("status") << " (hsm "
      << field("hsm") << ", audit " << field("audit") << ", version " << field("version")
      << ")\n";
  return health->status == 200 ? kExitOk : kExitUnavailable;
}

bool IsFileReason(const std::string& reason) {
  return reason == "file_not_found" || reason == "file_permission_denied" ||
         reason == "io_error" || reason == "no_space" || reason == "write_failed" ||
         reason == "not_a_regular_file" || reason == "invalid_path";
}

}  // namespace

ExitCode ExitCodeFor(const Status& status) {
  if (status.ok()) return kExitOk;
  const std::string& reason = status.reason();
  if (reason == "usage") return kExitUsage;
  if (reason == "interrupted") return kExitInterrupted;
  if (reason == "connect_failed" || reason == "connection_lost" || reason == "daemon_timeout") {
    return kExitUnreachable;
  }
  if (IsFileReason(reason)) return kExitFileError;
  switch (status.code()) {
    case Code::kPermissionDenied: return kExitDenied;
    case Code::kNotFound:
    case Code::kAlreadyExists: return kExitNoKey;
    case Code::kUnavailable: return kExitUnavailable;
    case Code::kInvalidArgument:
    case Code::kAuthenticationFailed:
    case Code::kFailedPrecondition:
    case Code::kResourceExhausted: return kExitBadInput;
    default: return kExitFailure;
  }
}

std::string ErrorLine(const Status& status) {
  const std::string& reason = status.reason();
  const std::string& message = status.message();
  if (reason == "connect_failed") {
    if (status.code() == Code::kPermissionDenied) {
      return message + " (is this user allowed on the socket? check its group and mode)";
    }
    return message + " (is vecseald running? try: systemctl status vecseald)";
  }
  if (reason == "permission_denied") return "permission denied: " + message + " (see: vecseal whoami)";
  if (reason == "key_not_found") return message + " (see: vecseal keys list)";
  // Said from the caller's side: the daemon's own message is about its record of the request.
  if (reason == "audit_unavailable") {
    return "vecseald cannot write its audit log, so it serves nothing (see: vecseal status and "
           "vecseald's log)";
  }
  if (reason == "usage") return message + " (see: vecseal --help)";
  return message;
}

int Run(std::span<const std::string> args, std::ostream& out, std::ostream& err,
        const std::atomic<bool>& interrupted) {
  std::string socket;
  size_t i = 0;
  // Global options come before the command; --socket is also accepted after it.
  for (; i < args.size(); ++i) {
    if (args[i] == "--help" || args[i] == "-h" || args[i] == "help") {
      out << kUsage;
      return kExitOk;
    }
    if (args[i] == "--version") {
      out << "vecseal 0.1.0\n";
      return kExitOk;
    }
    if (args[i] == "--socket" && i + 1 < args.size()) {
      socket = args[++i];
    } else if (args[i].rfind("--socket=", 0) == 0) {
      socket = args[i].substr(9);
    } else {
      break;
    }
  }
  if (i == args.size()) {
    err << kUsage;
    return kExitUsage;
  }
  const std::string command = args[i];
  std::vector<std::string> rest;
  for (size_t j = i + 1; j < args.size(); ++j) {
    if (command != "audit" && command != "calibrate") {
      if (args[j] == "--socket" && j + 1 < args.size()) {
        socket = args[++j];
        continue;
      }
      if (args[j].rfind("--socket=", 0) == 0) {
        socket = args[j].substr(9);
        continue;
      }
    }
    rest.push_back(args[j]);
  }
  if ((command == "encrypt" || command == "decrypt" || command == "rewrap" || command == "keys" ||
       command == "whoami" || command == "status") &&
      std::find(rest.begin(), rest.end(), "--help") != rest.end()) {
    out << kUsage;
    return kExitOk;
  }

  Status status;
  int code = kExitOk;
  if (command == "encrypt" || command == "decrypt" || command == "rewrap") {
    const Transfer transfer = command == "encrypt"   ? Transfer::kEncrypt
                              : command == "decrypt" ? Transfer::kDecrypt
                                                     : Transfer::kRewrap;
    Result<TransferArgs> parsed = ParseTransfer(rest, transfer);
    status = parsed.ok() ? RunTransfer(*parsed, socket, err, interrupted)
                         : std::move(parsed).TakeStatus();
  } else if (command == "keys") {
    status = RunKeys(rest, socket, out);
  } else if (command == "whoami") {
    status = RunWhoami(rest, socket, out);
  } else if (command == "status") {
    Result<int> result = RunStatus(rest, socket, out);
    if (result.ok()) return *result;
    status = std::move(result).TakeStatus();
  } else if (command == "audit") {
    return audit::RunAuditCommand(rest, out, err);
  } else if (command == "calibrate") {
    return calibrate::RunCalibrateCommand(rest, out, err);
  } else {
    status = Usage("unknown command '" + command + "'");
  }
  if (status.ok()) return code;
  err << "vecseal: " << ErrorLine(status) << "\n";
  return ExitCodeFor(status);
}

}  // namespace vecseal::cli
