// Figures of training runs, drawn by gnuplot (Debian's gnuplot-nox): the data and a script go
// to a temporary folder, gnuplot renders PNG (pngcairo) and SVG, and the files are renamed into
// place only when both exist, so a failed plot leaves nothing half-written.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "noprop/runs.h"

namespace noprop {

// $NOPROP_GNUPLOT, else "gnuplot" from PATH.
std::string gnuplot_program();

// One run, four panels: test accuracy and the training losses (log scale, one line per block
// for NoProp-DT) against epoch and against wall-clock time. Writes PREFIX.png and PREFIX.svg
// and returns their paths.
std::vector<std::filesystem::path> plot_run(const RunRecord& run, const std::filesystem::path& prefix);

// Several runs on common axes: test accuracy against epoch and against wall-clock time.
std::vector<std::filesystem::path> plot_comparison(const std::vector<RunRecord>& runs,
                                                   const std::filesystem::path& prefix);

}  // namespace noprop
