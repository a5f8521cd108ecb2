#include "vecseal/calibrate/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <ranges>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace vecseal::calibrate {

namespace {

std::string Fixed(double value, int decimals) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", decimals, value);
  return buffer;
}

std::string Percent(double share) { return Fixed(100 * share, 0) + "%"; }

// Three significant digits, so that a suggested grid reads like one a person would type.
double Round3(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.3g", value);
  return std::strtod(buffer, nullptr);
}

// As --betas takes them: 7.5,10,15.
std::string BetaList(const std::vector<double>& betas) {
  std::string text;
  for (double beta : betas) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%g", beta);
    text += (text.empty() ? "" : ",") + std::string(buffer);
  }
  return text;
}

// Right-aligns `text` in a column of `width` characters (all ASCII here).
std::string Cell(const std::string& text, size_t width) {
  return text.size() >= width ? text : std::string(width - text.size(), ' ') + text;
}

std::string Cell(const std::optional<Estimate>& estimate, size_t width) {
  return Cell(estimate ? Fixed(estimate->value, 3) : "-", width);
}

// The strongest known-plaintext attack measured: the one with the most pairs.
const InversionResult* Strongest(const Leakage& leakage) {
  return leakage.inversion.empty() ? nullptr : &leakage.inversion.back();
}

const BetaResult* ResultFor(const CalibrationReport& report, double beta) {
  for (const BetaResult& result : report.results) {
    if (result.beta == beta) return &result;
  }
  return nullptr;
}

std::string LeakageRow(const CalibrationReport& report, const Leakage& leakage) {
  std::string row = " |";
  const size_t sizes = std::max<size_t>(report.transform_only.inversion.size(), 1);
  for (size_t i = 0; i < sizes; ++i) {
    row += Cell(i < leakage.inversion.size() ? Fixed(leakage.inversion[i].mean_cosine.value, 3)
                                             : "-",
                9);
  }
  const InversionResult* strongest = Strongest(leakage);
  row += " |" + Cell(strongest ? Fixed(strongest->identified.value, 3) : "-", 9);
  row += " |" + Cell(Fixed(leakage.aligned_permute.value, 3), 9) +
         Cell(Fixed(leakage.aligned_rotate.value, 3), 8);
  return row;
}

}  // namespace

std::string RenderTable(const CalibrationReport& report) {
  std::ostringstream out;
  out << "vecseal calibrate: " << report.sample_rows << " vectors of dimension "
      << report.dimension << ", " << core::TransformName(report.transform)
      << " transform, ephemeral key\n";
  out << "recall@" << report.recall_k << ": " << report.query_rows
      << (report.queries_given ? " given" : " held-out") << " queries against "
      << report.database_rows << " vectors";
  if (report.plain_knn_accuracy) {
    out << "; classifiers: " << report.train_rows << " train / " << report.test_rows
        << " test vectors, " << report.classes << " classes";
  }
  out << "\nmedian norm " << Fixed(report.median_norm, 3)
      << ", median distance from a query to its nearest neighbour "
      << Fixed(report.median_neighbour_distance, 3) << "\n";
  out << "attacks: inversion from N known pairs onto " << report.attack_holdout
      << " held-out vectors, identified among " << report.identification_pool
      << "; alignment knows " << report.alignment_rows << " public vectors\n";
  out << "an inversion cosine means little below " << Fixed(report.prior_cosine, 3)
      << ", what guessing the mean of the known plaintexts gives\n\n";

  std::string inversion_header;
  for (const InversionResult& inversion : report.transform_only.inversion) {
    inversion_header += Cell("N=" + std::to_string(inversion.pairs), 9);
  }
  if (inversion_header.empty()) inversion_header = Cell("(too few)", 9);
  const std::string strongest_pairs =
      report.transform_only.inversion.empty()
          ? "-"
          : "N=" + std::to_string(report.transform_only.inversion.back().pairs);
  // Column widths: 38 for utility, 9 per inversion size, 9 for identification, 17 alignment.
  const auto left = [](const std::string& text, size_t width) {
    return text.size() >= width ? text : text + std::string(width - text.size(), ' ');
  };
  out << left("           utility (higher is better)", 38) << " |"
      << left(" inversion cosine", inversion_header.size()) << " |" << left(" identified", 9)
      << " | aligned dimensions\n";
  out << "     beta" << Cell("recall@" + std::to_string(report.recall_k), 11) << Cell("k-NN", 9)
      << Cell("logreg", 9) << " |" << inversion_header << " |" << Cell(strongest_pairs, 9)
      << " |  permute  rotate\n";
  out << Cell("no noise", 9) << Cell("1.000", 11) << Cell(report.plain_knn_accuracy, 9)
      << Cell(report.plain_logistic_accuracy, 9) << LeakageRow(report, report.transform_only)
      << "\n";
  for (const BetaResult& result : report.results) {
    out << Cell(Fixed(result.beta, 3), 9) << Cell(Fixed(result.recall.value, 3), 11)
        << Cell(result.knn_accuracy, 9) << Cell(result.logistic_accuracy, 9)
        << LeakageRow(report, result.leakage)
        << (report.recommended_beta == result.beta ? "  <- recommended" : "") << "\n";
  }
  out << "\n" << RenderGuidance(report);
  return out.str();
}

namespace {

// The budget line: the pairs a rule serving test environments may collect per key.
std::string BudgetGuidance(const CalibrationReport& report, const BetaResult& chosen) {
  const SuggestedBudget& budget = chosen.leakage.budget;
  const std::string limit = Fixed(report.max_inversion_cosine, 3);
  std::ostringstream out;
  if (budget.pairs == 0) {
    out << "Suggested budget: none keeps the inversion cosine under " << limit << " at beta "
        << Fixed(chosen.beta, 3) << ": a single known pair already reaches it (guessing the mean "
        << "gives " << Fixed(report.prior_cosine, 3)
        << "); grant such callers no access, or choose --max-inversion-cosine above that.\n";
    return out.str();
  }
  out << "Suggested budget for rules serving test environments: " << (budget.beyond_sample ? "at least " : "")
      << budget.pairs << " vectors per key (\"budgets\": [{\"operation\": \"encrypt\", "
      << "\"vectors\": " << budget.pairs << ", \"per\": ...}]): an attacker holding that many "
      << "pairs reconstructs unseen vectors with mean cosine " << Fixed(budget.mean_cosine, 3)
      << ", under " << limit;
  if (budget.beyond_sample) out << " with every pair the sample holds; a larger sample may allow more";
  out << ". Take the window no shorter than the key's life: pairs do not expire.\n";
  return out.str();
}

}  // namespace

std::vector<double> NextBetas(const CalibrationReport& report) {
  if (report.results.empty()) return {};
  // A plain loop: clang 14, the sanitizer build's compiler, cannot compile libstdc++ 12's views.
  double smallest = report.results.front().beta;
  double largest = smallest;
  for (const BetaResult& result : report.results) {
    smallest = std::min(smallest, result.beta);
    largest = std::max(largest, result.beta);
  }
  std::vector<double> betas;
  if (report.recommended_beta && *report.recommended_beta == largest) {
    for (double factor : {1.0, 1.5, 2.0, 3.0, 5.0, 10.0}) betas.push_back(Round3(largest * factor));
  } else if (!report.recommended_beta) {
    for (double factor : {0.05, 0.1, 0.2, 0.3, 0.5, 1.0}) {
      betas.push_back(Round3(smallest * factor));
    }
  }
  return betas;
}

std::string RenderGuidance(const CalibrationReport& report) {
  std::ostringstream out;
  const std::string targets = "recall@" + std::to_string(report.recall_k) + " >= " +
                              Fixed(report.min_recall, 2) +
                              (report.plain_knn_accuracy
                                   ? " and classification accuracy within " +
                                         Fixed(100 * report.max_accuracy_drop, 0) +
                                         " points of plaintext"
                                   : "");
  const BetaResult* chosen =
      report.recommended_beta ? ResultFor(report, *report.recommended_beta) : nullptr;
  if (chosen == nullptr) {
    out << "No beta tried keeps " << targets << ".";
    if (!report.results.empty()) {
      const BetaResult& smallest = *std::ranges::min_element(
          report.results, {}, [](const BetaResult& result) { return result.beta; });
      out << " The smallest, " << Fixed(smallest.beta, 3) << ", gives recall@" << report.recall_k
          << " " << Fixed(smallest.recall.value, 3) << "; try smaller values: --betas "
          << BetaList(NextBetas(report)) << ".";
    }
    out << "\n";
    return out.str();
  }
  out << "Recommended beta = " << Fixed(chosen->beta, 3) << ": the largest tried that keeps "
      << targets << " (recall@" << report.recall_k << " " << Fixed(chosen->recall.value, 3)
      << " +/- " << Fixed(chosen->recall.ci95, 3);
  if (chosen->knn_accuracy && report.plain_knn_accuracy) {
    out << "; k-NN " << Fixed(chosen->knn_accuracy->value, 3) << " vs "
        << Fixed(report.plain_knn_accuracy->value, 3);
  }
  if (chosen->logistic_accuracy && report.plain_logistic_accuracy) {
    out << "; logistic regression " << Fixed(chosen->logistic_accuracy->value, 3) << " vs "
        << Fixed(report.plain_logistic_accuracy->value, 3);
  }
  out << ").\n";
  if (const std::vector<double> next = NextBetas(report); !next.empty()) {
    out << "Warning: that is the largest beta tried, so a larger one may keep the targets too; "
        << "run again with --betas " << BetaList(next) << ".\n";
  }
  if (report.median_neighbour_distance > 0) {
    out << "That is " << Fixed(chosen->beta / report.median_neighbour_distance, 1)
        << "x the median nearest-neighbour distance (" << Fixed(report.median_neighbour_distance, 3)
        << "): neighbours closer together than beta may change order.\n";
  }
  const InversionResult* strongest = Strongest(chosen->leakage);
  const InversionResult* baseline = Strongest(report.transform_only);
  if (strongest != nullptr && baseline != nullptr) {
    out << "What it leaves: an attacker holding " << strongest->pairs
        << " plaintext/ciphertext pairs reconstructs unseen vectors with mean cosine "
        << Fixed(strongest->mean_cosine.value, 3) << " (guessing the mean gives "
        << Fixed(report.prior_cosine, 3) << ") and finds the nearest known record of "
        << Percent(strongest->identified.value) << " of them (without noise: "
        << Fixed(baseline->mean_cosine.value, 3) << " and " << Percent(baseline->identified.value)
        << "). Only policy stops an attacker from collecting pairs.\n";
  }
  out << "Ciphertext-only alignment recovers " << Percent(chosen->leakage.aligned_permute.value)
      << " of dimensions under permute and " << Percent(chosen->leakage.aligned_rotate.value)
      << " under rotate.\n";
  out << BudgetGuidance(report, *chosen);
  return out.str();
}

namespace {

nlohmann::json ToJson(const Estimate& estimate) {
  return {{"value", estimate.value}, {"ci95", estimate.ci95}};
}

nlohmann::json ToJson(const std::optional<Estimate>& estimate) {
  return estimate ? ToJson(*estimate) : nlohmann::json(nullptr);
}

nlohmann::json ToJson(const Leakage& leakage) {
  nlohmann::json inversion = nlohmann::json::array();
  for (const InversionResult& result : leakage.inversion) {
    inversion.push_back({{"pairs", result.pairs},
                         {"mean_cosine", ToJson(result.mean_cosine)},
                         {"nearest_record_identified", ToJson(result.identified)}});
  }
  return {{"suggested_budget",
           {{"vectors", leakage.budget.pairs},
            {"mean_cosine", leakage.budget.mean_cosine},
            {"beyond_sample", leakage.budget.beyond_sample}}},
          {"known_plaintext_inversion", std::move(inversion)},
          {"alignment_dimensions_recovered",
           {{"permute", ToJson(leakage.aligned_permute)},
            {"rotate", ToJson(leakage.aligned_rotate)}}}};
}

}  // namespace

std::string RenderJson(const CalibrationReport& report) {
  nlohmann::json results = nlohmann::json::array();
  for (const BetaResult& result : report.results) {
    results.push_back({{"beta", result.beta},
                       {"utility",
                        {{"recall_at_k", ToJson(result.recall)},
                         {"knn_accuracy", ToJson(result.knn_accuracy)},
                         {"logistic_accuracy", ToJson(result.logistic_accuracy)}}},
                       {"leakage", ToJson(result.leakage)}});
  }
  nlohmann::json labels = nullptr;
  if (report.plain_knn_accuracy) {
    labels = {{"classes", report.classes},
              {"train_vectors", report.train_rows},
              {"test_vectors", report.test_rows}};
  }
  const nlohmann::json json = {
      {"format", "vecseal-calibrate/1"},
      {"key", "ephemeral"},
      {"transform", core::TransformName(report.transform)},
      {"data",
       {{"dimension", report.dimension},
        {"sample_vectors", report.sample_rows},
        {"queries", {{"count", report.query_rows}, {"given", report.queries_given}}},
        {"database_vectors", report.database_rows},
        {"labels", labels},
        {"median_norm", report.median_norm},
        {"median_neighbour_distance", report.median_neighbour_distance}}},
      {"prior_cosine", report.prior_cosine},
      {"settings",
       {{"recall_k", report.recall_k},
        {"knn_k", report.knn_k},
        {"attack_holdout_vectors", report.attack_holdout},
        {"identification_pool_vectors", report.identification_pool},
        {"alignment_public_vectors", report.alignment_rows}}},
      {"plaintext",
       {{"knn_accuracy", ToJson(report.plain_knn_accuracy)},
        {"logistic_accuracy", ToJson(report.plain_logistic_accuracy)}}},
      {"no_noise_leakage", ToJson(report.transform_only)},
      {"results", std::move(results)},
      {"guidance",
       {{"min_recall", report.min_recall},
        {"max_accuracy_drop", report.max_accuracy_drop},
        {"max_inversion_cosine", report.max_inversion_cosine},
        {"recommended_beta", report.recommended_beta ? nlohmann::json(*report.recommended_beta)
                                                     : nlohmann::json(nullptr)},
        {"next_betas", NextBetas(report)},
        {"text", RenderGuidance(report)}}}};
  return json.dump(2) + "\n";
}

namespace {

struct Series {
  std::string name;
  std::string colour;
  bool dashed = false;
  std::vector<std::pair<double, double>> points;  // (β, value)
};

// A level that does not depend on β, drawn across the panel: a target, or what an attacker or
// a model gets without encryption in the way.
struct Reference {
  std::string name;
  std::string colour;
  double value = 0;
};

// Round tick steps (1, 2 or 5 × 10^k) giving about `target` intervals over [0, max].
double TickStep(double max, int target) {
  const double raw = max / target;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  for (double factor : {1.0, 2.0, 5.0}) {
    if (factor * magnitude >= raw) return factor * magnitude;
  }
  return 10 * magnitude;
}

std::string TickLabel(double value) {
  std::string text = Fixed(value, 3);
  while (text.back() == '0') text.pop_back();
  if (text.back() == '.') text.pop_back();
  return text;
}

// One chart of shares in [0, 1] against β, with its legend underneath.
void DrawPanel(std::ostringstream& svg, double left, double top, const std::string& title,
               const std::vector<Series>& series, std::vector<Reference> references,
               double max_beta, std::optional<double> recommended) {
  constexpr double kWidth = 380, kHeight = 260;
  const auto x = [&](double beta) { return left + kWidth * beta / max_beta; };
  const auto y = [&](double value) { return top + kHeight * (1 - value); };
  svg << "<text x=\"" << left + kWidth / 2 << "\" y=\"" << top - 14
      << "\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">" << title
      << "</text>\n";
  svg << "<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << kWidth << "\" height=\""
      << kHeight << "\" fill=\"none\" stroke=\"#444\"/>\n";
  for (int i = 0; i <= 5; ++i) {
    const double value = i / 5.0;
    svg << "<line x1=\"" << left << "\" x2=\"" << left + kWidth << "\" y1=\"" << y(value)
        << "\" y2=\"" << y(value) << "\" stroke=\"#ddd\"/>\n";
    svg << "<text x=\"" << left - 6 << "\" y=\"" << y(value) + 4
        << "\" text-anchor=\"end\" font-size=\"11\">" << TickLabel(value) << "</text>\n";
  }
  const double step = TickStep(max_beta, 5);
  for (double tick = 0; tick <= max_beta + 1e-9; tick += step) {
    svg << "<line x1=\"" << x(tick) << "\" x2=\"" << x(tick) << "\" y1=\"" << top + kHeight
        << "\" y2=\"" << top + kHeight + 5 << "\" stroke=\"#444\"/>\n";
    svg << "<text x=\"" << x(tick) << "\" y=\"" << top + kHeight + 18
        << "\" text-anchor=\"middle\" font-size=\"11\">" << TickLabel(tick) << "</text>\n";
  }
  svg << "<text x=\"" << left + kWidth / 2 << "\" y=\"" << top + kHeight + 36
      << "\" text-anchor=\"middle\" font-size=\"12\">approximation factor &#946;</text>\n";
  // Labelled at the right edge, top to bottom, each at least a line below the one above it.
  std::ranges::sort(references, std::ranges::greater(), &Reference::value);
  double label_y = top;
  for (const Reference& reference : references) {
    svg << "<line x1=\"" << left << "\" x2=\"" << left + kWidth << "\" y1=\""
        << y(reference.value) << "\" y2=\"" << y(reference.value) << "\" stroke=\""
        << reference.colour << "\" stroke-opacity=\"0.6\" stroke-dasharray=\"2 3\"/>\n";
    label_y = std::max(label_y + 13, y(reference.value) - 4);
    svg << "<text x=\"" << left + kWidth - 4 << "\" y=\"" << label_y
        << "\" text-anchor=\"end\" font-size=\"10\" fill=\"" << reference.colour
        << "\" stroke=\"#fff\" stroke-width=\"3\" paint-order=\"stroke\">"
        << reference.name << "</text>\n";
  }
  if (recommended) {
    svg << "<line x1=\"" << x(*recommended) << "\" x2=\"" << x(*recommended) << "\" y1=\"" << top
        << "\" y2=\"" << top + kHeight << "\" stroke=\"#000\" stroke-dasharray=\"6 4\"/>\n";
    // Label at the foot, clear of the curves near 1, on the side with room.
    const bool right_half = x(*recommended) > left + kWidth / 2;
    svg << "<text x=\"" << x(*recommended) + (right_half ? -4 : 4) << "\" y=\"" << top + kHeight - 8
        << "\" text-anchor=\"" << (right_half ? "end" : "start")
        << "\" font-size=\"11\">recommended &#946; = " << TickLabel(*recommended) << "</text>\n";
  }
  for (const Series& line : series) {
    if (line.points.empty()) continue;
    svg << "<polyline fill=\"none\" stroke=\"" << line.colour << "\" stroke-width=\"2\""
        << (line.dashed ? " stroke-dasharray=\"7 4\"" : "") << " points=\"";
    for (const auto& [beta, value] : line.points) svg << x(beta) << "," << y(value) << " ";
    svg << "\"/>\n";
    for (const auto& [beta, value] : line.points) {
      svg << "<circle cx=\"" << x(beta) << "\" cy=\"" << y(value) << "\" r=\"3\" fill=\""
          << line.colour << "\"/>\n";
    }
  }
  double legend_y = top + kHeight + 58;
  for (const Series& line : series) {
    svg << "<line x1=\"" << left << "\" x2=\"" << left + 24 << "\" y1=\"" << legend_y - 4
        << "\" y2=\"" << legend_y - 4 << "\" stroke=\"" << line.colour << "\" stroke-width=\"2\""
        << (line.dashed ? " stroke-dasharray=\"7 4\"" : "") << "/>\n";
    svg << "<text x=\"" << left + 30 << "\" y=\"" << legend_y << "\" font-size=\"12\">"
        << line.name << "</text>\n";
    legend_y += 17;
  }
  for (const Reference& reference : references) {
    svg << "<line x1=\"" << left << "\" x2=\"" << left + 24 << "\" y1=\"" << legend_y - 4
        << "\" y2=\"" << legend_y - 4 << "\" stroke=\"" << reference.colour
        << "\" stroke-opacity=\"0.6\" stroke-dasharray=\"2 3\"/>\n";
    svg << "<text x=\"" << left + 30 << "\" y=\"" << legend_y << "\" font-size=\"12\">"
        << reference.name << "</text>\n";
    legend_y += 17;
  }
}

}  // namespace

std::string RenderSvg(const CalibrationReport& report) {
  double max_beta = 0;
  for (const BetaResult& result : report.results) max_beta = std::max(max_beta, result.beta);
  if (!(max_beta > 0)) max_beta = 1;

  std::vector<Series> utility = {
      {"recall@" + std::to_string(report.recall_k) + " of nearest-neighbour search", "#1f77b4",
       false, {}}};
  std::vector<Reference> utility_references = {
      {"target recall " + TickLabel(report.min_recall), "#1f77b4", report.min_recall}};
  if (report.plain_knn_accuracy) {
    utility.push_back({"k-NN accuracy", "#2ca02c", false, {}});
    utility.push_back({"logistic regression accuracy", "#9467bd", false, {}});
    utility_references.push_back({"k-NN on plaintext " + Fixed(report.plain_knn_accuracy->value, 3),
                                  "#2ca02c", report.plain_knn_accuracy->value});
    utility_references.push_back(
        {"logistic regression on plaintext " + Fixed(report.plain_logistic_accuracy->value, 3),
         "#9467bd", report.plain_logistic_accuracy->value});
  }
  const InversionResult* baseline = Strongest(report.transform_only);
  const std::string pairs = baseline ? std::to_string(baseline->pairs) : "?";
  std::vector<Series> leakage = {
      {"inversion cosine, " + pairs + " known pairs", "#d62728", false, {}},
      {"nearest record identified, " + pairs + " known pairs", "#ff7f0e", true, {}},
      {"dimensions aligned, permute", "#8c564b", false, {}},
      {"dimensions aligned, rotate", "#e377c2", true, {}}};
  for (const BetaResult& result : report.results) {
    utility[0].points.emplace_back(result.beta, result.recall.value);
    if (report.plain_knn_accuracy && result.knn_accuracy && result.logistic_accuracy) {
      utility[1].points.emplace_back(result.beta, result.knn_accuracy->value);
      utility[2].points.emplace_back(result.beta, result.logistic_accuracy->value);
    }
    if (const InversionResult* strongest = Strongest(result.leakage)) {
      leakage[0].points.emplace_back(result.beta, strongest->mean_cosine.value);
      leakage[1].points.emplace_back(result.beta, strongest->identified.value);
    }
    leakage[2].points.emplace_back(result.beta, result.leakage.aligned_permute.value);
    leakage[3].points.emplace_back(result.beta, result.leakage.aligned_rotate.value);
  }

  std::ostringstream svg;
  svg << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"960\" height=\"480\""
      << " viewBox=\"0 0 960 480\" font-family=\"sans-serif\">\n"
      << "<rect width=\"960\" height=\"480\" fill=\"#fff\"/>\n";
  svg << "<text x=\"480\" y=\"22\" text-anchor=\"middle\" font-size=\"13\">vecseal calibrate: "
      << report.sample_rows << " vectors, d = " << report.dimension << ", "
      << core::TransformName(report.transform) << "</text>\n";
  DrawPanel(svg, 60, 60, "Utility (higher is better)", utility, std::move(utility_references),
            max_beta, report.recommended_beta);
  DrawPanel(svg, 540, 60, "Leakage (lower is safer)", leakage,
            {{"inversion cosine of guessing the mean " + Fixed(report.prior_cosine, 3), "#d62728",
              report.prior_cosine}},
            max_beta, report.recommended_beta);
  svg << "</svg>\n";
  return svg.str();
}

}  // namespace vecseal::calibrate
