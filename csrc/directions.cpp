// Chunked, OpenMP-parallel implementation of directions.h.
//
// The work is cut into fixed-size chunks of Philox counters. Per chunk, one
// vectorised pass per seed generates the four normals of each counter and
// adds coef * normal into a small L1-resident accumulator; a last pass applies
// mask and scale and touches theta (or sums the squares). So theta is read
// and written once whatever K is, and nothing parameter-sized is allocated
// (the norm keeps one double per 4096-element chunk, for its fixed order).
#include "directions.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "philox.h"

namespace zosam {
namespace {

// 1024 counters = 4096 elements: the 16 KiB accumulator stays in L1 across
// the K passes, and a chunk is long enough to amortise OpenMP scheduling.
// Chunks are also the unit of the norm's partial sums, so this constant, not
// the thread count, fixes the summation order.
constexpr int64_t kChunkCounters = 1024;
constexpr int64_t kChunkElems = 4 * kChunkCounters;

// One chunk: Philox counters [q0, q0 + nq), i.e. stream elements
// [4 q0, 4 (q0 + nq)), clipped to the local range [begin, end) of [0, n).
// acc[acc_first] is the normal of local element `begin`.
struct Chunk {
  int64_t index;
  uint64_t q0;
  int nq;
  int64_t begin, end;
  int64_t acc_first;
};

// Stream positions are uint64: offset + n may reach 2**63, and the last
// counter's end 4 * q_end can exceed it by 3, which int64 could not hold.
class Layout {
 public:
  Layout(int64_t n, int64_t offset)
      : s_begin_(uint64_t(offset)), s_end_(uint64_t(offset) + uint64_t(n)),
        q_first_(s_begin_ / 4), q_end_(n > 0 ? (s_end_ + 3) / 4 : q_first_),
        n_chunks_(int64_t((q_end_ - q_first_ + kChunkCounters - 1) / kChunkCounters)) {}

  int64_t n_chunks() const { return n_chunks_; }

  Chunk chunk(int64_t c) const {
    const uint64_t q0 = q_first_ + uint64_t(c) * kChunkCounters;
    const uint64_t q1 = std::min(q0 + kChunkCounters, q_end_);
    const uint64_t first = std::max(4 * q0, s_begin_);  // stream index of `begin`
    const uint64_t last = std::min(4 * q1, s_end_);
    return {c, q0, int(q1 - q0), int64_t(first - s_begin_), int64_t(last - s_begin_),
            int64_t(first - 4 * q0)};
  }

 private:
  uint64_t s_begin_, s_end_, q_first_, q_end_;
  int64_t n_chunks_;
};

// acc[4t + r] = (or +=) coef * normal r of counter q0 + t, for t < nq, and
// with kBase the same into acc_b with coef_b (the normals made once). This is
// the loop that must vectorise (check with -fopt-info-vec-optimized).
template <bool kAssign, bool kBase = false>
void accumulate_stream(float* __restrict acc, int64_t seed, float coef, uint64_t q0, int nq,
                       float* __restrict acc_b = nullptr, float coef_b = 0.0f) {
  uint32_t k0, k1;
  stream::seed_key(uint64_t(seed), k0, k1);
  const uint32_t lo0 = uint32_t(q0);
  const uint32_t hi0 = uint32_t(q0 >> 32);
  // An int64 index: with an int, `4 * t` may wrap under -fwrapv (in
  // Python's default CFLAGS), and gcc could no longer prove the stores
  // contiguous; that costs 20%.
#pragma omp simd
  for (int64_t t = 0; t < nq; ++t) {
    // 32-bit counter words with an explicit carry: nq < 2**32, so the low
    // word wraps at most once inside a chunk.
    const uint32_t lo = lo0 + uint32_t(t);
    const uint32_t hi = hi0 + uint32_t(lo < lo0);
    float n0, n1, n2, n3;
    stream::normals4(lo, hi, k0, k1, n0, n1, n2, n3);
    if constexpr (kAssign) {
      acc[4 * t + 0] = coef * n0;
      acc[4 * t + 1] = coef * n1;
      acc[4 * t + 2] = coef * n2;
      acc[4 * t + 3] = coef * n3;
      if constexpr (kBase) {
        acc_b[4 * t + 0] = coef_b * n0;
        acc_b[4 * t + 1] = coef_b * n1;
        acc_b[4 * t + 2] = coef_b * n2;
        acc_b[4 * t + 3] = coef_b * n3;
      }
    } else {
      acc[4 * t + 0] += coef * n0;
      acc[4 * t + 1] += coef * n1;
      acc[4 * t + 2] += coef * n2;
      acc[4 * t + 3] += coef * n3;
      if constexpr (kBase) {
        acc_b[4 * t + 0] += coef_b * n0;
        acc_b[4 * t + 1] += coef_b * n1;
        acc_b[4 * t + 2] += coef_b * n2;
        acc_b[4 * t + 3] += coef_b * n3;
      }
    }
  }
}

// acc = sum_k coefs[k] * u(seeds[k]) over the chunk's counters, in float32
// and in k order (the first stream assigns, so acc needs no zeroing); with
// kBase also acc_b = sum_k base[k] * u(seeds[k]), rounded the same way.
template <bool kBase>
void chunk_direction_sum(float* acc, float* acc_b, const Directions& dirs, const Chunk& ch) {
  const float b0 = kBase ? dirs.base[0] : 0.0f;
  accumulate_stream<true, kBase>(acc, dirs.seeds[0], dirs.coefs[0], ch.q0, ch.nq, acc_b, b0);
  for (int64_t k = 1; k < dirs.k; ++k) {
    const float bk = kBase ? dirs.base[k] : 0.0f;
    accumulate_stream<false, kBase>(acc, dirs.seeds[k], dirs.coefs[k], ch.q0, ch.nq, acc_b, bk);
  }
}

// d * |scale| ** kPow for kPow in {0 (no scale), 1, 2}.
template <int kPow>
inline float apply_scale(float d, const float* scale, int64_t i) {
  if constexpr (kPow == 1) return d * std::fabs(scale[i]);
  if constexpr (kPow == 2) return d * (scale[i] * scale[i]);
  return d;
}

// keep ? a : b for keep in {0, 1}, selected on the bits with an integer mask.
inline float select_bits(uint8_t keep, float a, float b) {
  const uint32_t m = 0u - uint32_t(keep);  // all ones iff keep
  return stream::bits_float((stream::float_bits(a) & m) | (stream::float_bits(b) & ~m));
}

// Calls f(has_mask, scale_power, has_base) with all three as compile-time
// constants, so the hot loops carry no per-element branches on the optional
// arguments.
template <class F>
void dispatch_variant(const Directions& dirs, F&& f) {
  const int pow = dirs.scale == nullptr ? 0 : dirs.scale_power;
  auto with_base = [&](auto has_mask, auto pow_c) {
    if (dirs.base != nullptr)
      f(has_mask, pow_c, std::true_type{});
    else
      f(has_mask, pow_c, std::false_type{});
  };
  auto with_mask = [&](auto has_mask) {
    switch (pow) {
      case 0: with_base(has_mask, std::integral_constant<int, 0>{}); break;
      case 1: with_base(has_mask, std::integral_constant<int, 1>{}); break;
      default: with_base(has_mask, std::integral_constant<int, 2>{}); break;
    }
  };
  if (dirs.mask != nullptr)
    with_mask(std::true_type{});
  else
    with_mask(std::false_type{});
}

// Runs body(chunk, acc, acc_b) for every chunk, chunks spread over the OpenMP
// team. The accumulators live on each thread's stack: no allocation per call.
template <class Body>
void for_each_chunk(const Layout& layout, Body&& body) {
  const int64_t n_chunks = layout.n_chunks();
#pragma omp parallel for schedule(static) if (n_chunks > 1)
  for (int64_t c = 0; c < n_chunks; ++c) {
    alignas(64) float acc[kChunkElems];
    alignas(64) float acc_b[kChunkElems];
    body(layout.chunk(c), acc, acc_b);
  }
}

}  // namespace

void fill_gaussian(float* out, int64_t n, int64_t seed, int64_t offset) {
  const Layout layout(n, offset);
  for_each_chunk(layout, [&](const Chunk& ch, float* acc, float*) {
    // 1.0f * normal is exact, so this is the stream itself. Chunks that
    // cover whole counters inside [0, n) (all but the first and last) are
    // generated in place; the others go through acc and are clipped.
    const int64_t len = ch.end - ch.begin;
    if (ch.acc_first == 0 && len == 4 * int64_t(ch.nq)) {
      accumulate_stream<true>(out + ch.begin, seed, 1.0f, ch.q0, ch.nq);
    } else {
      accumulate_stream<true>(acc, seed, 1.0f, ch.q0, ch.nq);
      std::copy(acc + ch.acc_first, acc + ch.acc_first + len, out + ch.begin);
    }
  });
}

void add_directions(float* theta, const Directions& dirs) {
  const Layout layout(dirs.n, dirs.offset);
  dispatch_variant(dirs, [&](auto has_mask, auto pow, auto has_base) {
    constexpr bool kMask = decltype(has_mask)::value;
    constexpr int kPow = decltype(pow)::value;
    constexpr bool kBase = decltype(has_base)::value;
    const uint8_t* mask = dirs.mask;
    const float* scale = dirs.scale;
    for_each_chunk(layout, [&](const Chunk& ch, float* acc, float* acc_b) {
      chunk_direction_sum<kBase>(acc, acc_b, dirs, ch);
      const float* a = acc + ch.acc_first;
      const float* b = acc_b + ch.acc_first;
      const int64_t begin = ch.begin;
      const int64_t len = ch.end - ch.begin;
#pragma omp simd
      for (int64_t t = 0; t < len; ++t) {
        const int64_t i = begin + t;
        const float old = theta[i];
        float from = old;
        if constexpr (kBase) from = old - apply_scale<kPow>(b[t], scale, i);
        const float updated = from + apply_scale<kPow>(a[t], scale, i);
        if constexpr (kMask) {
          // A select, not a multiply by 0: masked-out entries keep their
          // bits even where d is not finite or old is -0. On the bits
          // because a float select stays a branch without AVX-512.
          theta[i] = select_bits(mask[i], updated, old);
        } else {
          theta[i] = updated;
        }
      }
    });
  });
}

double directions_sq_norm(const Directions& dirs) {
  const Layout layout(dirs.n, dirs.offset);
  std::vector<double> partial(size_t(layout.n_chunks()));
  dispatch_variant(dirs, [&](auto has_mask, auto pow, auto) {
    constexpr bool kMask = decltype(has_mask)::value;
    constexpr int kPow = decltype(pow)::value;
    const uint8_t* mask = dirs.mask;
    const float* scale = dirs.scale;
    for_each_chunk(layout, [&](const Chunk& ch, float* acc, float* acc_b) {
      chunk_direction_sum<false>(acc, acc_b, dirs, ch);
      float* __restrict a = acc + ch.acc_first;
      const int64_t begin = ch.begin;
      const int64_t len = ch.end - ch.begin;
      // d in place, then a plain float array to square and sum: keeping the
      // mask and scale loads out of the reduction lets both loops vectorise.
#pragma omp simd
      for (int64_t t = 0; t < len; ++t) {
        const int64_t i = begin + t;
        const float d = apply_scale<kPow>(a[t], scale, i);
        // Masked-out entries contribute exactly 0, as in add_directions_
        // where they are not touched.
        a[t] = kMask ? select_bits(mask[i], d, 0.0f) : d;
      }
      // Eight explicit lanes rather than an `omp simd reduction`: that lets
      // the vectoriser peel a data-dependent number of iterations to align a
      // pointer, so the rounding would depend on buffer addresses. Without
      // the pragma (and without -ffast-math) gcc may only vectorise in ways
      // that keep this exact order, which the chunk alone fixes.
      constexpr int kLanes = 8;
      double lane[kLanes] = {0.0};
      int64_t t = 0;
      for (; t + kLanes <= len; t += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
          const double d = a[t + l];
          lane[l] += d * d;
        }
      }
      for (int l = 0; t < len; ++t, ++l) {
        const double d = a[t];
        lane[l] += d * d;
      }
      double s = 0.0;
      for (int l = 0; l < kLanes; ++l) s += lane[l];
      partial[size_t(ch.index)] = s;
    });
  });
  double total = 0.0;
  for (double p : partial) total += p;  // fixed order: chunk index
  return total;
}

}  // namespace zosam
