#!/usr/bin/env bash
# GPU check in one command: build against the machine's CUDA LibTorch (the pip torch package),
# run the test suite (tests/test_gpu.cpp runs there), benchmark NoProp-DT against the PyTorch
# seed reproduction's step on the same card, and train the paper architecture on MNIST for a
# few epochs. Sized for one 8-minute command.
#
# The GPU machine has no package registry, so the libraries come along as Debian packages,
# unpacked into a private prefix, with MNIST and a seed checkout:
#   here:   scripts/gpu-check.sh --prepare SEED_CHECKOUT MNIST_DIR   (fills .gpu/, git-ignored)
#   there:  scripts/gpu-check.sh                                      (reads .gpu/, writes $OUT or ./gpu-out)
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(libyaml-cpp-dev libyaml-cpp0.7 libcli11-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev
      libbenchmark1debian libstb-dev libstb0 libcurl4-openssl-dev libcurl4 libssl-dev libarchive-dev libarchive13
      libgloo-dev zlib1g-dev zlib1g libssl3)  # runtime packages too: the -dev symlinks point at them

if [ "${1:-}" = "--prepare" ]; then
  [ $# -eq 3 ] || { echo "usage: scripts/gpu-check.sh --prepare SEED_CHECKOUT MNIST_DIR" >&2; exit 2; }
  rm -rf .gpu && mkdir -p .gpu/debs .gpu/mnist .gpu/seed
  (cd .gpu/debs && apt-get download "${pkgs[@]}")
  cp "$3"/*-idx?-ubyte* .gpu/mnist/
  git -C "$2" archive HEAD | tar -x -C .gpu/seed
  du -sh .gpu
  exit 0
fi

out="${OUT:-$PWD/gpu-out}"; mkdir -p "$out"
exec > >(tee "$out/gpu-check.log") 2>&1
start=$(date +%s)
stage() { echo "=== $1 ($(( $(date +%s) - start )) s)"; }
[ -d .gpu/debs ] || { echo "gpu-check.sh: no .gpu/ (run scripts/gpu-check.sh --prepare here first)" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

stage "unpack libraries"
deps=/tmp/noprop-deps
for f in .gpu/debs/*.deb; do dpkg -x "$f" "$deps"; done
# Absolute symlinks (libz.so -> /lib/...) must point into the unpacked copy.
find "$deps" -type l -lname '/*' | while read -r l; do ln -sfn "$deps$(readlink "$l")" "$l"; done
torch_prefix="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
torch_lib="$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
multi=x86_64-linux-gnu
export LD_LIBRARY_PATH="$deps/usr/lib/$multi:$deps/lib/$multi:$torch_lib:${LD_LIBRARY_PATH:-}"
export PKG_CONFIG_PATH="$deps/usr/lib/$multi/pkgconfig:$deps/usr/share/pkgconfig"
# Debian's .pc files name /usr as their prefix: point them at the unpacked copy.
sed -i "s|^prefix=/usr|prefix=$deps/usr|" "$deps"/usr/lib/$multi/pkgconfig/*.pc "$deps"/usr/share/pkgconfig/*.pc 2>/dev/null || true

stage "build"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$torch_prefix;$deps/usr" \
  -DCMAKE_INCLUDE_PATH="$deps/usr/include" -DCMAKE_LIBRARY_PATH="$deps/usr/lib/$multi;$deps/lib/$multi"
cmake --build build-gpu -j"$(nproc)"

stage "tests"
(cd build-gpu && ctest --output-on-failure -j4 --timeout 300 -E 'Download|Distributed' || echo "TESTS FAILED")
./build-gpu/noprop_tests --gtest_filter='Gpu.*'

stage "benchmark: noprop (CUDA), seed architecture, batch 128"
export NOPROP_DATA="$PWD/.gpu/mnist"
for arch in seed paper; do
  ./build-gpu/noprop_bench --device cuda --architecture $arch --data-dir .gpu/mnist --steps 30 --warmup 5 \
    | tee "$out/bench-dt-$arch.json"
done
./build-gpu/noprop_bench --device cuda --architecture seed --method backprop --data-dir .gpu/mnist --steps 30 --warmup 5 \
  | tee "$out/bench-backprop-seed.json"

stage "benchmark: seed reproduction (PyTorch, CUDA)"
python3 - .gpu/seed .gpu/mnist <<'PY' | tee "$out/bench-seed.json"
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
print(json.dumps({"implementation": "seed", "device": torch.cuda.get_device_name(),
                  "seconds_per_batch": statistics.median(times), "samples_per_second": 128 / statistics.median(times)}))
PY
python3 - "$out" <<'PY'
import json, sys
o = json.load(open(sys.argv[1] + "/bench-dt-seed.json")); s = json.loads(open(sys.argv[1] + "/bench-seed.json").read())
print(json.dumps({"seed_seconds_per_batch": s["seconds_per_batch"], "noprop_seconds_per_batch": o["seconds_per_batch"],
                  "training_speedup": s["seconds_per_batch"] / o["seconds_per_batch"]}))
PY

stage "train: paper architecture, MNIST, 3 epochs"
./build-gpu/noprop train mnist-dt --device cuda --data-dir .gpu/mnist --epochs 3 --set plot=false \
  --set inference_runs=1 --out "$out/run" 2>&1 | tail -n 20
cp "$out/run/metrics.csv" "$out/" 2>/dev/null || true
stage "done"
