#include "support/encrypt_load.h"

#include <cmath>
#include <cstring>
#include <random>
#include <set>

#include "support/dev_daemon.h"

namespace vecseal::reliability {
namespace {

using daemon::testing::BytesToFloats;
using daemon::testing::FloatsToBytes;
using daemon::testing::HttpClient;

// Decryption is exact up to float rounding (docs/api.md); a wrong noise seed is off by the
// noise itself, about β/4 ≈ 0.6 per vector for the demo key, far beyond this.
constexpr float kTolerance = 1e-3f;
constexpr size_t kDecryptBatch = 2000;

}  // namespace

std::vector<float> Plaintext(uint64_t seed, size_t vectors) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> values(vectors * kDimension);
  for (float& v : values) v = normal(rng);
  return values;
}

EncryptLoad::EncryptLoad(std::string socket_path, std::string key, size_t threads,
                         std::chrono::milliseconds pause_after_error)
    : socket_path_(std::move(socket_path)),
      key_(std::move(key)),
      pause_after_error_(pause_after_error) {
  for (size_t i = 0; i < threads; ++i) threads_.emplace_back([this, i] { Run(i); });
}

EncryptLoad::~EncryptLoad() { Stop(); }

void EncryptLoad::Stop() {
  stop_ = true;
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

void EncryptLoad::Run(size_t thread_index) {
  HttpClient client(socket_path_);
  const std::string target = "/v1/keys/" + key_ + "/encrypt";
  for (uint64_t i = 0; !stop_.load(); ++i) {
    Outcome outcome;
    outcome.seed = (uint64_t{thread_index} << 40) | i;
    outcome.vectors = 1 + i % 4;
    const auto result = client.PostBinary(
        target, FloatsToBytes(Plaintext(outcome.seed, outcome.vectors)),
        {{"Vecseal-Dimension", std::to_string(kDimension)}, {"Vecseal-Reversible", "true"}});
    outcome.status = result.status;
    outcome.code = result.ErrorCode();
    if (auto id = result.headers.find("vecseal-request-id"); id != result.headers.end()) {
      outcome.request_id = id->second;
    }
    outcome.body = result.body;
    {
      std::lock_guard lock(mutex_);
      outcomes_.push_back(std::move(outcome));
    }
    if (result.status != 200 && pause_after_error_.count() > 0) {
      std::this_thread::sleep_for(pause_after_error_);
    }
  }
}

bool EncryptLoad::WaitFor(const std::function<bool(const std::vector<Outcome>&)>& predicate,
                          std::chrono::seconds deadline) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  while (std::chrono::steady_clock::now() < until) {
    {
      std::lock_guard lock(mutex_);
      if (predicate(outcomes_)) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

bool EncryptLoad::WaitForMore(unsigned status, size_t n) {
  size_t now = 0;
  {
    std::lock_guard lock(mutex_);
    now = CountStatus(outcomes_, status);
  }
  return WaitFor([&](const std::vector<Outcome>& o) { return CountStatus(o, status) >= now + n; });
}

std::vector<Outcome> EncryptLoad::Outcomes() const {
  std::lock_guard lock(mutex_);
  return outcomes_;
}

size_t CountStatus(const std::vector<Outcome>& outcomes, unsigned status, const std::string& code) {
  size_t count = 0;
  for (const Outcome& o : outcomes) {
    if (o.status == status && (code.empty() || o.code == code)) ++count;
  }
  return count;
}

std::vector<std::string> WrongCiphertexts(const std::string& socket_path, const std::string& key,
                                          const std::vector<Outcome>& outcomes) {
  std::vector<std::string> wrong;
  std::vector<const Outcome*> served;
  for (const Outcome& o : outcomes) {
    if (o.status != 200) continue;
    if (o.body.size() != o.vectors * (kDimension * sizeof(float) + kTokenBytes)) {
      wrong.push_back("request " + o.request_id + ": body of " + std::to_string(o.body.size()) +
                      " bytes for " + std::to_string(o.vectors) + " vectors");
      continue;
    }
    served.push_back(&o);
  }
  HttpClient client(socket_path);
  for (size_t begin = 0; begin < served.size();) {
    std::string ciphertexts, tokens;
    size_t end = begin, vectors = 0;
    while (end < served.size() && vectors + served[end]->vectors <= kDecryptBatch) {
      const Outcome& o = *served[end++];
      const size_t float_bytes = o.vectors * kDimension * sizeof(float);
      ciphertexts += o.body.substr(0, float_bytes);
      tokens += o.body.substr(float_bytes);
      vectors += o.vectors;
    }
    const auto result = client.PostBinary("/v1/keys/" + key + "/decrypt", ciphertexts + tokens,
                                          {{"Vecseal-Dimension", std::to_string(kDimension)}});
    if (result.status != 200) {
      wrong.push_back("decrypt of " + std::to_string(end - begin) + " answers failed: " +
                      std::to_string(result.status) + " " + result.body);
      begin = end;
      continue;
    }
    const std::vector<float> opened = BytesToFloats(result.body, vectors * kDimension);
    size_t offset = 0;
    for (size_t i = begin; i < end; ++i) {
      const Outcome& o = *served[i];
      const std::vector<float> plain = Plaintext(o.seed, o.vectors);
      for (size_t j = 0; j < plain.size(); ++j) {
        if (!(std::fabs(opened[offset + j] - plain[j]) <= kTolerance)) {
          wrong.push_back("request " + o.request_id + ": component " + std::to_string(j) +
                          " decrypts to " + std::to_string(opened[offset + j]) + ", sent " +
                          std::to_string(plain[j]));
          break;
        }
      }
      offset += plain.size();
    }
    begin = end;
  }
  return wrong;
}

std::vector<std::string> ServedWithoutRecord(const std::vector<Outcome>& outcomes,
                                             const std::vector<nlohmann::json>& records) {
  std::set<std::string> recorded;
  for (const auto& record : records) {
    if (record.value("event", "") == "encrypt" && record.contains("request_id")) {
      recorded.insert(record["request_id"].is_string() ? record["request_id"].get<std::string>()
                                                       : record["request_id"].dump());
    }
  }
  std::vector<std::string> missing;
  for (const Outcome& o : outcomes) {
    if (o.status == 200 && !recorded.contains(o.request_id)) {
      missing.push_back(o.request_id.empty() ? "(no request id)" : o.request_id);
    }
  }
  return missing;
}

}  // namespace vecseal::reliability
