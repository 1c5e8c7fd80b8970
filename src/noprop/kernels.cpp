#include "noprop/kernels.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <utility>

namespace noprop::kernels {
namespace {

// The inner loops are compiled for AVX-512, AVX2 and plain x86-64; the loader picks one.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define NOPROP_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NOPROP_CLONES
#endif

// A counter-based generator: element i is kept iff hash(seed, i) ≥ threshold. Two rounds of
// a 32-bit integer finaliser (lowbias32) pass the avalanche tests that matter for dropout and
// vectorise as plain integer multiplies, unlike a sequential generator.
inline uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x7feb352dU;
  h ^= h >> 15;
  h *= 0x846ca68bU;
  h ^= h >> 16;
  return h;
}
// Indices are 32-bit (supported() limits tensors to 2³² elements): 32-bit lanes vectorise best.
inline uint32_t hash(uint64_t seed, uint32_t i) { return mix32(mix32(i ^ uint32_t(seed)) + uint32_t(seed >> 32)); }

// Elements with hash < threshold are dropped: P(drop) = threshold / 2³² = p.
uint32_t drop_threshold(double p) {
  TORCH_CHECK(p >= 0 && p < 1, "dropout probability must be in [0, 1), got ", p);
  return uint32_t(std::min(p * 4294967296.0, 4294967295.0));
}
// The dropout scale as LibTorch computes it (1 / (1 − p) in float).
float keep_scale(double p) { return p > 0 ? float(1.0 / (1.0 - p)) : 1.0f; }

constexpr uint8_t kNoGradient = 4;  // pooling code: the output is zero (ReLU or dropout)
constexpr int64_t kBlock = kChannelBlock;

// One max-pool window (a b / c d, row-major) through ReLU and dropout: the output and the
// argmax code (0-3) or kNoGradient. Branch-free (and compiled with -fno-trapping-math) so that
// the loops around it vectorise. Ties go to the earlier element in row-major order, as in
// max_pool2d. `index` is the output's flat index in N×C×H×W order, whatever the layout.
__attribute__((always_inline)) inline void pool_one(float a, float b, float c, float d, uint32_t index, uint64_t seed,
                                                    uint32_t threshold, float scale, float& out, uint8_t& code) {
  const int top_right = b > a, bottom_right = d > c;
  const float top = top_right ? b : a, bottom = bottom_right ? d : c;
  const int lower = bottom > top;
  const float best = lower ? bottom : top;
  const int idx = lower ? bottom_right + 2 : top_right;
  const int nan = (a != a) | (b != b) | (c != c) | (d != d);
  const int live = (best > 0) & (hash(seed, index) >= threshold) & !nan;
  // A NaN anywhere in the window comes out as NaN, even where dropout drops it: LibTorch
  // propagates it through max_pool2d and multiplies it by the mask.
  out = nan ? std::numeric_limits<float>::quiet_NaN() : (live ? best * scale : 0.0f);
  code = uint8_t(live ? idx : kNoGradient);
}

__attribute__((always_inline)) inline void unpool_one(float g, uint8_t k, float scale, float& a, float& b, float& c,
                                                      float& d) {
  const float v = g * scale;
  a = k == 0 ? v : 0.0f;
  b = k == 1 ? v : 0.0f;
  c = k == 2 ? v : 0.0f;
  d = k == 3 ? v : 0.0f;
}

// One plane row of outputs: r0, r1 are the two input rows, `first` the flat output index of
// column 0; code receives the argmax (0-3, row-major) or kNoGradient.
NOPROP_CLONES void pool_row(const float* __restrict r0, const float* __restrict r1, float* __restrict out,
                            uint8_t* __restrict code, int64_t wo, uint32_t first, uint64_t seed, uint32_t threshold,
                            float scale) {
  for (int64_t j = 0; j < wo; ++j)
    pool_one(r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1], first + uint32_t(j), seed, threshold, scale, out[j],
             code[j]);
}

NOPROP_CLONES void unpool_row(const float* __restrict g, const uint8_t* __restrict code, float* __restrict r0,
                              float* __restrict r1, int64_t wo, float scale) {
  for (int64_t j = 0; j < wo; ++j) unpool_one(g[j], code[j], scale, r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]);
}

// The same on channel-blocked rows (kBlock channels side by side per pixel): `first` is the
// flat N×C×H×W index of column 0 of the row's first channel, `stride` that between channels,
// so the masks are those of the plain layout.
NOPROP_CLONES void pool_row_blocked(const float* __restrict r0, const float* __restrict r1, float* __restrict out,
                                    uint8_t* __restrict code, int64_t wo, uint32_t first, uint32_t stride,
                                    uint64_t seed, uint32_t threshold, float scale) {
  for (int64_t j = 0; j < wo; ++j)
    for (int64_t l = 0; l < kBlock; ++l) {
      const int64_t a = 2 * j * kBlock + l, b = a + kBlock, o = j * kBlock + l;
      pool_one(r0[a], r0[b], r1[a], r1[b], first + uint32_t(j) + uint32_t(l) * stride, seed, threshold, scale, out[o],
               code[o]);
    }
}

NOPROP_CLONES void unpool_row_blocked(const float* __restrict g, const uint8_t* __restrict code, float* __restrict r0,
                                      float* __restrict r1, int64_t wo, float scale) {
  for (int64_t j = 0; j < wo; ++j)
    for (int64_t l = 0; l < kBlock; ++l) {
      const int64_t a = 2 * j * kBlock + l, b = a + kBlock, o = j * kBlock + l;
      unpool_one(g[o], code[o], scale, r0[a], r0[b], r1[a], r1[b]);
    }
}

__attribute__((always_inline)) inline float relu_dropout_one(float v, uint32_t index, uint64_t seed, uint32_t threshold,
                                                             float scale) {
  const int live = (v > 0) & (hash(seed, index) >= threshold);
  return live ? v * scale : (v != v ? v : 0.0f);
}

NOPROP_CLONES void relu_dropout_range(const float* x, float* out, int64_t begin, int64_t end, uint64_t seed,
                                      uint32_t threshold, float scale) {
  for (int64_t i = begin; i < end; ++i) out[i] = relu_dropout_one(x[i], uint32_t(i), seed, threshold, scale);
}

// One channel-blocked plane group (hw pixels × kBlock channels); `first`: the flat N×C×H×W
// index of its first channel's first pixel.
NOPROP_CLONES void relu_dropout_blocked(const float* __restrict x, float* __restrict out, int64_t hw, uint32_t first,
                                        uint64_t seed, uint32_t threshold, float scale) {
  for (int64_t s = 0; s < hw; ++s)
    for (int64_t l = 0; l < kBlock; ++l)
      out[s * kBlock + l] = relu_dropout_one(x[s * kBlock + l], first + uint32_t(s + l * hw), seed, threshold, scale);
}

NOPROP_CLONES void adamw_range(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
                               int64_t begin, int64_t end, float decay, float beta1, float one_minus_beta1, float beta2,
                               float one_minus_beta2, float sqrt_bc2, float eps, float neg_step_size) {
  // The same float operations, in the same order, as LibTorch's AdamW::step.
  for (int64_t i = begin; i < end; ++i) {
    const float gi = g[i];
    const float mi = m[i] * beta1 + one_minus_beta1 * gi;
    const float vi = v[i] * beta2 + one_minus_beta2 * gi * gi;
    const float denom = std::sqrt(vi) / sqrt_bc2 + eps;
    p[i] = p[i] * decay + neg_step_size * mi / denom;
    m[i] = mi;
    v[i] = vi;
  }
}

NOPROP_CLONES void relu_dropout_backward_range(const float* g, const float* out, float* gx, int64_t begin, int64_t end,
                                               float scale) {
  for (int64_t i = begin; i < end; ++i) gx[i] = out[i] > 0 ? g[i] * scale : 0.0f;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define NOPROP_AVX512 1
// Hand-written AVX-512 rows: the rows are short (14 outputs at 28×28), too short for the
// compiler's 16-lane loops, whose scalar remainder then does all the work. Masked loads and
// stores cover any length.
#define NOPROP_AVX512_FN __attribute__((target("avx512f")))

NOPROP_AVX512_FN inline __m512i mix32(__m512i h) {
  h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
  h = _mm512_mullo_epi32(h, _mm512_set1_epi32(int(0x7feb352dU)));
  h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 15));
  h = _mm512_mullo_epi32(h, _mm512_set1_epi32(int(0x846ca68bU)));
  return _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
}

// Keep decisions of the 16 indices in i.
NOPROP_AVX512_FN inline __mmask16 keep_mask(__m512i i, uint64_t seed, uint32_t threshold) {
  __m512i h = mix32(_mm512_xor_si512(i, _mm512_set1_epi32(int(uint32_t(seed)))));
  h = mix32(_mm512_add_epi32(h, _mm512_set1_epi32(int(uint32_t(seed >> 32)))));
  return _mm512_cmp_epu32_mask(h, _mm512_set1_epi32(int(threshold)), _MM_CMPINT_NLT);
}

NOPROP_AVX512_FN inline __m512i iota16() {
  return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

// 16 pooling windows (a b / c d, row-major) through ReLU and dropout (pool_one, vectorised):
// the outputs, stored under m, and their codes.
NOPROP_AVX512_FN inline void pool16(__m512 a, __m512 b, __m512 c, __m512 d, __mmask16 keep, float scale, __mmask16 m,
                                    float* out, uint8_t* code) {
  const __m512 zero = _mm512_setzero_ps(), nan = _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN());
  const __m512i one = _mm512_set1_epi32(1), two = _mm512_set1_epi32(2), three = _mm512_set1_epi32(3);
  const __mmask16 top_right = _mm512_cmp_ps_mask(b, a, _CMP_GT_OQ), bottom_right = _mm512_cmp_ps_mask(d, c, _CMP_GT_OQ);
  const __m512 top = _mm512_mask_blend_ps(top_right, a, b), bottom = _mm512_mask_blend_ps(bottom_right, c, d);
  const __mmask16 lower = _mm512_cmp_ps_mask(bottom, top, _CMP_GT_OQ);
  const __m512 best = _mm512_mask_blend_ps(lower, top, bottom);
  const __m512i idx = _mm512_mask_blend_epi32(lower, _mm512_maskz_mov_epi32(top_right, one),
                                              _mm512_mask_mov_epi32(two, bottom_right, three));
  const __mmask16 is_nan = _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q) |
                           _mm512_cmp_ps_mask(c, c, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(d, d, _CMP_UNORD_Q);
  const __mmask16 live = _mm512_cmp_ps_mask(best, zero, _CMP_GT_OQ) & keep & __mmask16(~is_nan);
  const __m512 o = _mm512_mask_mov_ps(_mm512_maskz_mul_ps(live, best, _mm512_set1_ps(scale)), is_nan, nan);
  _mm512_mask_storeu_ps(out, m, o);
  _mm512_mask_cvtepi32_storeu_epi8(code, m, _mm512_mask_blend_epi32(live, _mm512_set1_epi32(kNoGradient), idx));
}

// The gradient g of 16 outputs routed by their codes: four vectors, one per window position.
struct Windows16 {
  __m512 a, b, c, d;
};
NOPROP_AVX512_FN inline Windows16 unpool16(__m512 g, __m128i code, float scale) {
  const __m512i k = _mm512_cvtepu8_epi32(code);
  const __m512 v = _mm512_mul_ps(g, _mm512_set1_ps(scale));
  return {_mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(k, _mm512_set1_epi32(0)), v),
          _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(k, _mm512_set1_epi32(1)), v),
          _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(k, _mm512_set1_epi32(2)), v),
          _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(k, _mm512_set1_epi32(3)), v)};
}

// Masks for 2n consecutive floats (n ≤ 16 outputs) split into two 16-float loads.
NOPROP_AVX512_FN inline std::pair<__mmask16, __mmask16> pair_masks(int64_t n) {
  const int64_t m = 2 * n;
  return {__mmask16(m >= 16 ? 0xFFFF : (1U << m) - 1), __mmask16(m >= 32 ? 0xFFFF : m > 16 ? (1U << (m - 16)) - 1 : 0)};
}

NOPROP_AVX512_FN void pool_row_avx512(const float* r0, const float* r1, float* out, uint8_t* code, int64_t wo,
                                      uint32_t first, uint64_t seed, uint32_t threshold, float scale) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int64_t j = 0; j < wo; j += 16) {
    const int64_t n = std::min<int64_t>(16, wo - j);
    const __mmask16 m = __mmask16(n == 16 ? 0xFFFF : (1U << n) - 1);
    const auto [lo, hi] = pair_masks(n);
    const __m512 t0 = _mm512_maskz_loadu_ps(lo, r0 + 2 * j), t1 = _mm512_maskz_loadu_ps(hi, r0 + 2 * j + 16);
    const __m512 u0 = _mm512_maskz_loadu_ps(lo, r1 + 2 * j), u1 = _mm512_maskz_loadu_ps(hi, r1 + 2 * j + 16);
    const __m512 a = _mm512_permutex2var_ps(t0, even, t1), b = _mm512_permutex2var_ps(t0, odd, t1);
    const __m512 c = _mm512_permutex2var_ps(u0, even, u1), d = _mm512_permutex2var_ps(u0, odd, u1);
    const __m512i index = _mm512_add_epi32(_mm512_set1_epi32(int(first + uint32_t(j))), iota16());
    pool16(a, b, c, d, keep_mask(index, seed, threshold), scale, m, out + j, code + j);
  }
}

// Channel-blocked rows (pool_row_blocked): no shuffles, one window per channel lane.
NOPROP_AVX512_FN void pool_row_blocked_avx512(const float* r0, const float* r1, float* out, uint8_t* code, int64_t wo,
                                              uint32_t first, uint32_t stride, uint64_t seed, uint32_t threshold,
                                              float scale) {
  static_assert(kBlock == 16);
  const __m512i lanes = _mm512_mullo_epi32(iota16(), _mm512_set1_epi32(int(stride)));
  for (int64_t j = 0; j < wo; ++j) {
    const float *p0 = r0 + 2 * j * kBlock, *p1 = r1 + 2 * j * kBlock;
    const __m512i index = _mm512_add_epi32(_mm512_set1_epi32(int(first + uint32_t(j))), lanes);
    pool16(_mm512_loadu_ps(p0), _mm512_loadu_ps(p0 + kBlock), _mm512_loadu_ps(p1), _mm512_loadu_ps(p1 + kBlock),
           keep_mask(index, seed, threshold), scale, 0xFFFF, out + j * kBlock, code + j * kBlock);
  }
}

NOPROP_AVX512_FN void unpool_row_blocked_avx512(const float* g, const uint8_t* code, float* r0, float* r1, int64_t wo,
                                                float scale) {
  for (int64_t j = 0; j < wo; ++j) {
    const auto v = unpool16(_mm512_loadu_ps(g + j * kBlock),
                            _mm_loadu_si128(reinterpret_cast<const __m128i*>(code + j * kBlock)), scale);
    float *p0 = r0 + 2 * j * kBlock, *p1 = r1 + 2 * j * kBlock;
    _mm512_storeu_ps(p0, v.a);
    _mm512_storeu_ps(p0 + kBlock, v.b);
    _mm512_storeu_ps(p1, v.c);
    _mm512_storeu_ps(p1 + kBlock, v.d);
  }
}

NOPROP_AVX512_FN void unpool_row_avx512(const float* g, const uint8_t* code, float* r0, float* r1, int64_t wo,
                                        float scale) {
  const __m512i lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi_idx = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (int64_t j = 0; j < wo; j += 16) {
    const int64_t n = std::min<int64_t>(16, wo - j);
    const __mmask16 m = __mmask16(n == 16 ? 0xFFFF : (1U << n) - 1);
    const auto [lo, hi] = pair_masks(n);
    alignas(16) uint8_t bytes[16] = {};
    std::memcpy(bytes, code + j, size_t(n));
    const auto [e0, o0, e1, o1] =
        unpool16(_mm512_maskz_loadu_ps(m, g + j), _mm_load_si128(reinterpret_cast<const __m128i*>(bytes)), scale);
    _mm512_mask_storeu_ps(r0 + 2 * j, lo, _mm512_permutex2var_ps(e0, lo_idx, o0));
    _mm512_mask_storeu_ps(r0 + 2 * j + 16, hi, _mm512_permutex2var_ps(e0, hi_idx, o0));
    _mm512_mask_storeu_ps(r1 + 2 * j, lo, _mm512_permutex2var_ps(e1, lo_idx, o1));
    _mm512_mask_storeu_ps(r1 + 2 * j + 16, hi, _mm512_permutex2var_ps(e1, hi_idx, o1));
  }
}

// adamw_range's operations in the same order (no fused multiply-adds). The compiler leaves
// adamw_range scalar: sqrt may set errno, a branch in the loop (3.4 ms per million
// parameters and thread here, against 0.75 ms for this row).
NOPROP_AVX512_FN void adamw_range_avx512(float* __restrict p, const float* __restrict g, float* __restrict m,
                                         float* __restrict v, int64_t begin, int64_t end, float decay, float beta1,
                                         float one_minus_beta1, float beta2, float one_minus_beta2, float sqrt_bc2,
                                         float eps, float neg_step_size) {
  const __m512 d = _mm512_set1_ps(decay), b1 = _mm512_set1_ps(beta1), c1 = _mm512_set1_ps(one_minus_beta1);
  const __m512 b2 = _mm512_set1_ps(beta2), c2 = _mm512_set1_ps(one_minus_beta2), s2 = _mm512_set1_ps(sqrt_bc2);
  const __m512 e = _mm512_set1_ps(eps), step = _mm512_set1_ps(neg_step_size);
  for (int64_t i = begin; i < end; i += 16) {
    const __mmask16 k = __mmask16(end - i >= 16 ? 0xFFFF : (1U << (end - i)) - 1);
    const __m512 gi = _mm512_maskz_loadu_ps(k, g + i);
    const __m512 mi = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, m + i), b1), _mm512_mul_ps(c1, gi));
    const __m512 vi =
        _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, v + i), b2), _mm512_mul_ps(_mm512_mul_ps(c2, gi), gi));
    const __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), s2), e);
    const __m512 pi =
        _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, p + i), d), _mm512_div_ps(_mm512_mul_ps(step, mi), denom));
    _mm512_mask_storeu_ps(p + i, k, pi);
    _mm512_mask_storeu_ps(m + i, k, mi);
    _mm512_mask_storeu_ps(v + i, k, vi);
  }
}
#endif

// Whether the AVX-512 rows run (CPU support, unless a test turned them off).
std::atomic<bool> g_avx512{
#ifdef NOPROP_AVX512
    __builtin_cpu_supports("avx512f") != 0
#else
    false
#endif
};

void pool_row_best(const float* r0, const float* r1, float* out, uint8_t* code, int64_t wo, uint32_t first,
                   uint64_t seed, uint32_t threshold, float scale) {
#ifdef NOPROP_AVX512
  if (g_avx512.load(std::memory_order_relaxed))
    return pool_row_avx512(r0, r1, out, code, wo, first, seed, threshold, scale);
#endif
  pool_row(r0, r1, out, code, wo, first, seed, threshold, scale);
}

void unpool_row_best(const float* g, const uint8_t* code, float* r0, float* r1, int64_t wo, float scale) {
#ifdef NOPROP_AVX512
  if (g_avx512.load(std::memory_order_relaxed)) return unpool_row_avx512(g, code, r0, r1, wo, scale);
#endif
  unpool_row(g, code, r0, r1, wo, scale);
}

void pool_row_blocked_best(const float* r0, const float* r1, float* out, uint8_t* code, int64_t wo, uint32_t first,
                           uint32_t stride, uint64_t seed, uint32_t threshold, float scale) {
#ifdef NOPROP_AVX512
  if (g_avx512.load(std::memory_order_relaxed))
    return pool_row_blocked_avx512(r0, r1, out, code, wo, first, stride, seed, threshold, scale);
#endif
  pool_row_blocked(r0, r1, out, code, wo, first, stride, seed, threshold, scale);
}

void unpool_row_blocked_best(const float* g, const uint8_t* code, float* r0, float* r1, int64_t wo, float scale) {
#ifdef NOPROP_AVX512
  if (g_avx512.load(std::memory_order_relaxed)) return unpool_row_blocked_avx512(g, code, r0, r1, wo, scale);
#endif
  unpool_row_blocked(g, code, r0, r1, wo, scale);
}

void adamw_range_best(float* p, const float* g, float* m, float* v, int64_t begin, int64_t end, float decay,
                      float beta1, float one_minus_beta1, float beta2, float one_minus_beta2, float sqrt_bc2, float eps,
                      float neg_step_size) {
#ifdef NOPROP_AVX512
  if (g_avx512.load(std::memory_order_relaxed))
    return adamw_range_avx512(p, g, m, v, begin, end, decay, beta1, one_minus_beta1, beta2, one_minus_beta2, sqrt_bc2,
                              eps, neg_step_size);
#endif
  adamw_range(p, g, m, v, begin, end, decay, beta1, one_minus_beta1, beta2, one_minus_beta2, sqrt_bc2, eps,
              neg_step_size);
}

// Forward of relu_pool_dropout on a contiguous x (N×C×H×W, or channel-blocked): the output
// and the argmax codes, in x's layout.
std::pair<torch::Tensor, torch::Tensor> pool_forward(const torch::Tensor& x, double p, uint64_t seed) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), ho = h / 2, wo = w / 2;
  TORCH_CHECK(h % 2 == 0 && w % 2 == 0, "relu_pool_dropout needs even height and width, got ", h, "×", w);
  auto sizes = x.sizes().vec();
  sizes[2] = ho, sizes[3] = wo;
  auto out = torch::empty(sizes, x.options());
  auto code = torch::empty(sizes, x.options().dtype(torch::kUInt8));
  const float* in = x.data_ptr<float>();
  float* o = out.data_ptr<float>();
  uint8_t* k = code.data_ptr<uint8_t>();
  const uint32_t threshold = drop_threshold(p);
  const float scale = keep_scale(p);
  const int64_t lanes = x.dim() == 5 ? kBlock : 1;  // channel-blocked: c counts blocks of kBlock planes
  at::parallel_for(0, n * c, lanes == 1 ? 8 : 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane)
      for (int64_t i = 0; i < ho; ++i) {
        const int64_t at = (plane * ho + i) * wo * lanes;
        const float* r0 = in + (plane * h + 2 * i) * w * lanes;
        if (lanes == 1)
          pool_row_best(r0, r0 + w, o + at, k + at, wo, uint32_t(at), seed, threshold, scale);
        else  // the row's first channel's flat N×C×H×W index, and the step between channels
          pool_row_blocked_best(r0, r0 + w * lanes, o + at, k + at, wo, uint32_t((plane * lanes * ho + i) * wo),
                                uint32_t(ho * wo), seed, threshold, scale);
      }
  });
  return {out, code};
}

torch::Tensor relu_dropout_forward(const torch::Tensor& x, double p, uint64_t seed) {
  auto out = torch::empty_like(x);
  const float* in = x.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const uint32_t threshold = drop_threshold(p);
  const float scale = keep_scale(p);
  if (x.dim() == 5) {  // channel-blocked: one group of kBlock planes at a time
    const int64_t hw = x.size(2) * x.size(3), group = hw * kBlock;
    at::parallel_for(0, x.size(0) * x.size(1), 1, [&](int64_t b, int64_t e) {
      for (int64_t g = b; g < e; ++g)
        relu_dropout_blocked(in + g * group, o + g * group, hw, uint32_t(g * group), seed, threshold, scale);
    });
    return out;
  }
  at::parallel_for(0, x.numel(), 1 << 15,
                   [&](int64_t b, int64_t e) { relu_dropout_range(in, o, b, e, seed, threshold, scale); });
  return out;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct ReluPoolDropout : torch::autograd::Function<ReluPoolDropout> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, double p, int64_t seed) {
    auto [out, code] = pool_forward(x.contiguous(), p, uint64_t(seed));
    ctx->save_for_backward({code});
    ctx->saved_data["p"] = p;
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto code = ctx->get_saved_variables()[0];
    const auto g = grads[0].contiguous();
    const int64_t n = code.size(0), c = code.size(1), ho = code.size(2), wo = code.size(3), w = 2 * wo;
    auto sizes = code.sizes().vec();
    sizes[2] = 2 * ho, sizes[3] = w;
    auto gx = torch::empty(sizes, g.options());
    const float scale = keep_scale(ctx->saved_data["p"].toDouble());
    const float* gp = g.data_ptr<float>();
    const uint8_t* k = code.data_ptr<uint8_t>();
    float* out = gx.data_ptr<float>();
    const int64_t lanes = code.dim() == 5 ? kBlock : 1;  // channel-blocked: kBlock floats per pixel
    at::parallel_for(0, n * c, lanes == 1 ? 8 : 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane)
        for (int64_t i = 0; i < ho; ++i) {
          const int64_t at = (plane * ho + i) * wo * lanes;
          float* r0 = out + (plane * 2 * ho + 2 * i) * w * lanes;
          if (lanes == 1)
            unpool_row_best(gp + at, k + at, r0, r0 + w, wo, scale);
          else
            unpool_row_blocked_best(gp + at, k + at, r0, r0 + w * lanes, wo, scale);
        }
    });
    return {gx, torch::Tensor(), torch::Tensor()};
  }
};

struct ReluDropout : torch::autograd::Function<ReluDropout> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, double p, int64_t seed) {
    auto out = relu_dropout_forward(x.contiguous(), p, uint64_t(seed));
    ctx->save_for_backward({out});  // out > 0 exactly where the gradient passes
    ctx->saved_data["p"] = p;
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto out = ctx->get_saved_variables()[0];
    const auto g = grads[0].contiguous();
    auto gx = torch::empty_like(out);
    const float scale = keep_scale(ctx->saved_data["p"].toDouble());
    const float *gp = g.data_ptr<float>(), *op = out.data_ptr<float>();
    float* gxp = gx.data_ptr<float>();
    at::parallel_for(0, out.numel(), 1 << 15,
                     [&](int64_t b, int64_t e) { relu_dropout_backward_range(gp, op, gxp, b, e, scale); });
    return {gx, torch::Tensor(), torch::Tensor()};
  }
};

thread_local at::Generator t_generator;  // set by GeneratorScope; undefined: the default one

uint64_t draw_seed() {
  auto gen = t_generator.defined() ? t_generator : at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return at::check_generator<at::CPUGeneratorImpl>(gen)->random64();
}

bool needs_grad(const torch::Tensor& x) { return torch::GradMode::is_enabled() && x.requires_grad(); }

}  // namespace

GeneratorScope::GeneratorScope(at::Generator gen) : previous_(std::exchange(t_generator, std::move(gen))) {}
GeneratorScope::~GeneratorScope() { t_generator = std::move(previous_); }

bool set_vector_kernels(bool on) {
#ifdef NOPROP_AVX512
  on = on && __builtin_cpu_supports("avx512f");
#else
  on = false;
#endif
  return g_avx512.exchange(on);
}

namespace {
// A strided float32 CPU tensor of under 2³² elements (the masks' indices are 32-bit).
bool cpu_float32(const torch::Tensor& x) {
  return x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.layout() == torch::kStrided &&
         x.numel() < (int64_t(1) << 32);
}
}  // namespace

bool supported(const torch::Tensor& x) { return x.dim() == 4 && cpu_float32(x); }

bool blocked(const torch::Tensor& x) { return x.dim() == 5 && x.size(4) == kBlock && cpu_float32(x); }

torch::Tensor to_blocked(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) % kBlock == 0, "to_blocked needs N×C×H×W with C a multiple of ", kBlock);
  return x.view({x.size(0), x.size(1) / kBlock, kBlock, x.size(2), x.size(3)}).permute({0, 1, 3, 4, 2}).contiguous();
}

torch::Tensor to_plain(const torch::Tensor& x) {
  if (x.dim() != 5) return x;
  return x.permute({0, 1, 4, 2, 3}).reshape({x.size(0), x.size(1) * kBlock, x.size(2), x.size(3)});
}

torch::Tensor relu_pool_dropout(const torch::Tensor& x, double p, uint64_t seed) {
  NOPROP_RECORD("noprop::relu_pool_dropout");
  if (!supported(x) && !blocked(x)) return torch::dropout(torch::max_pool2d(torch::relu(x), 2), p, p > 0);
  if (!needs_grad(x)) return pool_forward(x.contiguous(), p, seed).first;
  return ReluPoolDropout::apply(x, p, int64_t(seed));
}

torch::Tensor relu_pool_dropout(const torch::Tensor& x, double p) {
  return relu_pool_dropout(x, p, p > 0 && (supported(x) || blocked(x)) ? draw_seed() : 0);
}

torch::Tensor relu_dropout(const torch::Tensor& x, double p, uint64_t seed) {
  NOPROP_RECORD("noprop::relu_dropout");
  if (!supported(x) && !blocked(x)) return torch::dropout(torch::relu(x), p, p > 0);
  if (!needs_grad(x)) return relu_dropout_forward(x.contiguous(), p, seed);
  return ReluDropout::apply(x, p, int64_t(seed));
}

torch::Tensor relu_dropout(const torch::Tensor& x, double p) {
  return relu_dropout(x, p, p > 0 && (supported(x) || blocked(x)) ? draw_seed() : 0);
}

bool adamw_supported(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous() &&
         t.layout() == torch::kStrided;
}

void adamw_update(torch::Tensor& p, const torch::Tensor& grad, torch::Tensor& exp_avg, torch::Tensor& exp_avg_sq,
                  double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step) {
  NOPROP_RECORD("noprop::adamw_update");
  TORCH_CHECK(adamw_supported(p) && adamw_supported(grad) && adamw_supported(exp_avg) && adamw_supported(exp_avg_sq) &&
                  grad.numel() == p.numel() && exp_avg.numel() == p.numel() && exp_avg_sq.numel() == p.numel(),
              "adamw_update needs contiguous float32 CPU tensors of one size");
  const double bc1 = 1 - std::pow(beta1, double(step)), bc2 = 1 - std::pow(beta2, double(step));
  float* pp = p.data_ptr<float>();
  const float* gp = grad.data_ptr<float>();
  float* mp = exp_avg.data_ptr<float>();
  float* vp = exp_avg_sq.data_ptr<float>();
  const float decay = float(1 - lr * weight_decay), b1 = float(beta1), b2 = float(beta2);
  const float c1 = float(1 - beta1), c2 = float(1 - beta2), s2 = float(std::sqrt(bc2)), e = float(eps);
  const float neg_step = float(-lr / bc1);
  at::parallel_for(0, p.numel(), 1 << 14, [&](int64_t b, int64_t end) {
    adamw_range_best(pp, gp, mp, vp, b, end, decay, b1, c1, b2, c2, s2, e, neg_step);
  });
}

torch::Tensor dropout_keep_mask(uint64_t seed, int64_t n, double p) {
  auto mask = torch::empty({n});
  const uint32_t threshold = drop_threshold(p);
  float* m = mask.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) m[i] = hash(seed, uint32_t(i)) >= threshold ? 1.0f : 0.0f;
  return mask;
}

}  // namespace noprop::kernels
