#!/usr/bin/env bash
# Side-by-side throughput of noprop and the PyTorch seed reproduction (eoghanf/NoPropLLM at
# e4bed9b) on this machine: NoProp-DT, seed architecture, MNIST, batch 128, T = 10, the same
# thread count, runs interleaved (seed, ours, seed, ours, ...) so that drifts in machine speed
# hit both alike. Prints every run's JSON line, then the medians and the ratios.
#
# usage: bench/compare-seed.sh SEED_CHECKOUT [--data-dir DIR] [--threads N] [--rounds N]
#                              [--steps N] [--warmup N] [-- extra noprop_bench flags]
#   SEED_CHECKOUT  a clone of https://github.com/eoghanf/NoPropLLM at e4bed9b
#   --data-dir     folder with the MNIST IDX files (default: $NOPROP_DATA, else ./data)
# Needs /usr/bin/python3 with torch (Debian: python3-torch) and numpy, and a Release build in
# ./build (it builds one when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
seed="$1"; shift
data="${NOPROP_DATA:-./data}"; threads="$(nproc)"; rounds=3; steps=20; warmup=3
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) data="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "compare-seed.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
[ -f "$seed/src/models.py" ] || { echo "compare-seed.sh: '$seed' is not a NoPropLLM checkout (no src/models.py)" >&2; exit 2; }
/usr/bin/python3 -c 'import torch, numpy' 2>/dev/null || { echo "compare-seed.sh: /usr/bin/python3 lacks torch or numpy (apt-get install python3-torch)" >&2; exit 2; }
mnist=""
for d in "$data" "$data/mnist" "$data/MNIST/raw"; do
  if ls "$d"/train-images-idx3-ubyte* >/dev/null 2>&1; then mnist="$d"; break; fi
done
[ -n "$mnist" ] || { echo "compare-seed.sh: no MNIST IDX files in '$data' (or its mnist/ folder); see 'noprop data download mnist'" >&2; exit 2; }
if [ ! -x build/noprop_bench ]; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build -j"$(nproc)" --target noprop_bench
fi

# The same process set-up for both: OpenBLAS kernels and glibc malloc thresholds (noprop sets
# the latter itself, see runtime.h), one intra-op thread pool of the same size.
export OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-$(bench/openblas-coretype.sh)}" OMP_NUM_THREADS="$threads"
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184
common=(--steps "$steps" --warmup "$warmup")
log="$(mktemp)"; trap 'rm -f "$log"' EXIT
for r in $(seq "$rounds"); do
  echo "round $r/$rounds: seed" >&2
  /usr/bin/python3 bench/seed_step.py "$seed" "$mnist" --threads "$threads" "${common[@]}" 2>/dev/null |
    /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin); j["run"]="seed"; print(json.dumps(j))' | tee -a "$log"
  echo "round $r/$rounds: noprop" >&2
  build/noprop_bench --architecture seed --method dt --data-dir "$mnist" --threads "$threads" "${common[@]}" "${extra[@]}" 2>/dev/null |
    /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin); j["run"]="noprop"; print(json.dumps(j))' | tee -a "$log"
done
/usr/bin/python3 - "$log" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(who, key):
    return statistics.median(r[key] for r in runs if r["run"] == who)
s_train, o_train = med("seed", "seconds_per_batch"), med("noprop", "seconds_per_batch")
s_inf, o_inf = med("seed", "inference_images_per_second"), med("noprop", "inference_images_per_second")
print(json.dumps({
    "rounds": sum(r["run"] == "seed" for r in runs),
    "threads": runs[0]["threads"],
    "seed_seconds_per_batch": round(s_train, 4),
    "noprop_seconds_per_batch": round(o_train, 4),
    "training_speedup": round(s_train / o_train, 2),
    "seed_inference_images_per_second": round(s_inf, 1),
    "noprop_inference_images_per_second": round(o_inf, 1),
    "inference_speedup": round(o_inf / s_inf, 2),
}, indent=2))
PY
