// CPU implementations of the torch.ops.zosam.* schemas defined in
// zosam_kernels/ops/library.py, plus two test hooks that expose the raw
// stream primitives so the tests can check them bit for bit.
//
// The public Python wrappers already validate their arguments; the checks
// here repeat the ones that guard memory safety, because torch.ops.zosam.*
// can be called directly (and is, by opcheck).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "directions.h"
#include "philox.h"

namespace zosam {
namespace {

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "zosam: ", name, " must be a CPU tensor, got ", t.device());
}

void check_stream_range(int64_t offset, int64_t n) {
  TORCH_CHECK(offset >= 0, "zosam: offset must be non-negative, got ", offset);
  // offset + n <= 2**63, written so that it cannot overflow.
  TORCH_CHECK(uint64_t(offset) + uint64_t(n) <= (uint64_t(1) << 63),
              "zosam: offset + numel must be at most 2**63, got offset ", offset);
}

void check_seed(int64_t seed) {
  TORCH_CHECK(seed >= 0, "zosam: seeds must be non-negative 63-bit ints, got ", seed);
}

// Host copies of the K seeds and coefficients: the kernels read them from
// every thread and chunk, and K is small.
struct SeedsCoefs {
  std::vector<int64_t> seeds;
  std::vector<float> coefs;
};

SeedsCoefs read_seeds_coefs(const at::Tensor& seeds, const at::Tensor& coefs) {
  check_cpu(seeds, "seeds");
  check_cpu(coefs, "coefs");
  TORCH_CHECK(seeds.scalar_type() == at::kLong && seeds.dim() == 1,
              "zosam: seeds must be a 1-D int64 tensor");
  TORCH_CHECK(coefs.scalar_type() == at::kFloat && coefs.dim() == 1,
              "zosam: coefs must be a 1-D float32 tensor");
  TORCH_CHECK(seeds.numel() == coefs.numel() && seeds.numel() > 0,
              "zosam: seeds and coefs must have the same non-zero length, got ",
              seeds.numel(), " and ", coefs.numel());
  const at::Tensor s = seeds.contiguous();
  const at::Tensor c = coefs.contiguous();
  SeedsCoefs out{{s.data_ptr<int64_t>(), s.data_ptr<int64_t>() + s.numel()},
                 {c.data_ptr<float>(), c.data_ptr<float>() + c.numel()}};
  for (int64_t seed : out.seeds) check_seed(seed);
  return out;
}

// Fills the per-element part of Directions (mask, scale) after checking it.
Directions make_directions(const SeedsCoefs& sc, int64_t n,
                           const std::optional<at::Tensor>& mask,
                           const std::optional<at::Tensor>& scale,
                           int64_t scale_power, int64_t offset) {
  check_stream_range(offset, n);
  Directions d{sc.seeds.data(), sc.coefs.data(), nullptr, int64_t(sc.seeds.size()),
               nullptr, nullptr, 1, offset, n};
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    check_cpu(m, "mask");
    TORCH_CHECK(m.scalar_type() == at::kBool, "zosam: mask must be a bool tensor");
    TORCH_CHECK(m.numel() == n && m.is_contiguous(),
                "zosam: mask must be contiguous with ", n, " elements, got ", m.numel());
    // bool storage is one byte holding 0 or 1.
    d.mask = reinterpret_cast<const uint8_t*>(m.data_ptr<bool>());
  }
  if (scale.has_value()) {
    const at::Tensor& s = *scale;
    check_cpu(s, "scale");
    TORCH_CHECK(s.scalar_type() == at::kFloat, "zosam: scale must be a float32 tensor");
    TORCH_CHECK(s.numel() == n && s.is_contiguous(),
                "zosam: scale must be contiguous with ", n, " elements, got ", s.numel());
    TORCH_CHECK(scale_power == 1 || scale_power == 2,
                "zosam: scale_power must be 1 or 2, got ", scale_power);
    d.scale = s.data_ptr<float>();
    d.scale_power = int(scale_power);
  }
  return d;
}

void check_float_buffer(const at::Tensor& t, const char* name) {
  check_cpu(t, name);
  TORCH_CHECK(t.scalar_type() == at::kFloat, "zosam: ", name, " must be float32, got ",
              t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "zosam: ", name, " must be contiguous");
}

void fill_gaussian_cpu(const at::Tensor& out, int64_t seed, int64_t offset) {
  check_float_buffer(out, "out");
  check_seed(seed);
  check_stream_range(offset, out.numel());
  fill_gaussian(out.data_ptr<float>(), out.numel(), seed, offset);
}

void add_directions_cpu(const at::Tensor& theta, const at::Tensor& seeds,
                        const at::Tensor& coefs, const std::optional<at::Tensor>& mask,
                        const std::optional<at::Tensor>& scale, int64_t scale_power,
                        int64_t offset, const std::optional<at::Tensor>& base) {
  check_float_buffer(theta, "theta");
  const SeedsCoefs sc = read_seeds_coefs(seeds, coefs);
  Directions d = make_directions(sc, theta.numel(), mask, scale, scale_power, offset);
  std::vector<float> base_coefs;
  if (base.has_value()) {
    const at::Tensor& b = *base;
    check_cpu(b, "base");
    TORCH_CHECK(b.scalar_type() == at::kFloat && b.dim() == 1 && b.numel() == coefs.numel(),
                "zosam: base must be a 1-D float32 tensor of coefs' length");
    const at::Tensor bc = b.contiguous();
    base_coefs.assign(bc.data_ptr<float>(), bc.data_ptr<float>() + bc.numel());
    d.base = base_coefs.data();
  }
  add_directions(theta.data_ptr<float>(), d);
}

at::Tensor directions_sq_norm_cpu(const at::Tensor& seeds, const at::Tensor& coefs,
                                  int64_t numel, const std::optional<at::Tensor>& mask,
                                  const std::optional<at::Tensor>& scale, int64_t scale_power,
                                  int64_t offset) {
  TORCH_CHECK(numel >= 0, "zosam: numel must be non-negative, got ", numel);
  const SeedsCoefs sc = read_seeds_coefs(seeds, coefs);
  const Directions d = make_directions(sc, numel, mask, scale, scale_power, offset);
  const double total = directions_sq_norm(d);
  return at::scalar_tensor(static_cast<float>(total), coefs.options());
}

// Test hook: Philox4x32-10 on rows of counters. counters: int64 [N, 4]
// holding uint32 words; key: int64 whose low/high words are k0/k1 (so -1 is
// k0 = k1 = 0xffffffff). Returns int64 [N, 4] of the output words.
at::Tensor philox4x32_cpu(const at::Tensor& counters, int64_t key) {
  check_cpu(counters, "counters");
  TORCH_CHECK(counters.scalar_type() == at::kLong && counters.dim() == 2 &&
                  counters.size(1) == 4,
              "zosam: counters must be an int64 tensor of shape [N, 4]");
  const at::Tensor c = counters.contiguous();
  at::Tensor out = at::empty_like(c);
  const int64_t* in = c.data_ptr<int64_t>();
  int64_t* res = out.data_ptr<int64_t>();
  uint32_t k0, k1;
  stream::seed_key(uint64_t(key), k0, k1);
  for (int64_t row = 0; row < c.size(0); ++row) {
    uint32_t w[4];
    for (int i = 0; i < 4; ++i) w[i] = uint32_t(in[4 * row + i]);
    stream::philox4x32_10(w[0], w[1], w[2], w[3], k0, k1);
    for (int i = 0; i < 4; ++i) res[4 * row + i] = int64_t(w[i]);
  }
  return out;
}

// Test hook: uint32 words (held in int64) -> float32 uniforms, same shape.
at::Tensor uniform_cpu(const at::Tensor& x) {
  check_cpu(x, "x");
  TORCH_CHECK(x.scalar_type() == at::kLong, "zosam: x must be an int64 tensor");
  const at::Tensor c = x.contiguous();
  at::Tensor out = at::empty(c.sizes(), c.options().dtype(at::kFloat));
  const int64_t* in = c.data_ptr<int64_t>();
  float* res = out.data_ptr<float>();
  for (int64_t i = 0; i < c.numel(); ++i) res[i] = stream::uint32_to_uniform(uint32_t(in[i]));
  return out;
}

}  // namespace

// The three op schemas are defined from Python (library.py) so that the
// reference fallback can register without this extension; only the test
// hooks are defined here.
TORCH_LIBRARY_FRAGMENT(zosam, m) {
  m.def("_philox4x32(Tensor counters, int key) -> Tensor");
  m.def("_uniform(Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(zosam, CPU, m) {
  m.impl("fill_gaussian_", &fill_gaussian_cpu);
  m.impl("add_directions_", &add_directions_cpu);
  m.impl("directions_sq_norm", &directions_sq_norm_cpu);
  m.impl("_philox4x32", &philox4x32_cpu);
  m.impl("_uniform", &uniform_cpu);
}

}  // namespace zosam
