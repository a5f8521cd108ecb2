// What calibration tells people: a table for the terminal, JSON for pipelines, an SVG for the
// eye. All three render the same CalibrationReport.
#pragma once

#include <string>
#include <vector>

#include "vecseal/calibrate/calibration.h"

namespace vecseal::calibrate {

std::string RenderTable(const CalibrationReport& report);
// The sentences under the table: which β meets the targets and what it leaves an attacker.
std::string RenderGuidance(const CalibrationReport& report);
// The β values to try next when the answer may lie outside those tried: above the largest when
// it is the one recommended, below the smallest when none qualifies; otherwise none.
std::vector<double> NextBetas(const CalibrationReport& report);
std::string RenderJson(const CalibrationReport& report);
std::string RenderSvg(const CalibrationReport& report);

}  // namespace vecseal::calibrate
