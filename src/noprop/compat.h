// The differences between the LibTorch versions noprop builds against — Debian's 1.13 and
// PyPI's 2.x (2.11 on the GPU machine) — in one place, so that no other file tests a version.
//
// Met so far (docs/speed.md has the list with how each was found):
// - autocast: 2.4 made the switches per device type (set_autocast_enabled(type, on)); 1.13 has
//   one for CUDA (set_enabled) and one for the CPU (set_cpu_enabled).
// - TF32: 2.x added per-backend fp32 precision settings beside setAllowTF32CuBLAS/CuDNN; the
//   latter exist in both, so they are used.
// - CUDA allocator statistics: 2.x moved DeviceStats to c10::CachingDeviceAllocator; the
//   fields read here are the same.
// - c10d: ProcessGroupGloo derives from c10d::Backend since 2.0 (from ProcessGroup before); the
//   calls used by distributed.cpp are members of both. The pip package ships no Gloo headers,
//   so the build takes Debian's (libgloo-dev), used only through pointers there.
#pragma once

#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>
#include <torch/version.h>

#include <cstdint>

#ifdef NOPROP_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#define NOPROP_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace noprop::compat {

// Turns LibTorch's autocast on (with `dtype`) or off for one device type (CPU or CUDA).
inline void set_autocast(c10::DeviceType type, bool on, c10::ScalarType dtype = c10::kBFloat16) {
#if NOPROP_TORCH_AT_LEAST(2, 4)
  if (on) at::autocast::set_autocast_dtype(type, dtype);
  at::autocast::set_autocast_enabled(type, on);
#else
  if (type == c10::DeviceType::CUDA) {
    if (on) at::autocast::set_autocast_gpu_dtype(dtype);
    at::autocast::set_enabled(on);
  } else {
    if (on) at::autocast::set_autocast_cpu_dtype(dtype);
    at::autocast::set_cpu_enabled(on);
  }
#endif
  if (!on) at::autocast::clear_cache();
}

// CUDA matrix products and convolutions in plain fp32 (no TF32 rounding, which LibTorch allows
// for convolutions by default: results then differ from the CPU's in the 3rd digit) for the
// guard's lifetime.
class NoTf32 {
 public:
  NoTf32() : cublas_(at::globalContext().allowTF32CuBLAS()), cudnn_(at::globalContext().allowTF32CuDNN()) {
    at::globalContext().setAllowTF32CuBLAS(false);
    at::globalContext().setAllowTF32CuDNN(false);
  }
  ~NoTf32() {
    at::globalContext().setAllowTF32CuBLAS(cublas_);
    at::globalContext().setAllowTF32CuDNN(cudnn_);
  }
  NoTf32(const NoTf32&) = delete;
  NoTf32& operator=(const NoTf32&) = delete;

 private:
  bool cublas_, cudnn_;
};

// Peak bytes held by LibTorch's CUDA allocator on `device` since the last reset; -1 in a
// build without CUDA.
inline void reset_cuda_peak([[maybe_unused]] int device) {
#ifdef NOPROP_WITH_CUDA
  c10::cuda::CUDACachingAllocator::resetPeakStats(device);
#endif
}
inline int64_t cuda_peak_bytes([[maybe_unused]] int device) {
#ifdef NOPROP_WITH_CUDA
  // allocated_bytes[0]: the aggregate over small and large pools (StatType::AGGREGATE).
  return c10::cuda::CUDACachingAllocator::getDeviceStats(device).allocated_bytes[0].peak;
#else
  return -1;
#endif
}

}  // namespace noprop::compat
