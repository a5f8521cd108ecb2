#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "vecseal/wire/binary_floats.h"
#include "vecseal/wire/json_floats.h"

namespace vecseal::wire {
namespace {

using Limits = std::numeric_limits<float>;

std::vector<float> Awkward() {
  return {0.0f, -0.0f, 1.0f, -1.0f, 0.1f, 1.0f / 3, Limits::max(), Limits::lowest(),
          Limits::min(), Limits::denorm_min(), -Limits::denorm_min(), 16777217.0f, 3.4e-39f};
}

std::string Text(float value) {
  std::string text;
  AppendFloat(text, value);
  return text;
}

TEST(WireJsonFloats, ShortestTextReadsBackBitExact) {
  std::vector<float> values = Awkward();
  uint32_t bits = 0x9e3779b9;
  for (int i = 0; i < 10000; ++i) {
    bits = bits * 1664525u + 1013904223u;
    const float value = std::bit_cast<float>(bits);
    if (std::isfinite(value)) values.push_back(value);
  }
  for (float value : values) {
    EXPECT_EQ(std::bit_cast<uint32_t>(ParseFloat32(Text(value))), std::bit_cast<uint32_t>(value))
        << Text(value);
  }
  EXPECT_EQ(Text(0.1f), "0.1");
  EXPECT_EQ(Text(-2.0f), "-2");
}

TEST(WireJsonFloats, NonFiniteValuesAreNotJson) {
  // Callers refuse them before writing; what comes out is what std::to_chars writes.
  EXPECT_EQ(Text(Limits::infinity()), "inf");
  EXPECT_EQ(Text(-Limits::infinity()), "-inf");
  EXPECT_EQ(Text(Limits::quiet_NaN()), "nan");
}

TEST(WireJsonFloats, OutOfRangeTextBecomesInfinityAndTinyUnderflows) {
  EXPECT_EQ(ParseFloat32("3.4028235e38"), Limits::max());
  EXPECT_EQ(ParseFloat32("1e39"), Limits::infinity());
  EXPECT_EQ(ParseFloat32("-1e39"), -Limits::infinity());
  EXPECT_EQ(ParseFloat32("1e-46"), 0.0f);
  EXPECT_EQ(ParseFloat32("1e-45"), Limits::denorm_min());
  EXPECT_EQ(ParseFloat32("7"), 7.0f);
  // Beyond double's range too: still ±inf above one and a signed zero below.
  EXPECT_EQ(ParseFloat32("1e400"), Limits::infinity());
  EXPECT_EQ(ParseFloat32("-1e400"), -Limits::infinity());
  EXPECT_EQ(ParseFloat32("12.5e99999999999999999999"), Limits::infinity());
  EXPECT_EQ(ParseFloat32("0.0001e400"), Limits::infinity());
  EXPECT_EQ(ParseFloat32("1e-400"), 0.0f);
  EXPECT_TRUE(std::signbit(ParseFloat32("-1e-400")));
  EXPECT_EQ(ParseFloat32("1000e-400"), 0.0f);
  EXPECT_EQ(ParseFloat32(std::string(400, '9')), Limits::infinity());
}

TEST(WireJsonFloats, VectorsAreRowsOfDimension) {
  std::string out = "x";
  AppendVectorsJson(out, std::vector<float>{1, 2.5f, -3, 4}, 2);
  EXPECT_EQ(out, "x[[1,2.5],[-3,4]]");
  out.clear();
  AppendVectorsJson(out, std::vector<float>{1, 2, 3}, 3);
  EXPECT_EQ(out, "[[1,2,3]]");
  out.clear();
  AppendVectorsJson(out, {}, 3);
  EXPECT_EQ(out, "[]");
}

TEST(WireBinaryFloats, WireOrderIsLittleEndian) {
  std::string bytes = "h";
  AppendLittleEndian(bytes, std::vector<float>{1.0f, -2.0f});
  EXPECT_EQ(bytes, std::string("h\x00\x00\x80\x3f\x00\x00\x00\xc0", 9));
  std::vector<float> read;
  ReadLittleEndian(std::string_view(bytes).substr(1), read);
  EXPECT_EQ(read, (std::vector<float>{1.0f, -2.0f}));
}

TEST(WireBinaryFloats, RoundTripKeepsEveryBitIncludingNanPayloads) {
  std::vector<float> values = Awkward();
  for (uint32_t bits : {0x7fc00000u, 0x7fc00001u, 0xffc12345u, 0x7f800001u, 0x7f800000u,
                        0xff800000u}) {
    values.push_back(std::bit_cast<float>(bits));
  }
  std::string scratch;
  const std::string_view view = LittleEndianBytes(values, scratch);
  std::string appended;
  AppendLittleEndian(appended, values);
  EXPECT_EQ(view, appended);
  std::vector<float> read = {42.0f};
  ReadLittleEndian(appended, read);
  ASSERT_EQ(read.size(), values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(std::bit_cast<uint32_t>(read[i]), std::bit_cast<uint32_t>(values[i])) << i;
  }
  std::vector<float> in_place = values;
  ConvertLittleEndian(in_place);
  ConvertLittleEndian(in_place);
  EXPECT_EQ(std::memcmp(in_place.data(), values.data(), values.size() * sizeof(float)), 0);
  ReadLittleEndian("", read);
  EXPECT_TRUE(read.empty());
}

}  // namespace
}  // namespace vecseal::wire
