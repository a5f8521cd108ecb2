#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "calibrate_command.h"
#include "vecseal/calibrate/calibration.h"
#include "vecseal/calibrate/report.h"
#include "vecseal/client/formats.h"
#include "vecseal/core/cipher.h"
#include "vecseal/core/deriver.h"

namespace vecseal::calibrate {

namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
// Calibration works on a sample; more rows only make it slower.
constexpr size_t kMaxSampleRows = 100000;
constexpr size_t kMaxClasses = 1000;

constexpr const char* kUsage =
    "usage: vecseal calibrate --sample S.npy [--labels L.txt|L.npy] [--queries Q.npy]\n"
    "                         [--betas 0.25,0.5,1,1.5,2,3,5] [--transform rotate|permute]\n"
    "                         [--out PREFIX] [--seed N] [--max-inversion-cosine 0.5]\n"
    "Encrypts the sample under an ephemeral in-memory key for each beta, measures search\n"
    "recall, classifier accuracy and two attacks, prints a table and writes PREFIX.json and\n"
    "PREFIX.svg (PREFIX defaults to \"report\"). It suggests as a budget the most known pairs\n"
    "that keep the inversion cosine under --max-inversion-cosine.\n";

struct Arguments {
  std::string sample;
  std::optional<std::string> labels;
  std::optional<std::string> queries;
  std::string betas = "0.25,0.5,1,1.5,2,3,5";
  std::string transform = "rotate";
  std::string out = "report";
  std::optional<std::string> seed;
  std::optional<std::string> max_inversion_cosine;
  bool help = false;
};

// A usage error: one line, exit code 2.
struct UsageError {
  std::string message;
};

std::optional<UsageError> Parse(std::span<const std::string> args, Arguments& parsed) {
  std::map<std::string, std::string*> values = {
      {"--sample", &parsed.sample},       {"--betas", &parsed.betas},
      {"--transform", &parsed.transform}, {"--out", &parsed.out}};
  std::map<std::string, std::optional<std::string>*> optional_values = {
      {"--labels", &parsed.labels},
      {"--queries", &parsed.queries},
      {"--seed", &parsed.seed},
      {"--max-inversion-cosine", &parsed.max_inversion_cosine}};
  std::set<std::string> seen;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string name = args[i];
    std::optional<std::string> value;
    if (name == "--help" || name == "-h") {
      parsed.help = true;
      continue;
    }
    if (!name.starts_with("--")) return UsageError{"unexpected argument '" + name + "'"};
    if (const size_t equals = name.find('='); equals != std::string::npos) {
      value = name.substr(equals + 1);
      name.resize(equals);
    }
    if (!values.contains(name) && !optional_values.contains(name)) {
      return UsageError{"unknown option '" + name + "'"};
    }
    if (!seen.insert(name).second) return UsageError{"option " + name + " is given twice"};
    if (!value) {
      if (i + 1 == args.size()) return UsageError{"option " + name + " needs a value"};
      value = args[++i];
    }
    if (value->empty()) return UsageError{"option " + name + " needs a non-empty value"};
    if (values.contains(name)) {
      *values[name] = *value;
    } else {
      *optional_values[name] = *value;
    }
  }
  if (!parsed.help && parsed.sample.empty()) return UsageError{"--sample is required"};
  return std::nullopt;
}

std::optional<UsageError> ParseBetas(const std::string& text, std::vector<double>& betas) {
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, comma - start);
    double beta = 0;
    const auto [end, error] = std::from_chars(item.data(), item.data() + item.size(), beta);
    if (item.empty() || error != std::errc() || end != item.data() + item.size() ||
        !std::isfinite(beta) || beta <= 0) {
      return UsageError{"--betas: '" + item + "' is not a positive number"};
    }
    if (std::ranges::find(betas, beta) != betas.end()) {
      return UsageError{"--betas: " + item + " is listed twice"};
    }
    betas.push_back(beta);
    start = comma + 1;
  }
  std::ranges::sort(betas);
  return std::nullopt;
}

Result<Matrix> ReadVectors(const std::string& path) {
  Result<client::Matrix> read = client::ReadMatrix(path);
  if (!read.ok()) {
    // Name the file once, whether or not the reader already did.
    const Status& status = read.status();
    const std::string& message = status.message();
    return Status(status.code(), status.reason(),
                  message.find(path) != std::string::npos ? message : path + ": " + message);
  }
  Matrix matrix;
  matrix.rows = read->rows;
  matrix.cols = read->dimension;
  matrix.values = std::move(read->data);
  if (matrix.rows == 0) return matrix;
  if (Status finite = core::ValidateVectors(matrix.values, matrix.cols); !finite.ok()) {
    const Status named = client::AtRow(std::move(finite), path, 0);
    return Status(named.code(), named.reason(), named.message() + "; repair or drop that row");
  }
  return matrix;
}

Status LabelError(const std::string& path, const std::string& message) {
  return Status(Code::kInvalidArgument, "invalid_labels",
                message.find(path) != std::string::npos ? message : path + ": " + message);
}

// Class names in sorted order (numerically when every name is an integer) become indices.
void IndexClasses(const std::vector<std::string>& names, Labels& labels, size_t& classes) {
  std::vector<std::string> distinct = names;
  std::ranges::sort(distinct);
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  const auto as_integer = [](const std::string& name) -> std::optional<long long> {
    long long value = 0;
    const auto [end, error] = std::from_chars(name.data(), name.data() + name.size(), value);
    if (error != std::errc() || end != name.data() + name.size()) return std::nullopt;
    return value;
  };
  if (std::ranges::all_of(distinct, [&](const std::string& name) { return as_integer(name).has_value(); })) {
    std::ranges::sort(distinct, {}, [&](const std::string& name) { return *as_integer(name); });
  }
  std::map<std::string, uint32_t> index;
  for (size_t i = 0; i < distinct.size(); ++i) index[distinct[i]] = static_cast<uint32_t>(i);
  labels.resize(names.size());
  for (size_t i = 0; i < names.size(); ++i) labels[i] = index[names[i]];
  classes = distinct.size();
}

// .txt: one label per line (any text). Anything else is a column of whole numbers.
Status ReadLabels(const std::string& path, Labels& labels, size_t& classes) {
  std::vector<std::string> names;
  if (path.ends_with(".txt")) {
    std::ifstream in(path);
    if (!in) return Status(Code::kInvalidArgument, "cannot_read", path + ": " + std::strerror(errno));
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      names.push_back(line);
    }
    if (in.bad()) return Status(Code::kInvalidArgument, "cannot_read", path + ": read failed");
    while (!names.empty() && names.back().empty()) names.pop_back();
    for (size_t i = 0; i < names.size(); ++i) {
      if (names[i].empty()) return LabelError(path, "line " + std::to_string(i + 1) + " is empty");
    }
  } else {
    Result<std::vector<int64_t>> column = client::ReadLabelColumn(path);
    if (!column.ok()) return LabelError(path, column.status().message());
    for (int64_t label : *column) names.push_back(std::to_string(label));
  }
  IndexClasses(names, labels, classes);
  if (classes > kMaxClasses) {
    return LabelError(path, std::to_string(classes) + " distinct labels; at most " +
                                std::to_string(kMaxClasses) + " are supported");
  }
  return Status::Ok();
}

Status WriteFile(const std::string& path, const std::string& text) {
  const std::string temporary = path + ".tmp";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) {
      return Status(Code::kUnavailable, "cannot_write", "cannot write " + path + ": " + std::strerror(errno));
    }
    out << text;
    out.flush();
    if (!out) {
      std::remove(temporary.c_str());
      return Status(Code::kUnavailable, "cannot_write", "cannot write " + path);
    }
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    std::remove(temporary.c_str());
    return Status(Code::kUnavailable, "cannot_write", "cannot write " + path + ": " + reason);
  }
  return Status::Ok();
}

// Minutes of measurement should not end in "cannot write": try the destination first.
Status CheckWritable(const std::string& path) {
  const std::string probe = path + ".tmp";
  std::ofstream out(probe, std::ios::binary | std::ios::trunc);
  if (!out) {
    return Status(Code::kUnavailable, "cannot_write", "cannot write " + path + ": " + std::strerror(errno));
  }
  out.close();
  std::remove(probe.c_str());
  return Status::Ok();
}

int Fail(std::ostream& err, const std::string& message, int code) {
  err << "vecseal calibrate: " << message << "\n";
  return code;
}

}  // namespace

int RunCalibrateCommand(std::span<const std::string> args, std::ostream& out, std::ostream& err) {
  Arguments arguments;
  if (auto error = Parse(args, arguments)) {
    return Fail(err, error->message + " (see --help)", kExitUsage);
  }
  if (arguments.help) {
    out << kUsage;
    return kExitOk;
  }
  CalibrationOptions options;
  if (auto error = ParseBetas(arguments.betas, options.betas)) {
    return Fail(err, error->message, kExitUsage);
  }
  Result<core::TransformKind> transform = core::ParseTransform(arguments.transform);
  if (!transform.ok()) {
    return Fail(err, "--transform: '" + arguments.transform + "' is not rotate or permute",
                kExitUsage);
  }
  options.transform = *transform;
  if (arguments.seed) {
    const std::string& text = *arguments.seed;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), options.seed);
    if (error != std::errc() || end != text.data() + text.size()) {
      return Fail(err, "--seed: '" + text + "' is not a non-negative integer", kExitUsage);
    }
  }
  if (arguments.max_inversion_cosine) {
    const std::string& text = *arguments.max_inversion_cosine;
    double limit = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), limit);
    if (error != std::errc() || end != text.data() + text.size() || !(limit > 0 && limit <= 1)) {
      return Fail(err, "--max-inversion-cosine: '" + text + "' is not a number in (0, 1]",
                  kExitUsage);
    }
    options.max_inversion_cosine = limit;
  }

  const std::string json_path = arguments.out + ".json";
  const std::string svg_path = arguments.out + ".svg";
  for (const std::string& path : {json_path, svg_path}) {
    if (Status status = CheckWritable(path); !status.ok()) {
      return Fail(err, status.message(), kExitFailed);
    }
  }

  CalibrationData data;
  Result<Matrix> sample = ReadVectors(arguments.sample);
  if (!sample.ok()) return Fail(err, sample.status().message(), kExitFailed);
  data.sample = std::move(sample).value();
  if (data.sample.rows > kMaxSampleRows) {
    return Fail(err, arguments.sample + ": " + std::to_string(data.sample.rows) +
                         " vectors; give a random sample of at most " +
                         std::to_string(kMaxSampleRows),
                kExitFailed);
  }
  if (arguments.queries) {
    Result<Matrix> queries = ReadVectors(*arguments.queries);
    if (!queries.ok()) return Fail(err, queries.status().message(), kExitFailed);
    data.queries = std::move(queries).value();
  }
  if (arguments.labels) {
    if (Status status = ReadLabels(*arguments.labels, data.labels, data.classes); !status.ok()) {
      return Fail(err, status.message(), kExitFailed);
    }
  }

  Result<std::unique_ptr<core::SoftwareDeriver>> deriver = core::SoftwareDeriver::CreateEphemeral();
  if (!deriver.ok()) return Fail(err, deriver.status().message(), kExitFailed);
  Result<CalibrationReport> report =
      RunCalibration(data, options, std::shared_ptr<core::Deriver>(std::move(deriver).value()));
  if (!report.ok()) return Fail(err, report.status().message(), kExitFailed);

  out << RenderTable(*report);
  if (Status status = WriteFile(json_path, RenderJson(*report)); !status.ok()) {
    return Fail(err, status.message(), kExitFailed);
  }
  if (Status status = WriteFile(svg_path, RenderSvg(*report)); !status.ok()) {
    return Fail(err, status.message(), kExitFailed);
  }
  out << "wrote " << json_path << " and " << svg_path << "\n";
  return kExitOk;
}

}  // namespace vecseal::calibrate
