// The fused direction kernels on raw CPU buffers (no torch types: the torch
// glue, argument checks and op registration live in ops.cpp).
//
// For local index i in [0, n) and stream index j = offset + i:
//   d[i] = (sum_k coefs[k] * u(seeds[k])[j]) * mask[i] * |scale[i]| ** scale_power
// where mask and scale are optional (nullptr) and u is the stream of philox.h;
// b[i] is the same with base[k] for coefs[k] (base optional).
#pragma once

#include <cstdint>

namespace zosam {

struct Directions {
  const int64_t* seeds;   // [k], each in [0, 2**63)
  const float* coefs;     // [k]
  const float* base;      // [k], or nullptr
  int64_t k;              // >= 1
  const uint8_t* mask;    // [n] bool storage, or nullptr
  const float* scale;     // [n], or nullptr
  int scale_power;        // 1 or 2 (ignored without scale)
  int64_t offset;         // >= 0, offset + n <= 2**63
  int64_t n;              // >= 0
};

// out[i] = u(seed)[offset + i], i in [0, n).
void fill_gaussian(float* out, int64_t n, int64_t seed, int64_t offset);

// theta[i] = (theta[i] - b[i]) + d[i], each operation rounded to float32 (without
// base: theta[i] + d[i]); where the mask is false theta[i] is not written at
// all, so masked-out weights keep their exact bits (signed zeros included).
// A move from base to coefs thus first takes back the move that applied base,
// with the very d it added, which undoes it exactly wherever float32 can.
void add_directions(float* theta, const Directions& dirs);

// sum_i d[i]**2, accumulated in double. The summation order is fixed by the
// chunk layout alone, so the result is bitwise independent of the number of
// threads and of the buffers' alignment.
double directions_sq_norm(const Directions& dirs);

}  // namespace zosam
