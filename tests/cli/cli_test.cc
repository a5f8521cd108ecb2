// The `vecseal` binary as users run it: real processes against a real `vecseald --dev`.
#include <pty.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dev_daemon.h"
#include "vecseal/client/client.h"
#include "vecseal/client/formats.h"

namespace vecseal::cli {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using vecseal::testing::DevDaemon;
using vecseal::testing::ProcessResult;

// Under AddressSanitizer a process's RSS holds the allocator's quarantine (up to 256 MiB of freed
// blocks, kept back to catch use-after-free) and shadow memory, so a peak-RSS bound measures the
// sanitizer rather than what the CLI keeps; that build checks the rest of the test only.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kRssIsMeaningful = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kRssIsMeaningful = false;
#else
constexpr bool kRssIsMeaningful = true;
#endif
#else
constexpr bool kRssIsMeaningful = true;
#endif

::testing::Environment* const daemon_environment = [] {
  auto* daemon = new DevDaemon(VECSEALD_PATH);
  DevDaemon::set_instance(daemon);
  return ::testing::AddGlobalTestEnvironment(daemon);
}();

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = vecseal::testing::MakeTempDir("vecseal-cli"); }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  static std::string Socket() {
    DevDaemon* daemon = DevDaemon::instance();
    return daemon != nullptr ? daemon->socket() : "";
  }

  // Runs `vecseal ARGS` against the dev daemon (through $VECSEAL_SOCKET, as a user would).
  ProcessResult Vecseal(std::vector<std::string> args, std::vector<std::string> env = {}) const {
    args.insert(args.begin(), VECSEAL_CLI_PATH);
    if (env.empty()) env.push_back("VECSEAL_SOCKET=" + Socket());
    return vecseal::testing::RunProcess(std::move(args), env);
  }

  void CreateKey(const std::string& name, const std::string& extra = "") const {
    std::vector<std::string> args = {"keys", "create", name, "--approximation-factor", "0.5",
                                     "--transform", "permute"};
    if (!extra.empty()) {
      args.push_back("--dimension");
      args.push_back(extra);
    }
    const ProcessResult r = Vecseal(args);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }

  static client::Matrix Sample(size_t rows, size_t dimension) {
    client::Matrix m{rows, dimension, std::vector<float>(rows * dimension)};
    for (size_t i = 0; i < m.data.size(); ++i) {
      m.data[i] = std::sin(0.37f * static_cast<float>(i)) * 2.0f;
    }
    return m;
  }

  // Runs `vecseal ARGS` against the dev daemon with stdin, stdout and stderr on a pseudo-terminal;
  // `out` is everything it wrote there (the terminal turns "\n" into "\r\n").
  static ProcessResult VecsealOnTerminal(std::vector<std::string> args) {
    args.insert(args.begin(), VECSEAL_CLI_PATH);
    std::vector<std::string> env = vecseal::testing::EnvironmentWith({"VECSEAL_SOCKET=" + Socket()});
    // Built before the fork: the child only calls execve.
    std::vector<char*> argv = vecseal::testing::CStrings(args);
    std::vector<char*> envp = vecseal::testing::CStrings(env);
    ProcessResult result;
    int terminal = -1;
    const pid_t pid = ::forkpty(&terminal, nullptr, nullptr, nullptr);
    if (pid == 0) {
      ::execve(argv[0], argv.data(), envp.data());
      ::_exit(127);
    }
    if (pid < 0) {
      result.err = std::string("forkpty: ") + std::strerror(errno);
      return result;
    }
    char buffer[4096];
    for (;;) {
      const ssize_t n = ::read(terminal, buffer, sizeof(buffer));
      if (n > 0) {
        result.out.append(buffer, static_cast<size_t>(n));
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else {
        break;  // EIO: the child has exited and its side of the terminal is closed
      }
    }
    ::close(terminal);
    result.exit_code = vecseal::testing::WaitExit(pid);
    return result;
  }

  std::vector<std::string> Listing() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) names.push_back(entry.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

  std::string dir_;
};

TEST_F(CliTest, HelpListsCommandsAndExitCodes) {
  const ProcessResult r = Vecseal({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr("encrypt --key NAME [--key-version N] [--reversible --tokens OUT.tok]"));
  EXPECT_THAT(r.out, HasSubstr("Exit codes:"));
  EXPECT_THAT(r.out, HasSubstr("3 cannot reach vecseald"));
  EXPECT_THAT(r.out, HasSubstr("130 interrupted (outputs removed)"));
  const ProcessResult none = Vecseal({});
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_THAT(none.err, StartsWith("usage: vecseal"));
}

TEST_F(CliTest, UsageErrorsAreOneLineWithExitCodeTwo) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"encrypt", "a.npy", "b.npy"}, "encrypt needs --key NAME"},
      {{"encrypt", "--key", "k", "a.npy"}, "encrypt needs IN and OUT files"},
      {{"encrypt", "--key", "k", "--reversible", "a.npy", "b.npy"},
       "--reversible and --tokens OUT.tok go together"},
      {{"encrypt", "--key", "k", "--batch", "0", "a.npy", "b.npy"},
       "--batch must be an integer of at least 1, not '0'"},
      {{"encrypt", "--key", "k", "--colour", "a.npy", "b.npy"}, "unknown option --colour"},
      {{"decrypt", "--key", "k", "a.npy", "b.npy"}, "decrypt needs --tokens IN.tok"},
      {{"encrypt", "--key", "k", "--key-version", "0", "a.npy", "b.npy"},
       "--key-version must be an integer of at least 1, not '0'"},
      {{"decrypt", "--key", "k", "--key-version", "1", "--tokens", "t.tok", "a.npy", "b.npy"},
       "decrypt takes no --key-version: the tokens name the version"},
      {{"keys", "create", "k"}, "keys create needs --approximation-factor BETA (see: vecseal calibrate)"},
      {{"keys", "create", "k", "--approximation-factor", "-1"},
       "--approximation-factor must be a positive number, not '-1'"},
      {{"keys", "drop", "k"},
       "unknown keys command 'drop' (list, create, rotate, show, config or delete)"},
      {{"keys", "config", "k"},
       "keys config needs --min-encryption-version N, --min-decryption-version M or both"},
      {{"keys", "config", "k", "--min-decryption-version", "0"},
       "--min-decryption-version must be an integer of at least 1, not '0'"},
      {{"keys", "delete"}, "keys delete needs exactly one NAME"},
      {{"frobnicate"}, "unknown command 'frobnicate'"},
  };
  for (const auto& [args, message] : cases) {
    SCOPED_TRACE(args.front() + " " + message);
    const ProcessResult r = Vecseal(args, {"VECSEAL_SOCKET=" + Path("unused.sock")});
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_EQ(r.err, "vecseal: " + message + " (see: vecseal --help)\n");
    EXPECT_EQ(r.out, "");
  }
}

// `vecseal audit` and `vecseal calibrate` reach their modules, which answer a bare command
// with their own usage error (exit 2 for both).
TEST_F(CliTest, DispatchesAuditAndCalibrate) {
  for (const char* command : {"audit", "calibrate"}) {
    SCOPED_TRACE(command);
    const ProcessResult r = Vecseal({command});
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_THAT(r.err, ::testing::Not(HasSubstr("built without")));
    EXPECT_FALSE(r.err.empty());
  }
}

TEST_F(CliTest, MissingSocketSaysSoAndHowToCheck) {
  ASSERT_TRUE(client::WriteMatrix(Path("in.npy"), Sample(3, 4)).ok());
  const std::string socket = Path("none.sock");
  // From $VECSEAL_SOCKET, and from --socket, which wins over it.
  const ProcessResult by_env =
      Vecseal({"encrypt", "--key", "k", Path("in.npy"), Path("out.npy")}, {"VECSEAL_SOCKET=" + socket});
  const ProcessResult by_flag = Vecseal({"--socket", socket, "encrypt", "--key", "k", Path("in.npy"),
                                        Path("out.npy")},
                                       {"VECSEAL_SOCKET=" + Path("other.sock")});
  for (const ProcessResult& r : {by_env, by_flag}) {
    EXPECT_EQ(r.exit_code, 3);
    EXPECT_EQ(r.err, "vecseal: cannot connect to " + socket +
                         ": no such file (is vecseald running? try: systemctl status vecseald)\n");
  }
  EXPECT_FALSE(fs::exists(Path("out.npy")));
}

TEST_F(CliTest, LocalFileErrorsNameTheFile) {
  const ProcessResult missing = Vecseal({"encrypt", "--key", "k", Path("no.npy"), Path("o.npy")});
  EXPECT_EQ(missing.exit_code, 8);
  EXPECT_EQ(missing.err, "vecseal: cannot open " + Path("no.npy") + ": No such file or directory\n");
  std::ofstream(Path("bad.npy")) << "not numpy at all";
  const ProcessResult bad = Vecseal({"encrypt", "--key", "k", Path("bad.npy"), Path("o.npy")});
  EXPECT_EQ(bad.exit_code, 5);
  EXPECT_EQ(bad.err, "vecseal: " + Path("bad.npy") + ": not an .npy file (bad magic)\n");
  ASSERT_TRUE(client::WriteMatrix(Path("in.npy"), Sample(2, 2)).ok());
  const ProcessResult ext = Vecseal({"encrypt", "--key", "k", Path("in.npy"), Path("o.csv")});
  EXPECT_EQ(ext.exit_code, 5);
  EXPECT_EQ(ext.err, "vecseal: " + Path("o.csv") +
                         ": unknown file type (use .npy, .fvecs, .jsonl or .f32, or name the "
                         "format) with --format npy|fvecs|jsonl|f32\n");
  const ProcessResult unknown =
      Vecseal({"encrypt", "--key", "k", "--format", "csv", Path("in.npy"), Path("o.csv")});
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_THAT(unknown.err, HasSubstr("--format: unknown format 'csv' (use npy, fvecs, jsonl or f32)"));
}

// --format names the format of a file whose name does not say it, and leaves alone one whose
// extension does: here a .npy input and an .npy-formatted output named out.bin.
TEST_F(CliTest, FormatNamesTheFormatOfAFileWithoutAKnownExtension) {
  VECSEAL_REQUIRE_DAEMON();
  CreateKey("formats");
  ASSERT_TRUE(client::WriteMatrix(Path("in.npy"), Sample(3, 4)).ok());
  const ProcessResult r = Vecseal(
      {"encrypt", "--key", "formats", "--format", "npy", Path("in.npy"), Path("out.bin")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  client::FormatOptions as_npy;
  as_npy.format = client::VectorFormat::kNpy;
  Result<client::Matrix> out = client::ReadMatrix(Path("out.bin"), as_npy);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->rows, 3u);
  EXPECT_EQ(out->dimension, 4u);
}

// On a terminal, encrypt draws a progress bar with the rate and the time left while it runs,
// clears it, and ends with a summary line (off a terminal it prints nothing: CliRoundTripTest).
TEST_F(CliTest, ProgressBarOnATerminal) {
  VECSEAL_REQUIRE_DAEMON();
  CreateKey("progress");
  // 40 requests of 500 rows: the first is drawn at once, well before the end, so it has an ETA.
  ASSERT_TRUE(client::WriteMatrix(Path("in.npy"), Sample(20000, 16)).ok());
  const ProcessResult r = VecsealOnTerminal(
      {"encrypt", "--key", "progress", "--batch", "500", Path("in.npy"), Path("out.npy")});
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  // "[==    ]   5% 1000 vectors, 51234/s, ETA 0:02" (the ETA only while not done).
  const std::regex bar(R"(\r\[=* *\] +[0-9]+% [1-9][0-9]* vectors, [1-9][0-9]*/s, ETA [0-9]+:[0-5][0-9] )");
  EXPECT_TRUE(std::regex_search(r.out, bar)) << r.out;
  // The bar is wiped before the summary, which is the last line.
  const std::string summary = "\r" + std::string(78, ' ') + "\r" +
                              "encrypted 20000 vectors of dimension 16 with key 'progress' version 1 "
                              "into " + Path("out.npy") + "\r\n";
  EXPECT_THAT(r.out, ::testing::EndsWith(summary)) << r.out;
  Result<client::Matrix> sealed = client::ReadMatrix(Path("out.npy"));
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  EXPECT_EQ(sealed->rows, 20000u);
}

// Streaming, proved: a 200 MiB file goes through encrypt while the CLI's peak RSS stays far below
// the file's size. The daemon derives one HSM seed per 4096 vectors instead of per vector, so
// that SoftHSM2 does not set the pace (about 4 s instead of 2 minutes for 819200 vectors).
TEST_F(CliTest, LargeFileInBoundedMemory) {
  VECSEAL_REQUIRE_DAEMON();
  DevDaemon fast(VECSEALD_PATH, R"({"derivation": {"group_size": 4096}})");
  fast.SetUp();
  ASSERT_EQ(fast.unavailable(), "");
  const std::string socket = "VECSEAL_SOCKET=" + fast.socket();
  const ProcessResult key = Vecseal({"keys", "create", "large", "--approximation-factor", "0.5",
                                     "--transform", "permute", "--dimension", "64"},
                                    {socket});
  ASSERT_EQ(key.exit_code, 0) << key.err;
  constexpr uint64_t kDim = 64, kFileBytes = uint64_t{200} << 20;
  constexpr uint64_t kRowBytes = kDim * sizeof(float), kRssLimit = uint64_t{64} << 20;
  // A sparse file of zero vectors: written in no time, and read like any other.
  const std::string in = Path("large.f32"), out = Path("large.enc.f32");
  { std::ofstream(in, std::ios::binary); }
  fs::resize_file(in, kFileBytes);

  int out_fd = -1, err_fd = -1;
  const pid_t cli = vecseal::testing::Spawn(
      {VECSEAL_CLI_PATH, "encrypt", "--key", "large", "--dim", std::to_string(kDim), in, out},
      {socket}, out_fd, err_fd);
  ASSERT_GT(cli, 0);
  struct rusage usage {};
  const ProcessResult r = vecseal::testing::Collect(cli, out_fd, err_fd, &usage);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const uint64_t peak_rss = static_cast<uint64_t>(usage.ru_maxrss) * 1024;  // reported in KiB
  if (kRssIsMeaningful) {
    EXPECT_LT(peak_rss, kRssLimit) << "the CLI holds " << peak_rss << " bytes at its peak for a "
                                   << kFileBytes << "-byte file";
  }
  ASSERT_EQ(fs::file_size(out), kFileBytes);
  // The last row was encrypted too: a zero vector comes back with the key's noise.
  std::ifstream sealed(out, std::ios::binary);
  sealed.seekg(static_cast<std::streamoff>(kFileBytes - kRowBytes));
  std::vector<float> last(kDim);
  sealed.read(reinterpret_cast<char*>(last.data()), static_cast<std::streamsize>(kRowBytes));
  ASSERT_TRUE(sealed.good());
  EXPECT_TRUE(std::any_of(last.begin(), last.end(), [](float v) { return v != 0.0f; }));
  std::cout << "[          ] peak RSS " << (peak_rss >> 20) << " MiB for a " << (kFileBytes >> 20)
            << " MiB file\n";
}

// Encrypt reversibly, then decrypt, for every format; batches far smaller than the file, so the
// streaming path is what is tested.
class CliRoundTripTest : public CliTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(CliRoundTripTest, EncryptsAndDecryptsBack) {
  VECSEAL_REQUIRE_DAEMON();
  const std::string ext = GetParam();
  const std::string key = "rt-" + ext;
  CreateKey(key);
  constexpr size_t kRows = 103, kDim = 16;
  const client::Matrix plain = Sample(kRows, kDim);
  const std::string in = Path("in." + ext), sealed = Path("sealed." + ext),
                    tokens = Path("sealed.tok"), back = Path("back." + ext);
  ASSERT_TRUE(client::WriteMatrix(in, plain).ok());
  std::vector<std::string> dim_args;
  if (ext == "f32") dim_args = {"--dim", std::to_string(kDim)};

  std::vector<std::string> enc = {"encrypt", "--key", key, "--reversible", "--tokens", tokens,
                                  "--batch", "10", in, sealed};
  enc.insert(enc.end(), dim_args.begin(), dim_args.end());
  const ProcessResult e = Vecseal(enc);
  ASSERT_EQ(e.exit_code, 0) << e.err;
  EXPECT_EQ(e.out, "");
  EXPECT_EQ(e.err, "");  // not a terminal: no progress bar, no summary

  client::FormatOptions options;
  options.dimension = kDim;
  Result<client::Matrix> ciphertext = client::ReadMatrix(sealed, options);
  ASSERT_TRUE(ciphertext.ok()) << ciphertext.status().ToString();
  ASSERT_EQ(ciphertext->rows, kRows);
  EXPECT_NE(ciphertext->data, plain.data);
  EXPECT_EQ(fs::file_size(tokens), client::kTokenFileHeaderSize + kRows * 41);

  std::vector<std::string> dec = {"decrypt", "--key", key, "--tokens", tokens, "--batch", "7",
                                  sealed, back};
  dec.insert(dec.end(), dim_args.begin(), dim_args.end());
  const ProcessResult d = Vecseal(dec);
  ASSERT_EQ(d.exit_code, 0) << d.err;
  Result<client::Matrix> decrypted = client::ReadMatrix(back, options);
  ASSERT_TRUE(decrypted.ok()) << decrypted.status().ToString();
  ASSERT_EQ(decrypted->data.size(), plain.data.size());
  for (size_t i = 0; i < plain.data.size(); ++i) {
    ASSERT_NEAR(decrypted->data[i], plain.data[i], 1e-3) << "value " << i;
  }
  EXPECT_EQ(Listing().size(), 4u);  // in, sealed, tokens, back: no temporary files left
}

INSTANTIATE_TEST_SUITE_P(Formats, CliRoundTripTest, ::testing::Values("npy", "fvecs", "jsonl", "f32"));

TEST_F(CliTest, JsonlKeepsOtherFields) {
  VECSEAL_REQUIRE_DAEMON();
  CreateKey("jsonl-fields");
  std::ofstream(Path("in.jsonl")) << "{\"id\": \"a-1\", \"emb\": [0.5, 1, 2], \"label\": 3}\n"
                                  << "{\"emb\": [1, 2, 3], \"id\": \"a-2\", \"label\": null}\n";
  const ProcessResult r = Vecseal({"encrypt", "--key", "jsonl-fields", "--field", "emb",
                                   Path("in.jsonl"), Path("out.jsonl")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::ifstream out(Path("out.jsonl"));
  std::string line1, line2;
  std::getline(out, line1);
  std::getline(out, line2);
  EXPECT_THAT(line1, StartsWith("{\"id\": \"a-1\", \"emb\": ["));
  EXPECT_THAT(line1, ::testing::EndsWith("], \"label\": 3}"));
  EXPECT_THAT(line2, StartsWith("{\"emb\": ["));
  EXPECT_THAT(line2, ::testing::EndsWith("], \"id\": \"a-2\", \"label\": null}"));
  EXPECT_EQ(line1.find("[0.5, 1, 2]"), std::string::npos);
}

TEST_F(CliTest, BadVectorIsNamedByItsRowInTheFile) {
  VECSEAL_REQUIRE_DAEMON();
  CreateKey("nan-row");
  client::Matrix m = Sample(1100, 4);
  m.data[1029 * 4 + 2] = std::nanf("");
  ASSERT_TRUE(client::WriteMatrix(Path("in.npy"), m).ok());
  const ProcessResult r =
      Vecseal({"encrypt", "--key", "nan-row", Path("in.npy"), Path("out.npy")});
  EXPECT_EQ(r.exit_code, 5);
  // Row 1029 is vector 5 of the second batch of 1024; the line names the row in the file.
  EXPECT_THAT(r.err, StartsWith("vecseal: " + Path("in.npy") + ": row 1029: "));
  EXPECT_THAT(r.err, ::testing::Not(HasSubstr("vector 5")));  // the batch index is not shown
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1);
  EXPECT_EQ(Listing(), std::vector<std::string>{"in.npy"});
}

// A --batch above the daemon's limits.max_vectors (10000 by default) is refused by the daemon;
// the message says which option to lower.
TEST_F(CliTest, ABatchOverTheDaemonsLimitNamesTheOption) {
  VECSEAL_REQUIRE_DAEMON();
  CreateKey("large-batch");
  ASSERT_TRUE(client::WriteMatrix(Path("in.npy"), Sample(10001, 2)).ok());
  const ProcessResult r = Vecseal(
      {"encrypt", "--key", "large-batch", "--batch", "20000", Path("in.npy"), Path("out.npy")});
  EXPECT_EQ(r.exit_code, 5) << r.err;
  EXPECT_THAT(r.err, StartsWith("vecseal: --batch 20000 is too large for this daemon: the "
                                "request holds more than the limit of 10000 vectors"));
  EXPECT_EQ(Listing(), std::vector<std::string>{"in.npy"});
}

TEST_F(CliTest, DaemonErrorsMapToExitCodes) {
  VECSEAL_REQUIRE_DAEMON();
  CreateKey("fixed-8", "8");
  ASSERT_TRUE(client::WriteMatrix(Path("in.npy"), Sample(3, 16)).ok());
  const ProcessResult mismatch =
      Vecseal({"encrypt", "--key", "fixed-8", Path("in.npy"), Path("out.npy")});
  EXPECT_EQ(mismatch.exit_code, 5) << mismatch.err;
  EXPECT_THAT(mismatch.err, HasSubstr("16"));
  EXPECT_THAT(mismatch.err, HasSubstr("8"));

  const ProcessResult unknown =
      Vecseal({"encrypt", "--key", "no-such-key", Path("in.npy"), Path("out.npy")});
  EXPECT_EQ(unknown.exit_code, 6) << unknown.err;
  EXPECT_THAT(unknown.err, ::testing::EndsWith(" (see: vecseal keys list)\n"));

  const ProcessResult again = Vecseal({"keys", "create", "fixed-8", "--approximation-factor", "1"});
  EXPECT_EQ(again.exit_code, 6) << again.err;

  const ProcessResult bad_name = Vecseal({"keys", "rotate", "Bad/Name"});
  EXPECT_EQ(bad_name.exit_code, 5);
  EXPECT_EQ(bad_name.err,
            "vecseal: key name 'Bad/Name' is invalid (1-64 characters: a-z 0-9 . _ -, starting "
            "with a letter or digit)\n");
  EXPECT_FALSE(fs::exists(Path("out.npy")));
}

TEST_F(CliTest, KeysWhoamiAndStatus) {
  VECSEAL_REQUIRE_DAEMON();
  const ProcessResult created = Vecseal(
      {"keys", "create", "model-a", "--approximation-factor", "2.5", "--transform", "rotate"});
  ASSERT_EQ(created.exit_code, 0) << created.err;
  EXPECT_THAT(created.out, StartsWith("created model-a  version 1  rotate  beta 2.5  dimension any"));
  const ProcessResult rotated = Vecseal({"keys", "rotate", "model-a"});
  ASSERT_EQ(rotated.exit_code, 0) << rotated.err;
  EXPECT_THAT(rotated.out, StartsWith("rotated model-a  version 2  rotate  beta 2.5"));
  const ProcessResult listed = Vecseal({"keys", "list"});
  ASSERT_EQ(listed.exit_code, 0) << listed.err;
  EXPECT_THAT(listed.out, HasSubstr("model-a  version 2  rotate  beta 2.5"));
  const ProcessResult configured =
      Vecseal({"keys", "config", "model-a", "--min-encryption-version", "2"});
  ASSERT_EQ(configured.exit_code, 0) << configured.err;
  EXPECT_THAT(configured.out, HasSubstr("versions: v1 decrypt_only, v2 active  (min encryption 2, "
                                        "min decryption 1)"));
  const ProcessResult too_far =
      Vecseal({"keys", "config", "model-a", "--min-decryption-version", "3"});
  EXPECT_EQ(too_far.exit_code, 5) << too_far.err;
  EXPECT_THAT(too_far.err, HasSubstr("min_decryption_version (3)"));
  const ProcessResult shown = Vecseal({"keys", "show", "model-a"});
  ASSERT_EQ(shown.exit_code, 0) << shown.err;
  EXPECT_THAT(shown.out, HasSubstr("v1 decrypt_only, v2 active"));
  const ProcessResult deleted = Vecseal({"keys", "delete", "model-a"});
  ASSERT_EQ(deleted.exit_code, 0) << deleted.err;
  EXPECT_EQ(deleted.out, "deleted model-a: destroyed versions 1 2\n");
  const ProcessResult gone = Vecseal({"keys", "show", "model-a"});
  EXPECT_EQ(gone.exit_code, 6) << gone.err;

  const ProcessResult status = Vecseal({"status"});
  EXPECT_EQ(status.exit_code, 0) << status.err;
  EXPECT_EQ(status.out.rfind("vecseald at " + Socket() + ": ok (hsm ok, audit ok, version ", 0), 0u)
      << status.out;

  const ProcessResult who = Vecseal({"whoami"});
  EXPECT_EQ(who.exit_code, 0) << who.err;
  EXPECT_THAT(who.out, HasSubstr("grants:"));
  // One column of values, after the longest name (script_sha256_unknown:) and two spaces.
  const std::string column(std::string("script_sha256_unknown:").size() + 1, ' ');
  std::istringstream lines(who.out);
  for (std::string line; std::getline(lines, line) && line != "grants:";) {
    const size_t colon = line.find(':');
    ASSERT_NE(colon, std::string::npos) << line;
    EXPECT_EQ(line.find_first_not_of(' ', colon + 1), column.size()) << line;
  }
  EXPECT_THAT(who.out, HasSubstr("\nuid:" + column.substr(4) + std::to_string(getuid()) + "\n"));
}

// Exit codes 4 and 7 through the CLI, each from a daemon of its own: one whose policy grants
// nothing (dev mode keeps a policy.json it finds in its state directory), and one whose audit
// log is a full disk, so that no request can be recorded and none is served.
TEST_F(CliTest, PermissionDeniedAndUnavailableExitCodes) {
  VECSEAL_REQUIRE_DAEMON();
  ASSERT_TRUE(client::WriteMatrix(Path("in.npy"), Sample(3, 4)).ok());
  const std::vector<std::string> encrypt = {"encrypt", "--key", "demo", Path("in.npy"), Path("out.npy")};

  DevDaemon denying(VECSEALD_PATH, "", "{\"version\": 1, \"rules\": []}\n");
  denying.SetUp();
  ASSERT_EQ(denying.unavailable(), "");
  const ProcessResult denied = Vecseal(encrypt, {"VECSEAL_SOCKET=" + denying.socket()});
  EXPECT_EQ(denied.exit_code, 4) << denying.Log();
  EXPECT_EQ(denied.err,
            "vecseal: permission denied: no rule grants encrypt on key 'demo' (see: vecseal whoami)\n");
  // What the line points to: whoami says that this caller is granted nothing.
  const ProcessResult who = Vecseal({"whoami"}, {"VECSEAL_SOCKET=" + denying.socket()});
  EXPECT_EQ(who.exit_code, 0) << who.err;
  EXPECT_THAT(who.out, ::testing::EndsWith("grants: none (the policy grants this caller nothing)\n"));
  denying.TearDown();

  DevDaemon full(VECSEALD_PATH, R"({"audit": {"single_file": "/dev/full", "try_append_only": false}})");
  full.SetUp();
  ASSERT_EQ(full.unavailable(), "");
  const ProcessResult unavailable = Vecseal(encrypt, {"VECSEAL_SOCKET=" + full.socket()});
  EXPECT_EQ(unavailable.exit_code, 7) << full.Log();
  EXPECT_EQ(unavailable.err,
            "vecseal: vecseald cannot write its audit log, so it serves nothing (see: vecseal "
            "status and vecseald's log)\n");
  // What the line points to: status names the audit log as the failing part, with exit code 7.
  const ProcessResult status = Vecseal({"status"}, {"VECSEAL_SOCKET=" + full.socket()});
  EXPECT_EQ(status.exit_code, 7) << status.err;
  EXPECT_THAT(status.out, StartsWith("vecseald at " + full.socket() + ": unavailable ("));
  EXPECT_THAT(status.out, HasSubstr(", audit unavailable, "));
  full.TearDown();
  EXPECT_FALSE(fs::exists(Path("out.npy")));
}

// After a rotation, --key-version encrypts a file under the version a model was trained with;
// the reversible tokens carry it, so decrypt needs no version.
TEST_F(CliTest, KeyVersionEncryptsUnderAnOlderVersion) {
  VECSEAL_REQUIRE_DAEMON();
  CreateKey("pinned");
  ASSERT_EQ(Vecseal({"keys", "rotate", "pinned"}).exit_code, 0);
  ASSERT_TRUE(client::WriteMatrix(Path("in.npy"), Sample(4, 6)).ok());
  // The key version of the first token of a file (uint32 LE after the format byte).
  const auto token_version = [&](const std::string& name) -> int {
    auto tokens = client::TokenFileReader::Open(Path(name), client::kTokenSize);
    std::vector<uint8_t> first;
    if (!tokens.ok() || !(*tokens)->Next(1, first).ok() || first.size() != client::kTokenSize) {
      return -1;
    }
    return first[1] | first[2] << 8 | first[3] << 16 | first[4] << 24;
  };
  const ProcessResult sealed =
      Vecseal({"encrypt", "--key", "pinned", "--key-version", "1", "--reversible", "--tokens",
               Path("in.tok"), Path("in.npy"), Path("sealed.npy")});
  ASSERT_EQ(sealed.exit_code, 0) << sealed.err;
  EXPECT_EQ(token_version("in.tok"), 1);
  const ProcessResult opened = Vecseal({"decrypt", "--key", "pinned", "--tokens", Path("in.tok"),
                                        Path("sealed.npy"), Path("opened.npy")});
  EXPECT_EQ(opened.exit_code, 0) << opened.err;

  const ProcessResult newest = Vecseal({"encrypt", "--key", "pinned", "--reversible", "--tokens",
                                        Path("new.tok"), Path("in.npy"), Path("new.npy")});
  ASSERT_EQ(newest.exit_code, 0) << newest.err;
  EXPECT_EQ(token_version("new.tok"), 2);

  const ProcessResult missing = Vecseal(
      {"encrypt", "--key", "pinned", "--key-version", "5", Path("in.npy"), Path("five.npy")});
  EXPECT_EQ(missing.exit_code, 6) << missing.err;
  EXPECT_FALSE(std::filesystem::exists(Path("five.npy")));
}

// rewrap moves a reversible file of version 1 to version 2: new ciphertexts and tokens, which
// decrypt to the plaintext; the old tokens then no longer match the new file.
TEST_F(CliTest, RewrapMovesAReversibleFileToTheNewestVersion) {
  VECSEAL_REQUIRE_DAEMON();
  CreateKey("moving");
  const client::Matrix plain = Sample(5, 6);
  ASSERT_TRUE(client::WriteMatrix(Path("in.npy"), plain).ok());
  ASSERT_EQ(Vecseal({"encrypt", "--key", "moving", "--reversible", "--tokens", Path("v1.tok"),
                     Path("in.npy"), Path("v1.npy")})
                .exit_code,
            0);
  ASSERT_EQ(Vecseal({"keys", "rotate", "moving"}).exit_code, 0);
  const ProcessResult moved =
      Vecseal({"rewrap", "--key", "moving", "--tokens", Path("v1.tok"), "--tokens-out",
               Path("v2.tok"), "--batch", "2", Path("v1.npy"), Path("v2.npy")});
  ASSERT_EQ(moved.exit_code, 0) << moved.err;
  auto tokens = client::TokenFileReader::Open(Path("v2.tok"), client::kTokenSize);
  ASSERT_TRUE(tokens.ok());
  EXPECT_EQ((*tokens)->count(), 5u);
  std::vector<uint8_t> first;
  ASSERT_TRUE((*tokens)->Next(1, first).ok());
  EXPECT_EQ(first[1], 2) << "the new tokens name version 2";
  const ProcessResult opened = Vecseal({"decrypt", "--key", "moving", "--tokens", Path("v2.tok"),
                                        Path("v2.npy"), Path("opened.npy")});
  ASSERT_EQ(opened.exit_code, 0) << opened.err;
  auto back = client::ReadMatrix(Path("opened.npy"));
  ASSERT_TRUE(back.ok());
  for (size_t i = 0; i < plain.data.size(); ++i) ASSERT_NEAR(back->data[i], plain.data[i], 1e-3);

  const ProcessResult no_out = Vecseal({"rewrap", "--key", "moving", "--tokens", Path("v1.tok"),
                                        Path("v1.npy"), Path("x.npy")});
  EXPECT_EQ(no_out.exit_code, 2);
  EXPECT_EQ(no_out.err, "vecseal: rewrap needs --tokens-out OUT.tok (see: vecseal --help)\n");
  ASSERT_EQ(Vecseal({"keys", "config", "moving", "--min-encryption-version", "2",
                     "--min-decryption-version", "2"})
                .exit_code,
            0);
  const ProcessResult retired =
      Vecseal({"rewrap", "--key", "moving", "--tokens", Path("v1.tok"), "--tokens-out",
               Path("again.tok"), Path("v1.npy"), Path("again.npy")});
  EXPECT_EQ(retired.exit_code, 5) << retired.err;
  EXPECT_THAT(retired.err, HasSubstr("retired for decryption"));
  EXPECT_FALSE(std::filesystem::exists(Path("again.npy")));
  EXPECT_FALSE(std::filesystem::exists(Path("again.tok")));
}

TEST_F(CliTest, DecryptChecksTokenCount) {
  VECSEAL_REQUIRE_DAEMON();
  CreateKey("tok-count");
  ASSERT_TRUE(client::WriteMatrix(Path("a.npy"), Sample(5, 4)).ok());
  ASSERT_TRUE(client::WriteMatrix(Path("b.npy"), Sample(6, 4)).ok());
  ASSERT_EQ(Vecseal({"encrypt", "--key", "tok-count", "--reversible", "--tokens", Path("a.tok"),
                     Path("a.npy"), Path("a-sealed.npy")})
                .exit_code,
            0);
  const ProcessResult r =
      Vecseal({"decrypt", "--key", "tok-count", "--tokens", Path("a.tok"), Path("b.npy"), Path("o.npy")});
  EXPECT_EQ(r.exit_code, 5);
  EXPECT_EQ(r.err, "vecseal: " + Path("a.tok") + " holds 5 tokens but " + Path("b.npy") +
                       " holds 6 vectors\n");
}

// Every ```sh line of docs/cli.md, in order, in one directory, must succeed.
TEST_F(CliTest, DocsExamplesRun) {
  VECSEAL_REQUIRE_DAEMON();
  if (std::system("/usr/bin/python3 -c 'import numpy' 2>/dev/null") != 0) {
    GTEST_SKIP() << "/usr/bin/python3 with numpy is not available";
  }
  std::ifstream doc(VECSEAL_DOCS_CLI);
  ASSERT_TRUE(doc.good()) << VECSEAL_DOCS_CLI;
  std::vector<std::string> commands;
  bool in_block = false;
  for (std::string line; std::getline(doc, line);) {
    if (line == "```sh") {
      in_block = true;
    } else if (line == "```") {
      in_block = false;
    } else if (in_block && !line.empty()) {
      commands.push_back(line);
    }
  }
  ASSERT_GE(commands.size(), 10u);
  const std::string bin_dir = fs::path(VECSEAL_CLI_PATH).parent_path();
  for (const std::string& command : commands) {
    SCOPED_TRACE(command);
    const ProcessResult r = vecseal::testing::RunProcess(
        {"/bin/bash", "-c", "cd '" + dir_ + "' && " + command},
        {"VECSEAL_SOCKET=" + Socket(), "PATH=" + bin_dir + ":/usr/bin:/bin"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }
}

// The contents of each ```LANG block of a Markdown file, in order.
std::vector<std::string> FencedBlocks(const std::string& path, const std::string& lang) {
  std::ifstream doc(path);
  std::vector<std::string> blocks;
  bool in_block = false;
  for (std::string line; std::getline(doc, line);) {
    if (!in_block && line == "```" + lang) {
      in_block = true;
      blocks.emplace_back();
    } else if (in_block && line == "```") {
      in_block = false;
    } else if (in_block) {
      blocks.back() += line + "\n";
    }
  }
  return blocks;
}

// docs/cli.md's LIBRARY program, built as a user would build it: the client SDK installed to a
// fresh prefix and the doc's own CMake lines, with the project's warnings as errors; then run
// against the dev daemon, and without one.
TEST_F(CliTest, DocsLibraryExampleBuildsAndRuns) {
  VECSEAL_REQUIRE_DAEMON();
  const std::vector<std::string> cpp = FencedBlocks(VECSEAL_DOCS_CLI, "cpp");
  const std::vector<std::string> cmake = FencedBlocks(VECSEAL_DOCS_CLI, "cmake");
  ASSERT_EQ(cpp.size(), 1u) << VECSEAL_DOCS_CLI;
  ASSERT_EQ(cmake.size(), 1u) << VECSEAL_DOCS_CLI;
  fs::create_directory(Path("src"));
  std::ofstream(Path("src/my_service.cc")) << cpp[0];
  std::ofstream(Path("src/CMakeLists.txt"))
      << "cmake_minimum_required(VERSION 3.25)\n"
         "project(my_service LANGUAGES CXX)\n"
         "set(CMAKE_CXX_STANDARD 20)\n"
         "add_executable(my_service my_service.cc)\n"
      << cmake[0];
  const std::vector<std::vector<std::string>> steps = {
      {VECSEAL_CMAKE, "--install", VECSEAL_BUILD_DIR, "--prefix", Path("prefix"), "--component",
       "client_sdk"},
      {VECSEAL_CMAKE, "-S", Path("src"), "-B", Path("build"), "-DCMAKE_PREFIX_PATH=" + Path("prefix"),
       "-DCMAKE_CXX_COMPILER=" VECSEAL_CXX, "-DCMAKE_BUILD_TYPE=Release",
       "-DCMAKE_CXX_FLAGS=-Wall -Wextra -Wpedantic -Wshadow -Wold-style-cast -Wformat=2 -Werror"},
      {VECSEAL_CMAKE, "--build", Path("build")},
  };
  for (const std::vector<std::string>& step : steps) {
    const ProcessResult r = vecseal::testing::RunProcess(step);
    ASSERT_EQ(r.exit_code, 0) << step[1] << ":\n" << r.out << r.err;
  }

  const std::string program = Path("build/my_service");
  const ProcessResult served = vecseal::testing::RunProcess({program}, {"VECSEAL_SOCKET=" + Socket()});
  EXPECT_EQ(served.exit_code, 0) << served.err;
  EXPECT_EQ(served.out,
            "encrypted 2 vectors with key version 1\n"
            "encrypted in place with key version 1\n");
  EXPECT_EQ(served.err, "");
  const ProcessResult alone =
      vecseal::testing::RunProcess({program}, {"VECSEAL_SOCKET=" + Path("none.sock")});
  EXPECT_EQ(alone.exit_code, 1);
  EXPECT_EQ(alone.err, "cannot connect to " + Path("none.sock") + ": no such file\n");
  EXPECT_EQ(alone.out, "");

  // tests/client's consumer (client_install_find_package) builds with the same two lines.
  const std::string consumer = DevDaemon::ReadFile(VECSEAL_CONSUMER_CMAKELISTS);
  std::istringstream lines(cmake[0]);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty()) {
      EXPECT_THAT(consumer, HasSubstr(line + "\n")) << VECSEAL_CONSUMER_CMAKELISTS;
    }
  }
}

// README.md's `<!-- example: sh -->` blocks run as one script, in a scratch directory.
TEST_F(CliTest, ReadmeShellExamplesRun) {
  VECSEAL_REQUIRE_DAEMON();
  if (std::system("/usr/bin/python3 -c 'import numpy' 2>/dev/null") != 0) {
    GTEST_SKIP() << "/usr/bin/python3 with numpy is not available";
  }
  std::ifstream readme(VECSEAL_README);
  ASSERT_TRUE(readme.good()) << VECSEAL_README;
  std::string script = "set -e\n";
  size_t blocks = 0;
  bool marked = false;
  bool in_block = false;
  for (std::string line; std::getline(readme, line);) {
    if (line == "<!-- example: sh -->") {
      marked = true;
    } else if (marked && line == "```sh") {
      in_block = true;
      marked = false;
      ++blocks;
    } else if (in_block && line == "```") {
      in_block = false;
    } else if (in_block) {
      script += line + "\n";
    }
  }
  ASSERT_GE(blocks, 1u);
  const std::string bin_dir = fs::path(VECSEAL_CLI_PATH).parent_path();
  const ProcessResult r = vecseal::testing::RunProcess(
      {"/bin/bash", "-c", "cd '" + dir_ + "' && " + script},
      {"VECSEAL_SOCKET=" + Socket(), "PATH=" + bin_dir + ":/usr/bin:/bin"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(fs::exists(fs::path(dir_) / "train.enc.npy"));
}

// An interrupted run never leaves a file under the output name. The daemon is stopped
// (SIGSTOP) so that the command is certainly mid-run, waiting for an answer, when it is killed.
class CliInterruptTest : public CliTest, public ::testing::WithParamInterface<int> {};

TEST_P(CliInterruptTest, LeavesNoOutput) {
  VECSEAL_REQUIRE_DAEMON();
  const int signal = GetParam();
  const std::string key = "interrupt-" + std::to_string(signal);
  CreateKey(key);
  ASSERT_TRUE(client::WriteMatrix(Path("in.npy"), Sample(3000, 8)).ok());
  const pid_t daemon = DevDaemon::instance()->pid();
  ASSERT_EQ(::kill(daemon, SIGSTOP), 0);
  int out_fd = -1, err_fd = -1;
  const pid_t cli = vecseal::testing::Spawn(
      {VECSEAL_CLI_PATH, "encrypt", "--key", key, "--reversible", "--tokens", Path("out.tok"),
       "--batch", "100", Path("in.npy"), Path("out.npy")},
      {"VECSEAL_SOCKET=" + Socket()}, out_fd, err_fd);
  ASSERT_GT(cli, 0);
  // The temporary output appears before the first request is answered.
  bool temp_seen = false;
  for (int i = 0; i < 6000 && !temp_seen; ++i) {
    for (const std::string& name : Listing()) temp_seen |= name.rfind(".out.npy.tmp-", 0) == 0;
    if (!temp_seen) ::usleep(10000);
  }
  ASSERT_EQ(::kill(cli, signal), 0);
  const ProcessResult r = vecseal::testing::Collect(cli, out_fd, err_fd);
  ::kill(daemon, SIGCONT);
  ASSERT_TRUE(temp_seen);
  EXPECT_FALSE(fs::exists(Path("out.npy")));
  EXPECT_FALSE(fs::exists(Path("out.tok")));
  if (signal == SIGKILL) {
    EXPECT_EQ(r.exit_code, 128 + SIGKILL);
  } else {
    // A catchable signal: the command stops at once and removes its temporary files too.
    EXPECT_EQ(r.exit_code, 130) << r.err;
    EXPECT_EQ(Listing(), std::vector<std::string>{"in.npy"});
  }
}

INSTANTIATE_TEST_SUITE_P(Signals, CliInterruptTest, ::testing::Values(SIGTERM, SIGINT, SIGKILL));

}  // namespace
}  // namespace vecseal::cli
