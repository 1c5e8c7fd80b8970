#!/usr/bin/env bash
# Installs what noprop needs from Debian/Ubuntu packages (skipping what is already there) and
# selects OpenBLAS as the system BLAS: Debian's LibTorch otherwise runs on the reference BLAS,
# 4-5x slower. Idempotent; needs root or sudo only when something is missing.
# --checks also installs clang and its fuzzer/sanitizer runtimes for scripts/robustness.sh, and
#   clang-format for scripts/check-style.sh.
# --torch211 also creates .venv-torch211/ (git-ignored) holding PyPI's torch 2.11.0, the GPU
#   machine's LibTorch (with CUDA 13): a ~2.5 GB download, 3.3 GB on disk, 2-4 minutes here.
#   Build against it with
#     cmake -S . -B build-211 -DCMAKE_PREFIX_PATH="$(.venv-torch211/bin/python -c 'import torch;print(torch.utils.cmake_prefix_path)')"
#   (its CUDA code needs the CUDA toolkit, nvcc, to configure; nothing runs it without a GPU).
set -euo pipefail
option="${1:-}"

packages=(build-essential cmake pkg-config zlib1g-dev libtorch-dev libyaml-cpp-dev libcli11-dev
          nlohmann-json3-dev libgtest-dev libgmock-dev libopenblas0-openmp dataset-fashion-mnist
          gnuplot-nox libstb-dev libdnnl-dev ocl-icd-opencl-dev libcurl4-openssl-dev libssl-dev libarchive-dev libgloo-dev)
[ "$option" = "--checks" ] && packages+=(clang clang-format libclang-rt-dev)
[ "$option" = "--torch211" ] && packages+=(python3-venv)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# OpenMP OpenBLAS shares LibTorch's OpenMP thread pool instead of starting a second one.
# Debian's LibTorch links both libblas.so.3 and libopenblas.so.0, and its sgemm calls resolve
# to the latter: both must point at the OpenMP build. With libopenblas.so.0 left on the
# pthread build, its spinning thread pool fights OpenMP's: a 2-thread NoProp-DT step took
# 0.98 s per batch against 0.38 s with both on OpenMP (and one thread beat two).
multiarch="$(gcc -dumpmachine)"
dir="/usr/lib/${multiarch}/openblas-openmp"
if [ -e "$dir/libblas.so.3" ]; then
  $sudo update-alternatives --set "libblas.so.3-${multiarch}" "$dir/libblas.so.3" >/dev/null
  $sudo update-alternatives --set "liblapack.so.3-${multiarch}" "$dir/liblapack.so.3" >/dev/null 2>&1 || true
  $sudo update-alternatives --set "libopenblas.so.0-${multiarch}" "$dir/libopenblas.so.0" >/dev/null 2>&1 || true
fi
echo "setup: BLAS is $(readlink -f "/usr/lib/${multiarch}/libblas.so.3"), OpenBLAS $(readlink -f "/usr/lib/${multiarch}/libopenblas.so.0")"

if [ "$option" = "--torch211" ]; then
  venv="$(cd "$(dirname "$0")/.." && pwd)/.venv-torch211"
  if ! "$venv/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.11.0")' 2>/dev/null; then
    echo "setup: installing torch 2.11.0 from PyPI into $venv (~2.5 GB download)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check torch==2.11.0
  fi
  echo "setup: $("$venv/bin/python" -c 'import torch; print("torch", torch.__version__, "CMake prefix", torch.utils.cmake_prefix_path)' 2>/dev/null)"
fi
