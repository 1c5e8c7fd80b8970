#!/usr/bin/env bash
# The paper's Table 1 in one command: every method × embedding × data set with the budgets of
# its Table 3 (the named configs), 3 seeds each, then `noprop report` writes the table.
# Finished runs are skipped, interrupted ones resumed from their final.pt, so running the same
# command again continues where it stopped. Several runs go at once, spread over the devices.
#
# usage: scripts/reproduce-table1.sh [--data-dir DIR] [--out DIR] [--devices LIST] [--jobs-per-device N]
#                                    [--seeds "1 2 3"] [--datasets "mnist cifar10 cifar100"]
#                                    [--only REGEX] [--threads N] [--eval-every N] [--quick] [--dry-run]
#   --data-dir   where the data sets are (as for noprop train; default: its own search)
#   --out        the runs' parent folder (default runs/table1, or runs/table1-quick)
#   --devices    comma-separated: cpu, cuda, cuda:0,cuda:1,... (default: cuda:0..N-1 for the GPUs
#                nvidia-smi lists, else cpu)
#   --jobs-per-device  runs at once on each device (default 1)
#   --only       run only the runs whose name (DATASET-METHOD-EMBEDDING-sSEED) matches REGEX
#   --threads    CPU threads per run (default: the cores divided among the runs at once)
#   --eval-every test accuracy after every N epochs and after the last (default 10: the CT/FM
#                prototype runs' 1000-step evaluations would otherwise cost more than all training)
#   --quick      1 epoch on 1024 training and 1000 test samples, 10 inference steps, one
#                inference run, seed 1 only: checks that every configuration runs, not results
#   --dry-run    print the commands instead of running them
# Environment: NOPROP (the noprop binary, default build/noprop).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '7,23p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
data_dir=""; out=""; devices=""; per_device=1; seeds="1 2 3"; datasets="mnist cifar10 cifar100"
only="."; threads=""; eval_every=10; quick=0; dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) data_dir="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --devices) devices="$2"; shift 2 ;;
    --jobs-per-device) per_device="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --datasets) datasets="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --eval-every) eval_every="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage ;;
    *) echo "reproduce-table1.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
noprop="${NOPROP:-build/noprop}"
[ -x "$noprop" ] || { echo "reproduce-table1.sh: no $noprop (build first: see README)" >&2; exit 2; }
[[ "$per_device" =~ ^[1-9][0-9]*$ ]] || { echo "reproduce-table1.sh: --jobs-per-device must be a positive integer" >&2; exit 2; }
[[ "$eval_every" =~ ^[1-9][0-9]*$ ]] || { echo "reproduce-table1.sh: --eval-every must be a positive integer" >&2; exit 2; }
if [ -z "$devices" ]; then
  gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)
  if [ "${gpus:-0}" -gt 0 ]; then devices=$(seq -s, -f 'cuda:%g' 0 $((gpus - 1))); else devices=cpu; fi
fi
IFS=, read -r -a device_list <<<"$devices"
slots=$(( ${#device_list[@]} * per_device ))
[ -n "$threads" ] || threads=$(( $(nproc) / slots > 0 ? $(nproc) / slots : 1 ))
extra=(--set eval_every="$eval_every")
if [ "$quick" = 1 ]; then
  [ -n "$out" ] || out=runs/table1-quick
  seeds="${seeds%% *}"
  extra+=(--epochs 1 --set train_samples=1024 --set test_samples=1000 --set inference_steps=10
         --set inference_runs=1 --set plot=false)
fi
[ -n "$out" ] || out=runs/table1
data_args=(); [ -z "$data_dir" ] || data_args=(--data-dir "$data_dir")

# The rows of Table 1: method and embedding, each with its config and the keys that set it.
rows=("backprop one-hot" "dt one-hot" "dt dim20" "dt prototype" "ct one-hot" "ct dim20" "ct prototype"
      "fm one-hot" "fm dim20" "fm prototype")
embedding_keys() {
  case "$1" in
    one-hot) echo "--set embedding=one-hot" ;;
    dim20) echo "--set embedding=learned --set embedding_dim=20" ;;
    prototype) echo "--set embedding=prototype" ;;
  esac
}

# The command that brings one run to its end: nothing when it is finished, --resume when it has
# a final.pt, else a fresh start (a folder without final.pt holds no finished epoch: restarted).
command_for() {
  local ds="$1" method="$2" emb="$3" seed="$4" device="$5" dir="$6"
  if [ -f "$dir/summary.json" ] && grep -q '"stopped_by": "\(epochs\|early_stopping\)"' "$dir/summary.json"; then
    return 0
  fi
  local common
  printf -v common '%q ' --device "$device" --threads "$threads" "${data_args[@]}"
  if [ -f "$dir/final.pt" ]; then
    echo "$noprop train --resume $(printf %q "$dir") $common"
  else
    echo "rm -rf $(printf %q "$dir") && $noprop train $ds-$method --seed $seed $(embedding_keys "$emb") ${extra[*]} $common--out $(printf %q "$dir")"
  fi
}

# Every run, dealt round-robin to the slots; each slot runs its share one after the other.
mkdir -p "$out"
declare -a queues
n=0
for ds in $datasets; do
  for row in "${rows[@]}"; do
    read -r method emb <<<"$row"
    for seed in $seeds; do
      name="$ds-$method-$emb-s$seed"
      [[ "$name" =~ $only ]] || continue
      slot=$(( n % slots )); device="${device_list[$(( slot / per_device ))]}"
      cmd=$(command_for "$ds" "$method" "$emb" "$seed" "$device" "$out/$name")
      if [ -z "$cmd" ]; then echo "done already: $name"; continue; fi
      queues[$slot]+="$cmd > $(printf %q "$out/$name.log") 2>&1 || { echo \"FAILED: $name (see $out/$name.log)\"; fail=1; }"$'\n'
      n=$(( n + 1 ))
    done
  done
done
echo "$n runs to do on $slots slots (${device_list[*]}, $per_device each, $threads threads per run) in $out"
if [ "$dry" = 1 ]; then
  for s in "${!queues[@]}"; do echo "# slot $s"; printf '%s' "${queues[$s]}"; done
  exit 0
fi
pids=()
for s in "${!queues[@]}"; do
  bash -c "fail=0; ${queues[$s]} exit \$fail" &
  pids+=($!)
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=1; done

# The table: every finished run under $out (report pools seeds and inference runs per cell).
finished=()
for d in "$out"/*/; do [ -f "$d/summary.json" ] && finished+=("${d%/}"); done
[ ${#finished[@]} -gt 0 ] || { echo "reproduce-table1.sh: no finished run in $out" >&2; exit 1; }
"$noprop" report "${finished[@]}" | tee "$out/table1.md"
echo "table: $out/table1.md"
exit $failed
