// The three renderings of a hand-made report: what a reader sees must follow from the numbers.
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "vecseal/calibrate/report.h"

namespace vecseal::calibrate {
namespace {

size_t Count(const std::string& text, const std::string& needle) {
  size_t count = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) {
    ++count;
  }
  return count;
}

// Two β without labels; inversion measured with 8 and 16 pairs.
CalibrationReport UnlabelledReport() {
  CalibrationReport report;
  report.dimension = 16;
  report.sample_rows = 500;
  report.query_rows = 50;
  report.database_rows = 450;
  report.recall_k = 10;
  report.median_neighbour_distance = 0.5;
  report.transform_only.inversion = {{8, {0.9, 0.01}, {0.8, 0.05}}, {16, {1.0, 0}, {1.0, 0}}};
  report.transform_only.aligned_permute = {1.0, 0};
  for (double beta : {0.5, 2.0}) {
    BetaResult result;
    result.beta = beta;
    result.recall = {beta < 1 ? 0.95 : 0.6, 0.02};
    result.leakage.inversion = {{8, {0.85, 0.01}, {0.5, 0.05}}, {16, {0.9, 0.01}, {0.4, 0.05}}};
    result.leakage.aligned_permute = {0.7, 0.1};
    result.leakage.budget = {beta < 1 ? size_t{5} : size_t{7}, beta < 1 ? 0.45 : 0.48, false};
    report.results.push_back(result);
  }
  Recommend(report);
  return report;
}

TEST(ReportTest, GuidanceNamesTheRecommendedBetaAndItsLeakage) {
  const CalibrationReport report = UnlabelledReport();
  ASSERT_EQ(report.recommended_beta, 0.5);
  EXPECT_EQ(RenderGuidance(report),
            "Recommended beta = 0.500: the largest tried that keeps recall@10 >= 0.90 "
            "(recall@10 0.950 +/- 0.020).\n"
            "That is 1.0x the median nearest-neighbour distance (0.500): neighbours closer "
            "together than beta may change order.\n"
            "What it leaves: an attacker holding 16 plaintext/ciphertext pairs reconstructs "
            "unseen vectors with mean cosine 0.900 (guessing the mean gives 0.000) and finds the "
            "nearest known record of 40% of them (without noise: 1.000 and 100%). Only policy "
            "stops an attacker from collecting pairs.\n"
            "Ciphertext-only alignment recovers 70% of dimensions under permute and 0% under "
            "rotate.\n"
            "Suggested budget for rules serving test environments: 5 vectors per key "
            "(\"budgets\": [{\"operation\": \"encrypt\", \"vectors\": 5, \"per\": ...}]): an "
            "attacker holding that many pairs reconstructs unseen vectors with mean cosine 0.450, "
            "under 0.500. Take the window no shorter than the key's life: pairs do not expire.\n");
}

TEST(ReportTest, GuidanceSaysWhenNoBudgetKeepsTheInversionUnderTheLimit) {
  CalibrationReport report = UnlabelledReport();
  report.prior_cosine = 0.83;
  report.results[0].leakage.budget = {};
  const std::string guidance = RenderGuidance(report);
  EXPECT_NE(guidance.find("Suggested budget: none keeps the inversion cosine under 0.500 at beta "
                          "0.500: a single known pair already reaches it (guessing the mean gives "
                          "0.830); grant such callers no access, or choose "
                          "--max-inversion-cosine above that.\n"),
            std::string::npos)
      << guidance;
  report.results[0].leakage.budget = {40, 0.3, true};
  EXPECT_NE(RenderGuidance(report).find("environments: at least 40 vectors per key"),
            std::string::npos);
  EXPECT_EQ(nlohmann::json::parse(RenderJson(report))["results"][0]["leakage"]["suggested_budget"],
            (nlohmann::json{{"vectors", 40}, {"mean_cosine", 0.3}, {"beyond_sample", true}}));
}

TEST(ReportTest, GuidanceSaysWhenNoBetaQualifies) {
  CalibrationReport report = UnlabelledReport();
  for (BetaResult& result : report.results) result.recall.value = 0.5;
  Recommend(report);
  EXPECT_EQ(RenderGuidance(report),
            "No beta tried keeps recall@10 >= 0.90. The smallest, 0.500, gives recall@10 0.500; "
            "try smaller values: --betas 0.025,0.05,0.1,0.15,0.25,0.5.\n");
  EXPECT_EQ(RenderTable(report).find("<- recommended"), std::string::npos);
  const nlohmann::json json = nlohmann::json::parse(RenderJson(report));
  EXPECT_TRUE(json["guidance"]["recommended_beta"].is_null());
  EXPECT_EQ(json["guidance"]["next_betas"], (nlohmann::json{0.025, 0.05, 0.1, 0.15, 0.25, 0.5}));
}

TEST(ReportTest, GuidanceWarnsWhenTheLargestBetaTriedIsRecommended) {
  CalibrationReport report = UnlabelledReport();
  EXPECT_TRUE(NextBetas(report).empty());  // 0.5 is recommended and 2 was tried above it
  EXPECT_TRUE(nlohmann::json::parse(RenderJson(report))["guidance"]["next_betas"].empty());
  report.results[1].recall.value = 0.91;
  Recommend(report);
  ASSERT_EQ(report.recommended_beta, 2.0);
  const std::string guidance = RenderGuidance(report);
  EXPECT_NE(guidance.find("(recall@10 0.910 +/- 0.020).\nWarning: that is the largest beta tried, "
                          "so a larger one may keep the targets too; run again with --betas "
                          "2,3,4,6,10,20.\n"),
            std::string::npos)
      << guidance;
  EXPECT_EQ(nlohmann::json::parse(RenderJson(report))["guidance"]["next_betas"],
            (nlohmann::json{2, 3, 4, 6, 10, 20}));
}

TEST(ReportTest, TableMarksTheRecommendedRowAndDashesMissingClassifiers) {
  const std::string table = RenderTable(UnlabelledReport());
  EXPECT_NE(table.find("    0.500      0.950        -        - |"), std::string::npos) << table;
  EXPECT_EQ(Count(table, "<- recommended"), 1u);
  EXPECT_NE(table.find("     N=8     N=16"), std::string::npos) << table;
}

TEST(ReportTest, JsonHasNullClassifiersWithoutLabels) {
  const nlohmann::json json = nlohmann::json::parse(RenderJson(UnlabelledReport()));
  EXPECT_TRUE(json["data"]["labels"].is_null());
  EXPECT_TRUE(json["plaintext"]["knn_accuracy"].is_null());
  EXPECT_TRUE(json["results"][1]["utility"]["knn_accuracy"].is_null());
  EXPECT_EQ(json["results"][1]["utility"]["recall_at_k"]["value"], 0.6);
  EXPECT_EQ(json["results"][0]["leakage"]["known_plaintext_inversion"][1]["pairs"], 16);
  EXPECT_EQ(json["guidance"]["recommended_beta"], 0.5);
}

TEST(ReportTest, SvgDrawsOneLinePerMeasuredSeriesAndTheRecommendation) {
  const std::string svg = RenderSvg(UnlabelledReport());
  // recall, inversion cosine, identification, alignment under permute and under rotate.
  EXPECT_EQ(Count(svg, "<polyline"), 5u);
  EXPECT_EQ(Count(svg, "<circle"), 10u);
  EXPECT_EQ(Count(svg, "recommended &#946; = 0.5<"), 2u);  // one per panel
  EXPECT_EQ(Count(svg, "<text"), Count(svg, "</text>"));
  EXPECT_TRUE(svg.ends_with("</svg>\n"));
}

TEST(ReportTest, SvgDrawsTheBaselinesEachPanelIsReadAgainst) {
  CalibrationReport report = UnlabelledReport();
  report.prior_cosine = 0.83;
  report.plain_knn_accuracy = Estimate{0.97, 0.01};
  report.plain_logistic_accuracy = Estimate{0.95, 0.01};
  const std::string svg = RenderSvg(report);
  // Each baseline is a dotted line across its panel, labelled there and in the legend.
  EXPECT_EQ(Count(svg, "stroke-dasharray=\"2 3\""), 2u * 4u);
  EXPECT_EQ(Count(svg, ">target recall 0.9<"), 2u);
  EXPECT_EQ(Count(svg, ">k-NN on plaintext 0.970<"), 2u);
  EXPECT_EQ(Count(svg, ">logistic regression on plaintext 0.950<"), 2u);
  EXPECT_EQ(Count(svg, ">inversion cosine of guessing the mean 0.830<"), 2u);
  // The leakage baseline sits at 0.83 of the panel's 260-pixel height below its top at y = 60.
  EXPECT_NE(svg.find("y1=\"104.2\" y2=\"104.2\" stroke=\"#d62728\""), std::string::npos) << svg;
}

}  // namespace
}  // namespace vecseal::calibrate
