#!/usr/bin/env bash
# Time to accuracy on MNIST: the wall-clock seconds from a trainer's start until its test
# accuracy first reaches each target, for noprop with its defaults (`noprop train mnist-dt`) and
# for the PyTorch seed reproduction's own trainer (eoghanf/NoPropLLM at e4bed9b: train_mnist.py
# with its default MNIST config, only data_path, epochs and the early-stopping target changed),
# as users run it and at its best (the OpenBLAS and malloc settings noprop sets for itself), one
# after the other on the same cores. Every epoch line is timestamped as it appears, so the time
# counts start-up, data loading, training and every evaluation the trainer runs (the seed also
# evaluates the training set each epoch). Prints a JSON line per run and target, then the ratios.
#
# usage: bench/time-to-accuracy.sh SEED_CHECKOUT --data-dir DIR [--threads N] [--max-epochs N]
#                                  [--targets "98.5 99.0"] [--runs "noprop noprop-seed seed seed-best"]
#                                  [--out DIR]
#   SEED_CHECKOUT  a clone of https://github.com/eoghanf/NoPropLLM at e4bed9b; its Python is
#                  $SEED_PYTHON (default /usr/bin/python3) with torch and torchvision
#   --data-dir     folder with the MNIST IDX files (.gz or raw)
#   --runs         noprop: `noprop train mnist-dt` (the defaults: the paper's architecture);
#                  noprop-seed: the same with the seed's architecture (--set architecture=seed);
#                  seed: the seed's trainer as users run it; seed-best: with noprop's BLAS/malloc settings
#   --out          where the runs and their logs go (default: a temporary folder, removed)
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
seed="$(realpath "$1")"; shift
data=""; threads="$(nproc)"; max_epochs=10; targets="98.5 99.0"; runs="noprop noprop-seed seed seed-best"; out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) data="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --max-epochs) max_epochs="$2"; shift 2 ;;
    --targets) targets="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "time-to-accuracy.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
py="${SEED_PYTHON:-/usr/bin/python3}"
[ -f "$seed/train_mnist.py" ] || { echo "time-to-accuracy.sh: '$seed' is not a NoPropLLM checkout (no train_mnist.py)" >&2; exit 2; }
[ -n "$data" ] && ls "$data"/train-images-idx3-ubyte* >/dev/null 2>&1 ||
  { echo "time-to-accuracy.sh: --data-dir must hold the MNIST IDX files" >&2; exit 2; }
data="$(realpath "$data")"
top="$(tr ' ' '\n' <<<"$targets" | sort -g | tail -1)"
if [ -z "$out" ]; then out="$(mktemp -d)"; trap 'rm -rf "$out"' EXIT; fi
mkdir -p "$out"
[ -x build/noprop ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build -j"$(nproc)" --target noprop; }

# Prefixes each line with the seconds since $1 (epoch seconds), as it arrives.
stamp() {
  /usr/bin/python3 -u -c '
import sys, time
t0 = float(sys.argv[1])
for line in sys.stdin:
    sys.stdout.write(f"{time.time() - t0:.1f} {line}")' "$1"
}

run_noprop() {  # $1: noprop | noprop-seed
  local log="$out/$1.log" t0 extra=()
  [ "$1" = noprop-seed ] && extra=(--set architecture=seed)
  t0="$(date +%s.%N)"
  build/noprop train mnist-dt --data-dir "$data" --threads "$threads" --epochs "$max_epochs" --out "$out/$1-run" \
    --set early_stopping=true --set early_stopping_accuracy="$top" --set plot=false "${extra[@]}" 2>&1 | stamp "$t0" > "$log"
}

run_seed() {  # $1: seed | seed-best
  local name="$1" log="$out/$1.log" t0 cfg="$out/$1.yaml"
  # The seed's torchvision MNIST reads root/MNIST/raw.
  mkdir -p "$out/seed-data/MNIST/raw"
  ln -sf "$data"/*-idx?-ubyte* "$out/seed-data/MNIST/raw/"
  sed -e "s#^data_path:.*#data_path: \"$out/seed-data\"#" -e "s#^epochs:.*#epochs: $max_epochs#" \
      -e "s#^early_stopping_accuracy:.*#early_stopping_accuracy: $top#" \
      "$seed/experiment_configs/mnistdiffusion.yaml" > "$cfg"
  local env=(OMP_NUM_THREADS="$threads")
  [ "$name" = seed-best ] && env+=(OPENBLAS_CORETYPE="$(bench/openblas-coretype.sh)" MALLOC_MMAP_THRESHOLD_=33554432
                                   MALLOC_TRIM_THRESHOLD_=17179869184)
  t0="$(date +%s.%N)"
  (cd "$seed" && env "${env[@]}" "$py" -u train_mnist.py --config "$cfg" 2>&1) | stamp "$t0" > "$log"
}

for r in $runs; do
  echo "time-to-accuracy: $r" >&2
  case "$r" in
    noprop|noprop-seed) run_noprop "$r" ;;
    seed|seed-best) run_seed "$r" ;;
    *) echo "time-to-accuracy.sh: unknown run '$r'" >&2; exit 2 ;;
  esac
done

/usr/bin/python3 - "$out" "$targets" $runs <<'PY'
import json, re, sys
out, targets, runs = sys.argv[1], [float(t) for t in sys.argv[2].split()], sys.argv[3:]
# The end-of-epoch line of each trainer and the accuracy on it.
pattern = {"noprop": r"^([\d.]+) epoch (\d+)/\d+ .*test accuracy ([\d.]+)%",
           "seed": r"^([\d.]+)   Validation Loss: .* Validation Accuracy: ([\d.]+)%"}
result = {}
for run in runs:
    epochs = []
    for line in open(f"{out}/{run}.log"):
        if run.startswith("noprop"):
            m = re.match(pattern["noprop"], line)
            if m: epochs.append((float(m[1]), float(m[3])))
        else:
            m = re.match(pattern["seed"], line)
            if m: epochs.append((float(m[1]), float(m[2])))
    for target in targets:
        hit = next(((i + 1, s) for i, (s, a) in enumerate(epochs) if a >= target), None)
        row = {"run": run, "target": target, "epoch": hit[0] if hit else None, "seconds": hit[1] if hit else None,
               "accuracy_per_epoch": [a for _, a in epochs], "seconds_per_epoch_end": [s for s, _ in epochs]}
        result[(run, target)] = row
        print(json.dumps(row))
for target in targets:
    for mine in ("noprop", "noprop-seed"):
        ours = result.get((mine, target), {}).get("seconds")
        for seed in ("seed", "seed-best"):
            theirs = result.get((seed, target), {}).get("seconds")
            if ours and theirs:
                print(f"{target}%: {mine} {ours:.0f} s, {seed} {theirs:.0f} s: {theirs / ours:.2f}x faster")
            elif seed in runs and mine in runs:
                print(f"{target}%: not reached by " + " and ".join(r for r, s in ((mine, ours), (seed, theirs)) if not s))
PY
