// vecseald's command line: its parsing, the modes that only check (--check-config,
// --check-policy) or print, and the dispatch to serving or --init.
#include <iostream>
#include <string>

#include "check_policy.h"
#include "startup.h"
#include "vecseal/daemon/daemon.h"
#include "vecseal/daemon/init.h"
#include "vecseal/daemon/service.h"
#include "vecseal/daemon/settings.h"
#include "vecseal/policy/policy.h"

namespace vecseal::daemon {
namespace {

Status UsageError(std::string message) {
  return Status(Code::kInvalidArgument, "usage", std::move(message));
}

}  // namespace

std::string UsageText() {
  return "usage: vecseald [--config FILE]\n"
         "       vecseald --init [--config FILE] [--export-audit-key PEM]\n"
         "       vecseald --dev [--state-dir DIR] [--config FILE]\n"
         "       vecseald --check-config FILE\n"
         "       vecseald --check-policy FILE [--as-pid PID | --as-uid N --exe PATH "
         "[--unit UNIT] [--script PATH]] [--op OPERATION --key NAME]\n"
         "       vecseald --version\n";
}

Result<CommandLine> ParseCommandLine(std::span<const std::string> args) {
  CommandLine result;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    const auto value = [&](const char* flag) -> Result<std::string> {
      if (i + 1 >= args.size()) return UsageError(std::string(flag) + " needs a value");
      return args[++i];
    };
    if (arg == "--help" || arg == "-h") {
      result.mode = CommandLine::Mode::kHelp;
    } else if (arg == "--version") {
      result.mode = CommandLine::Mode::kVersion;
    } else if (arg == "--dev") {
      result.dev = true;
    } else if (arg == "--init") {
      result.mode = CommandLine::Mode::kInit;
    } else if (arg == "--config" || arg == "--check-config" || arg == "--state-dir" ||
               arg == "--export-audit-key") {
      auto text = value(arg.c_str());
      if (!text.ok()) return std::move(text).TakeStatus();
      if (arg == "--state-dir") {
        result.state_dir = *text;
      } else if (arg == "--export-audit-key") {
        result.export_audit_key = *text;
      } else {
        result.config_path = *text;
        if (arg == "--check-config") result.mode = CommandLine::Mode::kCheckConfig;
      }
    } else if (arg == "--check-policy") {
      result.mode = CommandLine::Mode::kCheckPolicy;
      result.check_policy_args.assign(args.begin() + static_cast<ptrdiff_t>(i) + 1, args.end());
      break;
    } else {
      return UsageError("unknown argument '" + arg + "'");
    }
  }
  if (!result.state_dir.empty() && !result.dev) {
    return UsageError("--state-dir is only meaningful with --dev");
  }
  if (result.dev && result.mode != CommandLine::Mode::kServe &&
      result.mode != CommandLine::Mode::kHelp) {
    return UsageError("--dev cannot be combined with --init, --check-config or --check-policy");
  }
  if (!result.export_audit_key.empty() && result.mode != CommandLine::Mode::kInit) {
    return UsageError("--export-audit-key is only meaningful with --init");
  }
  return result;
}

int CheckConfig(const std::string& path, std::ostream& out, std::ostream& err) {
  auto config = LoadTrustedConfig(path, ConfigKind::kDaemon);
  if (!config.ok()) {
    err << config.status().message() << "\n";
    return 1;
  }
  auto policy = policy::Policy::LoadFile(config->policy_file);
  if (!policy.ok()) {
    err << path << ": policy.file: " << policy.status().message() << "\n";
    return 1;
  }
  const size_t rules = (*policy)->rule_count();
  out << path << ": ok (policy " << config->policy_file << ": " << rules
      << (rules == 1 ? " rule)\n" : " rules)\n");
  if (const auto& token = config->audit.pkcs11) {
    out << path << ": audit key \"" << config->audit.key_label << "\" on its own token \""
        << token->token_label << "\" in " << token->module << "\n";
  }
  if (const std::string note = GroupSizeNote(*config); !note.empty()) {
    out << path << ": note: " << note << "\n";
  }
  return 0;
}


int Main(std::span<const std::string> args) {
  auto command_line = ParseCommandLine(args);
  if (!command_line.ok()) {
    std::cerr << "vecseald: " << command_line.status().message() << "\n" << UsageText();
    return 2;
  }
  switch (command_line->mode) {
    case CommandLine::Mode::kHelp:
      std::cout << UsageText();
      return 0;
    case CommandLine::Mode::kVersion:
      std::cout << "vecseald " << kVersion << "\n";
      return 0;
    case CommandLine::Mode::kInit: {
      InitOptions options;
      if (!command_line->config_path.empty()) options.config_path = command_line->config_path;
      if (!command_line->export_audit_key.empty()) {
        options.export_audit_key = command_line->export_audit_key;
      }
      return Init(options, std::cout);
    }
    case CommandLine::Mode::kCheckConfig:
      return CheckConfig(command_line->config_path, std::cout, std::cerr);
    case CommandLine::Mode::kCheckPolicy:
      return RunCheckPolicy(command_line->check_policy_args, std::cout, std::cerr);
    case CommandLine::Mode::kServe:
      break;
  }
  return Serve(*command_line);
}


}  // namespace vecseal::daemon
