// The direction stream (docs/DESIGN.md, "The direction stream"), header-only.
//
// Element j of the direction with seed s is normal (j % 4) of the Philox4x32-10
// block with counter (q_lo, q_hi, 0, 0), q = j / 4, and key (s_lo, s_hi):
// Triton's uint32 -> uniform conversion, then Box-Muller on the pairs
// (u0, u1) and (u2, u3), both the cos and the sin outputs used.
//
// Everything here is forced inline and branch-free so that a loop over counters
// marked `#pragma omp simd` vectorises completely (a call left out of line
// "clobbers memory" and the loop stays scalar: gcc's inliner gave up on
// normals4 once the loop also wrote a second accumulator, 3.5x slower). That is why log and
// sin/cos are our own: glibc's logf/sinf/cosf only get vector variants under
// -ffast-math, which we refuse (results must be reproducible). The Philox
// integers and the uniforms are bit-identical to Triton and to
// zosam_kernels/ops/reference.py; the normals agree with the reference to a
// few float32 ulps (max |err| 6.5e-7 over 2.4e7 samples, |n| <= 5.68 given
// the 1e-7 clamp; the contract is 1e-5). Compile with -ffp-contract=off: with
// FMA contraction the normals' last bits would depend on the target ISA;
// without it they are bit-identical across SSE2, AVX2 and AVX-512 builds.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__GNUC__)
#define ZOSAM_INLINE inline __attribute__((always_inline))
#else
#define ZOSAM_INLINE inline
#endif

namespace zosam {
namespace stream {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // sqrt(3) - 1
constexpr int kPhiloxRounds = 10;

// Triton's constant; as a float32 it is exactly 2**-31, so u lies in [0, 1].
constexpr float kUniformScale = 4.6566127342e-10f;
constexpr float kTwoPi = 6.283185307179586f;
constexpr float kU1Floor = 1e-7f;

ZOSAM_INLINE uint32_t float_bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);  // compiles to a register move, vectorises
  return b;
}

ZOSAM_INLINE float bits_float(uint32_t b) {
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

// Philox4x32-10 on one block, in place. The rounds are spelled out rather
// than looped: gcc does not vectorise an outer loop around an inner one. The
// round keys k + i * W (mod 2**32) are loop-invariant in the callers' loops.
//
// The words are carried in uint64 lanes where the target has a 64-bit
// vector multiply (AVX-512DQ): the 32x32 -> 64 products then need no
// shuffling between 32- and 64-bit lanes, which makes Philox 1.8x faster on
// Zen 4. Elsewhere (AVX2, SSE2) 32-bit words vectorise better. Both compute
// exactly the same integers.
#if defined(__AVX512DQ__)
using PhiloxWord = uint64_t;
#else
using PhiloxWord = uint32_t;
#endif

ZOSAM_INLINE void philox_round(PhiloxWord& c0, PhiloxWord& c1, PhiloxWord& c2, PhiloxWord& c3,
                         uint32_t k0, uint32_t k1) {
  constexpr uint64_t kLow = 0xFFFFFFFFu;
  const uint64_t p0 = uint64_t(kPhiloxM0) * (uint64_t(c0) & kLow);  // exact: < 2**64
  const uint64_t p1 = uint64_t(kPhiloxM1) * (uint64_t(c2) & kLow);
  const PhiloxWord n0 = PhiloxWord((p1 >> 32) ^ c1 ^ k0);
  const PhiloxWord n1 = PhiloxWord(p1 & kLow);
  const PhiloxWord n2 = PhiloxWord((p0 >> 32) ^ c3 ^ k1);
  const PhiloxWord n3 = PhiloxWord(p0 & kLow);
  c0 = n0;
  c1 = n1;
  c2 = n2;
  c3 = n3;
}

ZOSAM_INLINE void philox4x32_10(uint32_t& w0, uint32_t& w1, uint32_t& w2, uint32_t& w3,
                          uint32_t k0, uint32_t k1) {
  static_assert(kPhiloxRounds == 10, "the rounds below are unrolled by hand");
  PhiloxWord c0 = w0, c1 = w1, c2 = w2, c3 = w3;
  philox_round(c0, c1, c2, c3, k0 + 0 * kPhiloxW0, k1 + 0 * kPhiloxW1);
  philox_round(c0, c1, c2, c3, k0 + 1 * kPhiloxW0, k1 + 1 * kPhiloxW1);
  philox_round(c0, c1, c2, c3, k0 + 2 * kPhiloxW0, k1 + 2 * kPhiloxW1);
  philox_round(c0, c1, c2, c3, k0 + 3 * kPhiloxW0, k1 + 3 * kPhiloxW1);
  philox_round(c0, c1, c2, c3, k0 + 4 * kPhiloxW0, k1 + 4 * kPhiloxW1);
  philox_round(c0, c1, c2, c3, k0 + 5 * kPhiloxW0, k1 + 5 * kPhiloxW1);
  philox_round(c0, c1, c2, c3, k0 + 6 * kPhiloxW0, k1 + 6 * kPhiloxW1);
  philox_round(c0, c1, c2, c3, k0 + 7 * kPhiloxW0, k1 + 7 * kPhiloxW1);
  philox_round(c0, c1, c2, c3, k0 + 8 * kPhiloxW0, k1 + 8 * kPhiloxW1);
  philox_round(c0, c1, c2, c3, k0 + 9 * kPhiloxW0, k1 + 9 * kPhiloxW1);
  w0 = uint32_t(c0);
  w1 = uint32_t(c1);
  w2 = uint32_t(c2);
  w3 = uint32_t(c3);
}

// Triton's conversion: bitcast to int32, ~x for negatives, scale. x ^ (x >> 31)
// is that ~x without a branch (the shift is arithmetic: all ones iff x < 0).
// One int->float cast and one float32 product: the same bits everywhere.
ZOSAM_INLINE float uint32_to_uniform(uint32_t bits) {
  int32_t x = int32_t(bits);
  x ^= x >> 31;
  return float(x) * kUniformScale;
}

// Natural log for a positive normal float (Box-Muller's u1 in [1e-7, 1]).
// Cephes logf: x = m * 2**e with m in [sqrt(1/2), sqrt(2)), log(1 + f) by a
// degree-9 polynomial in f = m - 1, and e * log(2) split in two so that the
// big part adds exactly. Relative error about 1 ulp; in particular accurate
// near x = 1, where r = sqrt(-2 log u1) is small and relative error matters.
ZOSAM_INLINE float log_positive(float x) {
  const uint32_t b = float_bits(x);
  int32_t e = int32_t(b >> 23) - 126;                     // x = m * 2**e
  const float m = bits_float((b & 0x007FFFFFu) | 0x3F000000u);  // m in [0.5, 1)
  const int32_t low = m < 0.70710678118654752f;           // 1 or 0
  e -= low;
  // f = 2m - 1 below sqrt(1/2), m - 1 above; both exact (Sterbenz), and so
  // is m * low. Arithmetic, not `low ? ... : ...`: under the default
  // -ftrapping-math gcc will not execute both float arms unconditionally
  // without AVX-512 masking, and the loop would stay scalar on AVX2.
  const float f = (m + m * float(low)) - 1.0f;
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const float fe = float(e);
  float y = f * z * p;
  y += fe * -2.12194440e-4f;   // log(2) - 0.693359375
  y += -0.5f * z;
  float r = f + y;
  r += fe * 0.693359375f;      // 9 significant bits: exact product
  return r;
}

// sin and cos of x in [0, 2*pi] (Box-Muller's angle; not meant for large x).
// Cody-Waite reduction by the nearest multiple j of pi/2, with pi/2 split in
// three floats (the first two have 8 and 11 significant bits, so their
// products with j are exact and y = x - j*pi/2 carries no reduction error
// worth counting); minimax polynomials on [-pi/4, pi/4] (Cephes sinf/cosf);
// then the quadrant j & 3 swaps and negates, selected by integer masks
// rather than branches.
ZOSAM_INLINE void sincos_angle(float x, float& sin_out, float& cos_out) {
  const int32_t j = int32_t(x * 0.63661977236758134f + 0.5f);  // round(x / (pi/2)), x >= 0
  const float fj = float(j);
  float y = x - fj * 1.5703125f;
  y -= fj * 4.837512969970703125e-4f;
  y -= fj * 7.54978995489188216e-8f;
  const float z = y * y;
  float s = -1.9515295891e-4f;
  s = s * z + 8.3321608736e-3f;
  s = s * z - 1.6666654611e-1f;
  s = s * z * y + y;
  float c = 2.443315711809948e-5f;
  c = c * z - 1.388731625493765e-3f;
  c = c * z + 4.166664568298827e-2f;
  c = c * z * z - 0.5f * z + 1.0f;
  // sin(y + j pi/2) = (sin y, cos y, -sin y, -cos y)[j & 3]
  // cos(y + j pi/2) = (cos y, -sin y, -cos y, sin y)[j & 3]
  // Selected and negated on the bits with integer masks: float selects or
  // sign multiplies become branches on targets without AVX-512 masking.
  const uint32_t bs = float_bits(s), bc = float_bits(c);
  const uint32_t swap = 0u - uint32_t(j & 1);              // all ones on odd j
  const uint32_t sin_neg = uint32_t(j & 2) << 30;          // sign bit on j & 3 in {2, 3}
  const uint32_t cos_neg = uint32_t((j + 1) & 2) << 30;    // sign bit on j & 3 in {1, 2}
  sin_out = bits_float(((bc & swap) | (bs & ~swap)) ^ sin_neg);
  cos_out = bits_float(((bs & swap) | (bc & ~swap)) ^ cos_neg);
}

ZOSAM_INLINE void box_muller(float u1, float u2, float& n_cos, float& n_sin) {
  // max(1e-7, u1), so log(0) never happens. Done on the bits (u1 >= +0, and
  // non-negative floats order like their bit patterns) because gcc 12 turns
  // the float max into control flow here and then refuses to vectorise.
  u1 = bits_float(std::max(float_bits(u1), float_bits(kU1Floor)));
  const float theta = kTwoPi * u2;     // float32 product, as in Triton
  const float r = std::sqrt(-2.0f * log_positive(u1));
  float s, c;
  sincos_angle(theta, s, c);
  n_cos = r * c;
  n_sin = r * s;
}

// The four normals of counter q = (q_hi, q_lo) of the stream with key (k0, k1).
ZOSAM_INLINE void normals4(uint32_t q_lo, uint32_t q_hi, uint32_t k0, uint32_t k1,
                     float& n0, float& n1, float& n2, float& n3) {
  uint32_t c0 = q_lo, c1 = q_hi, c2 = 0, c3 = 0;
  philox4x32_10(c0, c1, c2, c3, k0, k1);
  box_muller(uint32_to_uniform(c0), uint32_to_uniform(c1), n0, n1);
  box_muller(uint32_to_uniform(c2), uint32_to_uniform(c3), n2, n3);
}

// Philox key of a seed: non-negative 63-bit, split into its two 32-bit words.
ZOSAM_INLINE void seed_key(uint64_t seed, uint32_t& k0, uint32_t& k1) {
  k0 = uint32_t(seed);
  k1 = uint32_t(seed >> 32);
}

}  // namespace stream
}  // namespace zosam
