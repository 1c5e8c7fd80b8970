// metrics.csv of a run directory, as `noprop plot`, `compare` and `report` read it, through the
// tables built from it (the figures run gnuplot, an external program, and are left out).
#include "fuzz_common.h"
#include "noprop/runs.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto csv = noprop::fuzz::input_file("metrics.csv", data, size);
  const auto dir = csv.parent_path();
  static const bool once = [&] {
    noprop::write_file_atomic(dir / "config.yaml", noprop::to_yaml(noprop::Config{}));
    return true;
  }();
  (void)once;
  noprop::fuzz::expect_clean([&] {
    auto run = noprop::read_run(dir);
    run.loss_columns();
    run.wall_seconds();
    noprop::compare_table({run}, noprop::default_target({run}));
    noprop::report_table({run});
  });
  return 0;
}
