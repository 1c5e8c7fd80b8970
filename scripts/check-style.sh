#!/usr/bin/env bash
# The habits CI keeps: every C++ source formatted as .clang-format says, and (given the log of a
# fresh build) no compiler warning in our code (-Wall -Wextra; LibTorch's headers are system
# headers). Usage: scripts/check-style.sh [BUILD_LOG]. Reformat with:
#   clang-format -i $(git ls-files '*.cpp' '*.h')
set -euo pipefail
cd "$(dirname "$0")/.."
git ls-files -z '*.cpp' '*.h' | xargs -0 clang-format --dry-run --Werror
echo "check-style: every source formatted"
if [ -n "${1:-}" ]; then
  if grep -n "warning:" "$1"; then
    echo "check-style: compiler warnings in $1 (above)"
    exit 1
  fi
  echo "check-style: no compiler warnings in $1"
fi
