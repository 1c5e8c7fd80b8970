// Figures: gnuplot writes valid PNG and SVG files of the expected size, decodable and not
// blank; a missing or failing gnuplot is a one-line Error and leaves no file behind.
#include <gtest/gtest.h>
#include <stb/stb_image.h>

#include <cstdlib>
#include <set>

#include "noprop/plot.h"
#include "test_util.h"

using namespace noprop;
using namespace noprop::test;
namespace fs = std::filesystem;

namespace {

const char* kMetrics =
    "epoch,loss_block_1,loss_block_2,loss_ce,loss_total,test_accuracy,seconds,eval_seconds\n"
    "1,0.5,0.25,0.1,0.85,97.5,100,10\n2,0.25,0.125,0.05,0.425,98.5,110,12\n3,0.2,0.1,nan,0.3,98.25,90,8\n";

class PlotTest : public TempDirTest {
 protected:
  void TearDown() override {
    unsetenv("NOPROP_GNUPLOT");
    TempDirTest::TearDown();
  }
};

uint32_t be32(const std::string& s, std::size_t at) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = v << 8 | uint8_t(s[at + i]);
  return v;
}

// Checks the PNG signature and IHDR size, then decodes it and counts distinct grey levels.
void expect_png(const fs::path& file, uint32_t width, uint32_t height) {
  const std::string png = read_text_file(file);
  ASSERT_GT(png.size(), 33u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(png.substr(12, 4), "IHDR");
  EXPECT_EQ(be32(png, 16), width);
  EXPECT_EQ(be32(png, 20), height);
  int w = 0, h = 0, n = 0;
  stbi_uc* px = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(png.data()), int(png.size()), &w, &h, &n, 1);
  ASSERT_NE(px, nullptr) << stbi_failure_reason();
  std::set<int> levels(px, px + std::size_t(w) * h);
  stbi_image_free(px);
  EXPECT_GT(levels.size(), 10u) << "blank figure";
}

void expect_svg(const fs::path& file, const std::string& text) {
  const std::string svg = read_text_file(file);
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(svg.find("<path"), std::string::npos);
  EXPECT_NE(svg.find(text), std::string::npos) << text;
}

}  // namespace

TEST_F(PlotTest, RunFigureIsAValidPngAndSvg) {
  auto run = read_run(write_run(dir / "my-run", "dt", "one-hot", 1, kMetrics, {98.0}));
  auto files = plot_run(run, dir / "my-run" / "curves");
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0], dir / "my-run" / "curves.png");
  expect_png(files[0], 1200, 900);
  expect_svg(files[1], "my-run: NoProp-DT one-hot, MNIST");
  expect_svg(files[1], "block_2");
  // Nothing else appears next to the figures.
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir / "my-run")) names.insert(e.path().filename().string());
  EXPECT_EQ(names, (std::set<std::string>{"config.yaml", "metrics.csv", "summary.json", "curves.png", "curves.svg"}));
}

TEST_F(PlotTest, ComparisonFigureHasOneLinePerRun) {
  auto a = read_run(write_run(dir / "run-a", "dt", "one-hot", 1, kMetrics, {98.0}));
  auto b = read_run(write_run(dir / "run-b", "backprop", "one-hot", 1, kMetrics, {}));
  auto files = plot_comparison({a, b}, dir / "cmp");
  expect_png(files[0], 1200, 450);
  expect_svg(files[1], "run-a (NoProp-DT one-hot)");
  expect_svg(files[1], "run-b (backprop one-hot)");
}

TEST_F(PlotTest, MissingOrFailingGnuplotIsAnErrorAndWritesNothing) {
  auto run = read_run(write_run(dir / "r", "dt", "one-hot", 1, kMetrics, {98.0}));
  setenv("NOPROP_GNUPLOT", (dir / "no-such-gnuplot").c_str(), 1);
  auto msg = error_of([&] { plot_run(run, dir / "fig"); });
  EXPECT_NE(msg.find("cannot run"), std::string::npos) << msg;
  EXPECT_NE(msg.find("gnuplot-nox"), std::string::npos) << msg;
  setenv("NOPROP_GNUPLOT", "false", 1);
  EXPECT_NE(error_of([&] { plot_run(run, dir / "fig"); }).find("false failed"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir / "fig.png"));
  EXPECT_FALSE(fs::exists(dir / "fig.svg"));
  unsetenv("NOPROP_GNUPLOT");
  EXPECT_NE(error_of([&] { plot_run(run, dir / "nowhere" / "fig"); }).find("no such directory"), std::string::npos);
}
