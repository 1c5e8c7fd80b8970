#!/usr/bin/env bash
# GPU check in one command: build against the machine's own LibTorch (python3's torch, 2.11+cu130
# on the GPU machine) as CI builds the PyTorch 2.11 build, then the CUDA tests, the benchmark of
# every method on CUDA beside the PyTorch seed reproduction's step, and a short training run.
# Every stage runs under its own time limit and reports on its own; a failing stage does not
# stop the next. Sized for one 10-minute command (the build is ~2/3 of it; see docs/speed.md).
#
# The GPU machine has no package registry: the few libraries it lacks come along as Debian
# packages, unpacked into a private prefix, with MNIST and a seed checkout, in .gpu/ (ignored):
#   here, once:  scripts/gpu-check.sh --prepare SEED_CHECKOUT MNIST_DIR
#   there:       the device tool's run with carry [".gpu"] and command "bash scripts/gpu-check.sh"
#   dry run here (no GPU: the CUDA stages say so; 2 cores build for longer than the GPU
#   machine's 16 are given):
#     PYTHON=.venv-torch211/bin/python GPU_CHECK_BUILD_LIMIT=3600 GPU_CHECK_BUDGET=7200 scripts/gpu-check.sh
# Results go to $OUT (else ./gpu-out): gpu-check.log, bench.jsonl, metrics.csv, summary.json.
set -uo pipefail
cd "$(dirname "$0")/.."
# Headers and the runtime libraries their -dev symlinks point at. Downloads are not built there
# (-DNOPROP_DOWNLOAD=OFF): no libcurl, libarchive or OpenSSL to carry.
pkgs=(libyaml-cpp-dev libyaml-cpp0.7 libcli11-dev nlohmann-json3-dev libgtest-dev libgmock-dev libstb-dev libstb0
      libgloo-dev zlib1g-dev zlib1g)

if [ "${1:-}" = "--prepare" ]; then
  [ $# -eq 3 ] || { echo "usage: scripts/gpu-check.sh --prepare SEED_CHECKOUT MNIST_DIR" >&2; exit 2; }
  set -e
  rm -rf .gpu && mkdir -p .gpu/debs .gpu/mnist .gpu/seed
  (cd .gpu/debs && apt-get download "${pkgs[@]}")
  cp "$3"/*-idx?-ubyte* .gpu/mnist/
  # The seed at the commit every comparison here uses, when the clone has it.
  rev=HEAD; git -C "$2" cat-file -e e4bed9b^{commit} 2>/dev/null && rev=e4bed9b
  git -C "$2" archive "$rev" | tar -x -C .gpu/seed
  du -sh .gpu
  exit 0
fi

python="${PYTHON:-python3}"
out="${OUT:-$PWD/gpu-out}"; mkdir -p "$out"
exec > >(tee "$out/gpu-check.log") 2>&1
start=$(date +%s)
results=()
# The whole check ends within GPU_CHECK_BUDGET seconds (default 560, inside the device tool's
# 600-s command limit), so that the summary and $OUT always come back.
budget="${GPU_CHECK_BUDGET:-560}"
# stage NAME SECONDS COMMAND...: runs COMMAND under a time limit (cut to what is left of the
# budget), reports its status and time.
stage() {
  local name="$1" limit="$2"; shift 2
  local t0; t0=$(date +%s)
  local left=$(( budget - (t0 - start) ))
  if [ "$left" -lt 15 ]; then
    echo "=== $name: SKIPPED, out of time"; results+=("$name: SKIPPED, out of time"); return 1
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "=== $name (at $(( t0 - start )) s, limit $limit s)"
  timeout --kill-after=10 "$limit" "$@"
  local rc=$? t=$(( $(date +%s) - t0 ))
  local verdict="ok"; [ $rc -eq 0 ] || verdict="FAILED rc=$rc"; [ $rc -eq 124 ] && verdict="TIMED OUT"
  echo "=== $name: $verdict in $t s"
  results+=("$name: $verdict, $t s")
  return $rc
}
[ -d .gpu/debs ] || { echo "gpu-check.sh: no .gpu/ (run scripts/gpu-check.sh --prepare here first)" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
echo "cores: $(nproc); $(g++ --version | head -n1); $(cmake --version | head -n1)"
cuda=$("$python" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'

deps=/tmp/noprop-deps
unpack() {
  rm -rf "$deps"
  for f in .gpu/debs/*.deb; do dpkg -x "$f" "$deps" || return 1; done
  # Absolute symlinks (libz.so -> /lib/...) must point into the unpacked copy.
  find "$deps" -type l -lname '/*' | while read -r l; do ln -sfn "$deps$(readlink "$l")" "$l"; done
}
stage "unpack libraries" 60 bash -c "$(declare -f unpack); deps=$deps; unpack"
multi=x86_64-linux-gnu
torch_prefix="$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
export LD_LIBRARY_PATH="$deps/usr/lib/$multi:$deps/lib/$multi:${LD_LIBRARY_PATH:-}"
generator=(); command -v ninja >/dev/null && generator=(-G Ninja)
stage "configure" 120 cmake -S . -B build-gpu "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DNOPROP_DOWNLOAD=OFF \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$deps/usr" -DCMAKE_INCLUDE_PATH="$deps/usr/include" \
  -DCMAKE_LIBRARY_PATH="$deps/usr/lib/$multi;$deps/lib/$multi"
# Only what the check runs (the tests need the program, the example and the benchmark).
stage "build" "${GPU_CHECK_BUILD_LIMIT:-420}" cmake --build build-gpu -j"$(nproc)" --target noprop noprop_tests noprop_bench noprop_example_classify

stage "CUDA tests" 180 ./build-gpu/noprop_tests --gtest_filter='Gpu.*'
if [ "$cuda" != 1 ]; then
  echo "=== no CUDA device: the benchmark and training stages are skipped"
else
  bench() {
    # NoProp-DT also with its blocks' step stacked into one computation (stacked_blocks), beside
    # per_batch block by block, which takes the same steps.
    for spec in "dt seed" "dt paper" "backprop seed" "backprop paper" "ct paper" "fm paper" \
        "dt seed --set shared_update=per_batch" "dt seed --set shared_update=per_batch --set stacked_blocks=true" \
        "dt paper --set shared_update=per_batch" "dt paper --set shared_update=per_batch --set stacked_blocks=true"; do
      set -- $spec
      ./build-gpu/noprop_bench --device cuda --method "$1" --architecture "$2" "${@:3}" --data-dir .gpu/mnist \
        --steps 20 --warmup 3 2>/dev/null | tee -a "$out/bench.jsonl" || echo "bench $spec failed"
    done
  }
  stage "benchmark: noprop on CUDA, every method" 200 bash -c "out=$out; $(declare -f bench); bench"
  stage "benchmark: seed reproduction's step on CUDA" 90 "$python" - .gpu/seed .gpu/mnist "$out/bench.jsonl" <<'PY'
import json, statistics, sys, time, torch
sys.path.insert(0, "bench")
import seed_step as s
sys.path.insert(0, sys.argv[1])
from src.models import NoPropNetwork
dev = torch.device("cuda")
x, y = s.load(sys.argv[2], "train")
x, y = x.to(dev), y.to(dev)
model = NoPropNetwork(num_layers=10, image_channels=1, image_size=28, label_dim=10).to(dev)
opts = [torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-3) for m in model.denoising_modules]
times = []
for k in range(35):
    d, t = x[k * 128:(k + 1) * 128], y[k * 128:(k + 1) * 128]
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for i, o in enumerate(opts):
        o.zero_grad(); loss = model.compute_loss(d, t, i); loss.backward()
        torch.nn.utils.clip_grad_norm_(model.denoising_modules[i].parameters(), 1.0); o.step(); loss.item()
    torch.cuda.synchronize()
    if k >= 5: times.append(time.perf_counter() - t0)
line = json.dumps({"implementation": "seed", "method": "dt", "architecture": "seed", "device": torch.cuda.get_device_name(),
                   "seconds_per_batch": statistics.median(times), "samples_per_second": 128 / statistics.median(times)})
print(line); open(sys.argv[3], "a").write(line + "\n")
PY
  stage "train: NoProp-DT, paper architecture, MNIST, 2 epochs" 120 ./build-gpu/noprop train mnist-dt --device cuda \
    --data-dir .gpu/mnist --epochs 2 --set plot=false --set inference_runs=1 --out /tmp/noprop-gpu-run
  cp /tmp/noprop-gpu-run/metrics.csv /tmp/noprop-gpu-run/summary.json "$out/" 2>/dev/null
fi
echo "=== summary (total $(( $(date +%s) - start )) s)"
printf '  %s\n' "${results[@]}"
