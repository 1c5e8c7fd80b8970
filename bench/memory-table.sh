#!/usr/bin/env bash
# Whole-run peak memory of every method, as users see it (summary.json's peak_rss_mb), with the
# account of where it comes from (summary.json's "memory": each phase's peak and the known
# sizes). Each configuration is a real `noprop train` run of --steps steps and one evaluation
# on --test-samples test images, one after the other. Prints one JSON line per run, then a
# Markdown table.
#
# usage: bench/memory-table.sh [--data-dir DIR] [--dataset mnist|cifar10] [--threads N]
#                              [--steps N] [--test-samples N] [--only REGEX] [--log FILE]
#   --steps         training steps of 128 images (default 40; 0: one whole epoch)
#   --only          run only the configurations whose label matches REGEX ("dt paper", ...)
#   --log           append the JSON lines to FILE and tabulate all of FILE
set -euo pipefail
cd "$(dirname "$0")/.."
data="${NOPROP_DATA:-./data}"; dataset=mnist; threads=2; steps=40; test_samples=1000; only="."; log=""
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) data="$2"; shift 2 ;;
    --dataset) dataset="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --test-samples) test_samples="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --log) log="$2"; shift 2 ;;
    *) echo "memory-table.sh: unknown argument '$1'" >&2; sed -n '7,12p' "$0" >&2; exit 2 ;;
  esac
done
[ -x build/noprop ] || { echo "memory-table.sh: no build/noprop (see README)" >&2; exit 2; }
tmp_log=""
if [ -z "$log" ]; then log="$(mktemp)"; tmp_log="$log"; fi
out="$(mktemp -d)"; trap 'rm -rf "$out" $tmp_log' EXIT
for method in dt backprop ct fm; do
  for arch in seed paper; do
    label="$method $arch"
    [[ "$label" =~ $only ]] || continue
    sets=(--set architecture="$arch" --set test_samples="$test_samples" --set inference_runs=1 --set plot=false
          --set save_best=false)
    [ "$steps" -gt 0 ] && sets+=(--set train_samples=$((steps * 128)))
    start=$(date +%s.%N)
    build/noprop train "$dataset-$method" --epochs 1 --threads "$threads" --data-dir "$data" "${sets[@]}" \
      --out "$out/$method-$arch" > "$out/$method-$arch.log" 2>&1 ||
      { echo "memory-table.sh: $label failed:" >&2; tail -3 "$out/$method-$arch.log" >&2; exit 1; }
    wall=$(python3 -c "import time; print(round(time.time() - $start, 1))")
    python3 - "$out/$method-$arch/summary.json" "$label" "$dataset" "$threads" "$wall" >> "$log" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(json.dumps({"label": sys.argv[2], "dataset": sys.argv[3], "threads": int(sys.argv[4]),
                  "wall_seconds": float(sys.argv[5]), "steps": s["steps"],
                  "seconds_per_step": s["seconds_per_epoch"] / max(1, s["steps"]),
                  "torch_version": s["torch_version"], "memory": s["memory"]}))
EOF
    tail -1 "$log"
  done
done
python3 - "$log" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print()
print("| run | data set | threads | steps | whole-run peak MB | data sets | parameters + gradients + optimizer state "
      "| start-up | first step | training | evaluation | checkpoint | s/step |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    m = r["memory"]; sz = m["sizes_mb"]; ph = {p["phase"]: p["peak_mb"] for p in m["phases"]}
    state = sz.get("parameters", 0) + sz.get("gradients", 0) + sz.get("optimizer state", 0)
    cell = lambda k: f"{ph[k]:.0f}" if k in ph else "-"
    print(f"| {r['label']} | {r['dataset']} | {r['threads']} | {r['steps']} | {m['peak_rss_mb']:.0f} | "
          f"{sz.get('data sets', 0):.0f} | {state:.0f} | {cell('start-up')} | {cell('first step')} | "
          f"{cell('training')} | {cell('evaluation')} | {cell('checkpoint')} | {r['seconds_per_step']:.3f} |")
EOF
