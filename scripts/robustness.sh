#!/usr/bin/env bash
# The robustness checks CI runs after the test suite:
#  1. the whole GoogleTest suite built with AddressSanitizer + UndefinedBehaviorSanitizer (gcc);
#  2. every libFuzzer target (clang) for FUZZ_SECONDS seconds each (default 30), starting from
#     its seed corpus in fuzz/corpus/ (new inputs go to a temporary folder, not the repository).
# Needs the packages of `scripts/setup.sh --checks`.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="$(nproc)"
seconds="${FUZZ_SECONDS:-30}"

echo "== sanitizers: ASan + UBSan build of the test suite"
# -O1 -g1: line numbers in reports at a fraction of -g's compile time (LibTorch headers are heavy).
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DNOPROP_SANITIZE=ON >/dev/null
# The suite and the programs it runs; the benchmarks of bench/ are not tested there.
cmake --build build-asan -j"$jobs" --target noprop_tests
# LibTorch's own thread pools and registries live until exit; leak reports are about them.
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j"$jobs"

echo "== fuzzing: ${seconds} s per target"
CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DNOPROP_FUZZ=ON \
  -DNOPROP_BUILD_TESTS=OFF >/dev/null
targets=(idx cifar config checkpoint image runs)
cmake --build build-fuzz -j"$jobs" --target "${targets[@]/#/fuzz_}"
for target in "${targets[@]}"; do
  work="$(mktemp -d)"
  mkdir -p "$work/new"
  status=0
  ASAN_OPTIONS=detect_leaks=0 build-fuzz/fuzz_${target} -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 \
    -print_final_stats=1 -artifact_prefix="$work/" "$work/new" "fuzz/corpus/${target}" >"$work/log" 2>&1 || status=$?
  echo "fuzz_${target}: $(grep -E '^stat::number_of_executed_units' "$work/log" | awk '{print $2}') executions in ${seconds} s, exit ${status}"
  if [ "$status" -ne 0 ]; then tail -n 60 "$work/log"; exit 1; fi
  rm -rf "$work"
done
