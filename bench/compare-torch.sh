#!/usr/bin/env bash
# The same code on two LibTorch versions, in one sitting: noprop_bench of the Debian build
# (./build, LibTorch 1.13) and of the PyTorch 2.11 build (./build-211), each configuration run
# on one build then the other, round after round; then the PyTorch seed reproduction's step on
# each version's Python torch. Prints every JSON line, then a Markdown table of the medians.
#
# usage: bench/compare-torch.sh [--data-dir DIR] [--threads N] [--rounds N] [--steps N]
#                               [--seed-checkout DIR] [--only REGEX] [--log FILE]
#   --seed-checkout  a clone of eoghanf/NoPropLLM at e4bed9b (default: skip the seed's step);
#                    its package imports torchvision: put one (or a stand-in) on PYTHONPATH
#   --only           run only the configurations whose label matches REGEX
#   --log            append the JSON lines to FILE and tabulate all of FILE (runs split over
#                    several calls make one table)
# Needs both builds, /usr/bin/python3 with torch and numpy, and .venv-torch211 (scripts/setup.sh
# --torch211) with numpy for the seed's step on 2.11.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${NOPROP_DATA:-./data}"; threads=2; rounds=2; steps=10; seed=""; only="."; log=""
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) data="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --seed-checkout) seed="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --log) log="$2"; shift 2 ;;
    *) echo "compare-torch.sh: unknown argument '$1'" >&2; sed -n '7,12p' "$0" >&2; exit 2 ;;
  esac
done
for b in build build-211; do
  [ -x "$b/noprop_bench" ] || { echo "compare-torch.sh: no $b/noprop_bench (see README: two builds)" >&2; exit 2; }
done
export OMP_NUM_THREADS="$threads"
if [ -z "$log" ]; then log="$(mktemp)"; trap 'rm -f "$log"' EXIT; fi
# label | noprop_bench arguments
configs=(
  "dt seed fp32|--method dt --architecture seed"
  "dt seed bf16|--method dt --architecture seed --precision bf16"
  "dt seed channels-last|--method dt --architecture seed --channels-last --kernels torch"
  "dt paper fp32|--method dt --architecture paper"
  "dt paper bf16|--method dt --architecture paper --precision bf16"
  "backprop seed fp32|--method backprop --architecture seed"
  "backprop paper fp32|--method backprop --architecture paper"
  "ct paper fp32|--method ct --architecture paper"
  "fm paper fp32|--method fm --architecture paper"
)
for r in $(seq "$rounds"); do
  for c in "${configs[@]}"; do
    label="${c%%|*}"; args="${c#*|}"
    [[ "$label" =~ $only ]] || continue
    for b in build build-211; do
      echo "round $r/$rounds: $label on $b" >&2
      # shellcheck disable=SC2086
      "$b/noprop_bench" $args --data-dir "$data" --threads "$threads" --steps "$steps" --warmup 2 \
        --inference-batches 3 2>/dev/null |
        /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin); j["label"]=sys.argv[1]; print(json.dumps(j))' "$label" |
        tee -a "$log" || echo "compare-torch.sh: $label on $b failed" >&2
    done
  done
  if [ -n "$seed" ] && [[ "seed reproduction" =~ $only ]]; then
    mnist=""
    for d in "$data" "$data/mnist"; do ls "$d"/train-images-idx3-ubyte* >/dev/null 2>&1 && { mnist="$d"; break; }; done
    for py in /usr/bin/python3 .venv-torch211/bin/python; do
      echo "round $r/$rounds: seed step on $py" >&2
      MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 OPENBLAS_CORETYPE="$(bench/openblas-coretype.sh)" \
        "$py" bench/seed_step.py "$seed" "$mnist" --threads "$threads" --steps "$steps" --warmup 2 2>/dev/null |
        /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin); j["label"]="seed reproduction dt seed fp32"; print(json.dumps(j))' |
        tee -a "$log" || echo "compare-torch.sh: the seed's step on $py failed" >&2
    done
  fi
done
/usr/bin/python3 - "$log" <<'PY'
import json, statistics, sys, collections
rows = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    if not line.strip():
        continue
    j = json.loads(line)
    v = j.get("torch", j.get("torch_version", "?"))
    v = "1.13" if v.startswith("1.13") else "2.11" if v.startswith("2.11") else v
    rows[j["label"]][v].append(j)
def med(js, key):
    xs = [j[key] for j in js if j.get(key) is not None]
    return statistics.median(xs) if xs else float("nan")
print("| configuration | 1.13 s/batch | 2.11 s/batch | 2.11 speed-up | 1.13 inference img/s | 2.11 inference img/s | 1.13 peak RSS MB | 2.11 peak RSS MB |")
print("|---|---|---|---|---|---|---|---|")
for label, by in rows.items():
    a, b = by.get("1.13", []), by.get("2.11", [])
    sa, sb = med(a, "seconds_per_batch"), med(b, "seconds_per_batch")
    print(f"| {label} | {sa:.3f} | {sb:.3f} | {sa / sb:.2f}x | {med(a, 'inference_images_per_second'):.0f} | "
          f"{med(b, 'inference_images_per_second'):.0f} | {med(a, 'peak_rss_mb'):.0f} | {med(b, 'peak_rss_mb'):.0f} |")
PY
