#!/usr/bin/env bash
# Installs what noprop needs from Debian/Ubuntu packages (skipping what is already there) and
# selects OpenBLAS as the system BLAS: Debian's LibTorch otherwise runs on the reference BLAS,
# 4-5x slower. Idempotent; needs root or sudo only when something is missing.
# --checks also installs clang and its fuzzer/sanitizer runtimes for scripts/robustness.sh.
set -euo pipefail

packages=(build-essential cmake pkg-config zlib1g-dev libtorch-dev libyaml-cpp-dev libcli11-dev
          nlohmann-json3-dev libgtest-dev libgmock-dev libopenblas0-openmp dataset-fashion-mnist
          gnuplot-nox libstb-dev libcurl4-openssl-dev libssl-dev libarchive-dev libgloo-dev)
[ "${1:-}" = "--checks" ] && packages+=(clang libclang-rt-dev)
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
