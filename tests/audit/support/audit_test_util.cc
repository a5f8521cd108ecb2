#include "audit_test_util.h"

#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "vecseal/audit/verify.h"

namespace vecseal::audit::testing {

TempDir::TempDir() {
  std::string pattern = std::filesystem::temp_directory_path() / "vecseal-audit-XXXXXX";
  path_ = mkdtemp(pattern.data());
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::vector<std::string> LogFiles(const std::string& dir) {
  Result<std::vector<std::string>> files = LogFilesInOrder(dir);
  return files.ok() ? std::move(files).value() : std::vector<std::string>();
}

std::string ReadFileText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string text;
  char buffer[1 << 16];
  while (in.read(buffer, sizeof buffer) || in.gcount() > 0) {
    text.append(buffer, static_cast<size_t>(in.gcount()));
  }
  return text;
}

void WriteFileText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

std::vector<std::string> ReadLines(const std::string& path, std::string* torn) {
  const std::string text = ReadFileText(path);
  std::vector<std::string> lines;
  size_t begin = 0;
  while (begin < text.size()) {
    const size_t end = text.find('\n', begin);
    if (end == std::string::npos) {
      if (torn != nullptr) *torn = text.substr(begin);
      break;
    }
    lines.push_back(text.substr(begin, end - begin));
    begin = end + 1;
  }
  return lines;
}

void WriteLines(const std::string& path, const std::vector<std::string>& lines) {
  std::string text;
  for (const std::string& line : lines) text += line + "\n";
  WriteFileText(path, text);
}

Event SampleEvent(int i) {
  Event event;
  event.event = i % 7 == 3 ? "deny" : "encrypt";
  event.request_id = "req-" + std::to_string(i);
  event.caller = Caller{1000 + i, 1000, "alice", 1000, "/usr/bin/python3.11",
                        std::string(64, 'a'), "embedder.service", "/srv/embed.py", ""};
  event.key = i % 2 == 0 ? "demo" : "search";
  event.key_version = 1 + static_cast<uint32_t>(i % 3);
  event.operation = "encrypt";
  event.vectors = 1 + static_cast<uint64_t>(i % 1024);
  event.dimension = 768;
  event.reversible = i % 2 == 0;
  event.decision = i % 7 == 3 ? "denied" : "granted";
  event.rule_id = "rule-" + std::to_string(i % 4);
  return event;
}

LogOptions TestOptions(const std::string& dir) {
  LogOptions options;
  options.dir = dir;
  options.seal_every_records = 5;
  options.seal_every = std::chrono::hours(1);
  options.sync = LogOptions::Sync::kInterval;
  options.sync_interval = std::chrono::hours(1);
  options.warn_free_bytes = 0;
  options.refuse_free_bytes = 0;
  options.reserve_bytes = 4096;
  options.retry_interval = std::chrono::milliseconds(0);
  options.try_append_only = false;
  return options;
}

namespace {

Status Injected(std::string_view what) {
  return Status(Code::kUnavailable, "io_error", std::string(what) + ": injected failure");
}

class FaultyFile final : public AppendFile {
 public:
  FaultyFile(std::unique_ptr<AppendFile> inner, std::shared_ptr<FaultPlan> plan)
      : inner_(std::move(inner)), plan_(std::move(plan)) {}

  Status Append(std::string_view data, size_t* written) override {
    if (written != nullptr) *written = 0;
    if (plan_->read_only) return Injected("write: Read-only file system");
    if (plan_->fail_write) return Injected("write: Input/output error");
    if (plan_->short_writes > 0) {
      --plan_->short_writes;
      size_t landed = 0;
      (void)inner_->Append(data.substr(0, data.size() / 2), &landed);
      if (written != nullptr) *written = landed;
      return Injected("write: short write");
    }
    return inner_->Append(data, written);
  }
  Status Sync() override {
    if (plan_->fail_sync) return Injected("fdatasync: Input/output error");
    return inner_->Sync();
  }
  Status Reserve(uint64_t offset, uint64_t bytes) override {
    if (plan_->fail_reserve) return Injected("fallocate: No space left on device");
    return inner_->Reserve(offset, bytes);
  }
  bool SetAppendOnly() override { return inner_->SetAppendOnly(); }
  uint64_t size() const override { return inner_->size(); }

 private:
  std::unique_ptr<AppendFile> inner_;
  std::shared_ptr<FaultPlan> plan_;
};

class Faulty final : public FileSystem {
 public:
  explicit Faulty(std::shared_ptr<FaultPlan> plan) : plan_(std::move(plan)) {}

  Result<std::unique_ptr<AppendFile>> OpenAppend(const std::string& path) override {
    ++plan_->opens;
    if (plan_->fail_open) return Injected("open: Input/output error");
    if (plan_->read_only) return Injected("open: Read-only file system");
    Result<std::unique_ptr<AppendFile>> inner = real_->OpenAppend(path);
    if (!inner.ok()) return inner;
    return std::unique_ptr<AppendFile>(std::make_unique<FaultyFile>(std::move(*inner), plan_));
  }
  Result<std::vector<std::string>> ListDir(const std::string& dir) override {
    return real_->ListDir(dir);
  }
  Status ReadTail(const std::string& path, uint64_t max_bytes, std::string* tail,
                  uint64_t* file_size) override {
    return real_->ReadTail(path, max_bytes, tail, file_size);
  }
  Result<uint64_t> FreeBytes(const std::string& path) override {
    const int64_t injected = plan_->free_bytes;
    if (injected >= 0) return static_cast<uint64_t>(injected);
    return real_->FreeBytes(path);
  }
  Status SyncDir(const std::string& dir) override { return real_->SyncDir(dir); }

 private:
  std::shared_ptr<FaultPlan> plan_;
  std::shared_ptr<FileSystem> real_ = PosixFileSystem();
};

}  // namespace

std::shared_ptr<FileSystem> FaultyFileSystem(std::shared_ptr<FaultPlan> plan) {
  return std::make_shared<Faulty>(std::move(plan));
}

}  // namespace vecseal::audit::testing
