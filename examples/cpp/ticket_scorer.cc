// A production service that encrypts every embedding before a model sees it.
//
//   ticket_scorer [--socket PATH] [--key NAME] TEXT...
//
// It routes support tickets to a team. The model (a nearest-centroid classifier) is trained and
// queried on vectors encrypted by vecseald under one model key, so whoever runs the model (or
// steals its training data) never holds a plaintext embedding. Embeddings here come from a toy
// hashed-trigram embedder so that the example needs no ML runtime; a real service would call its
// embedding model at the same place.
//
// Prints one line per TEXT: "<team>\t<TEXT>". Exits 1 with the daemon's reason on any error.

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vecseal/client/client.h"

namespace {

constexpr size_t kDimension = 64;

// FNV-1a of each character trigram picks a dimension; the counts, L2-normalised, are the vector.
std::vector<float> Embed(std::string_view text) {
  std::vector<float> v(kDimension, 0.0f);
  for (size_t i = 0; i + 3 <= text.size(); ++i) {
    uint32_t h = 2166136261u;
    for (char c : text.substr(i, 3)) {
      h = (h ^ static_cast<uint8_t>(c)) * 16777619u;
    }
    v[h % kDimension] += 1.0f;
  }
  float norm = 0;
  for (float x : v) norm += x * x;
  norm = std::sqrt(norm);
  if (norm > 0) {
    for (float& x : v) x /= norm;
  }
  return v;
}

// The model only ever receives encrypted vectors.
class NearestCentroid {
 public:
  void Train(std::span<const float> encrypted, const std::vector<std::string>& labels) {
    std::map<std::string, std::pair<std::vector<float>, int>> sums;
    for (size_t i = 0; i < labels.size(); ++i) {
      auto& [sum, count] = sums[labels[i]];
      sum.resize(kDimension, 0.0f);
      for (size_t j = 0; j < kDimension; ++j) sum[j] += encrypted[i * kDimension + j];
      ++count;
    }
    for (auto& [label, entry] : sums) {
      for (float& x : entry.first) x /= static_cast<float>(entry.second);
      centroids_.emplace_back(label, std::move(entry.first));
    }
  }

  const std::string& Predict(std::span<const float> encrypted) const {
    const std::string* best = nullptr;
    float best_distance = std::numeric_limits<float>::infinity();
    for (const auto& [label, centroid] : centroids_) {
      float d = 0;
      for (size_t j = 0; j < kDimension; ++j) {
        d += (encrypted[j] - centroid[j]) * (encrypted[j] - centroid[j]);
      }
      if (d < best_distance) {
        best_distance = d;
        best = &label;
      }
    }
    return *best;
  }

 private:
  std::vector<std::pair<std::string, std::vector<float>>> centroids_;
};

struct Example {
  const char* team;
  const char* text;
};

// The labelled history the model learns from (labels stay in the clear, as in training).
constexpr std::array kHistory = {
    Example{"billing", "I was charged twice for my subscription this month"},
    Example{"billing", "please refund the duplicate charge on my invoice"},
    Example{"billing", "my invoice shows the wrong amount"},
    Example{"access", "I cannot log in, the password reset link has expired"},
    Example{"access", "two-factor code never arrives so I am locked out of my account"},
    Example{"access", "my login fails after changing the password"},
    Example{"outage", "the dashboard returns error 503 for everyone in our team"},
    Example{"outage", "the API has been timing out since this morning"},
    Example{"outage", "service is down and pages do not load"},
};

int Fail(const vecseal::Status& status) {
  std::fprintf(stderr, "ticket_scorer: %s: %s\n", status.reason().c_str(),
               status.message().c_str());
  return 1;
}

std::vector<float> EmbedAll(std::span<const std::string> texts) {
  std::vector<float> out;
  out.reserve(texts.size() * kDimension);
  for (const auto& text : texts) {
    auto v = Embed(text);
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  vecseal::client::ClientOptions options;
  std::string key = "demo";
  std::vector<std::string> tickets;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if ((arg == "--socket" || arg == "--key") && i + 1 < argc) {
      (arg == "--socket" ? options.socket_path : key) = argv[++i];
    } else {
      tickets.emplace_back(arg);
    }
  }
  if (tickets.empty()) {
    std::fprintf(stderr, "usage: ticket_scorer [--socket PATH] [--key NAME] TEXT...\n");
    return 2;
  }

  auto client = vecseal::client::Client::Connect(options);
  if (!client.ok()) return Fail(client.status());

  // Training, done once: encrypt the history, train on ciphertexts only.
  std::vector<std::string> texts;
  std::vector<std::string> labels;
  for (const auto& example : kHistory) {
    texts.emplace_back(example.text);
    labels.emplace_back(example.team);
  }
  auto history = (*client)->Encrypt(key, EmbedAll(texts), kDimension);
  if (!history.ok()) return Fail(history.status());
  NearestCentroid model;
  model.Train(history->vectors, labels);

  // Serving: every input is encrypted under the same key before the model sees it.
  auto queries = (*client)->Encrypt(key, EmbedAll(tickets), kDimension);
  if (!queries.ok()) return Fail(queries.status());
  if (queries->key_version != history->key_version) {
    std::fprintf(stderr, "ticket_scorer: key '%s' was rotated; retrain the model\n", key.c_str());
    return 1;
  }
  for (size_t i = 0; i < tickets.size(); ++i) {
    std::span<const float> row(queries->vectors.data() + i * kDimension, kDimension);
    std::printf("%s\t%s\n", model.Predict(row).c_str(), tickets[i].c_str());
  }
  return 0;
}
