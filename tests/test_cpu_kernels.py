"""The C++ CPU kernels (zosam_kernels._C) against zosam_kernels/ops/reference.py.

Never compared with their own output, except where the property under test is
self-consistency (thread count, buffer alignment). Inputs are fresh random
tensors from fixed generator seeds, so a failure reproduces.
"""
import math

import numpy as np
import pytest
import torch

import zosam_kernels.ops as ops
from zosam_kernels.ops import reference

pytestmark = pytest.mark.skipif(
    not ops.HAS_CPU_EXTENSION,
    reason="zosam_kernels._C (the C++ CPU extension) is not built: CPU ops run on "
           "the numpy reference, so there are no C++ kernels to test. Reinstall with "
           "`pip install -e . --no-build-isolation` and a working C++ compiler.")

U32 = 0xFFFFFFFF
SEEDS = [0, 1, 2**40 + 7, 2**63 - 1]
# 2**32 - 3 crosses 2**32 elements; 2**34 - 5 crosses counter 2**32, i.e. the
# counter's high word changes inside the range.
OFFSETS = [0, 1, 2, 3, 2**32 - 3, 2**34 - 5]
SIZES = [1, 3, 4, 5, 4097, 100003]
# The contract (docs/DESIGN.md, The direction stream): normals agree with the reference within 1e-5.
NORMAL_ATOL = 1e-5


def key_arg(k0, k1):
    """The int64 `key` of _philox4x32: k0 in the low word, k1 in the high word."""
    k = (k1 << 32) | k0
    return k - 2**64 if k >= 2**63 else k


def philox_cpp(counters, k0, k1):
    c = torch.as_tensor(np.asarray(counters, dtype=np.int64).reshape(-1, 4))
    return torch.ops.zosam._philox4x32(c, key_arg(k0, k1)).numpy()


def philox_ref(counters, k0, k1):
    c = np.asarray(counters, dtype=np.uint64).reshape(-1, 4)
    return np.stack(reference.philox4x32(c.T, (k0, k1)), axis=1).astype(np.int64)


# --------------------------------------------------------------------------
# Philox and the uniforms: bit-exact


# Random123's known-answer vectors for philox4x32-10 (kat_vectors).
@pytest.mark.parametrize("ctr, key, expected", [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((U32,) * 4, (U32, U32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(ctr, key, expected):
    assert philox_cpp([ctr], *key)[0].tolist() == list(expected)
    # The reference too, so both sides of every other comparison are anchored.
    assert philox_ref([ctr], *key)[0].tolist() == list(expected)


def test_philox_random_counters_and_keys():
    rng = np.random.default_rng(1234)
    counters = rng.integers(0, 2**32, size=(2000, 4), dtype=np.uint64)
    for k0, k1 in [(0, 0), (U32, U32), *rng.integers(0, 2**32, size=(6, 2)).tolist()]:
        np.testing.assert_array_equal(philox_cpp(counters, k0, k1), philox_ref(counters, k0, k1))


def test_uniform_bit_exact():
    rng = np.random.default_rng(99)
    edges = np.array([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**31 + 1, 2**31 - 2], dtype=np.uint64)
    x = np.concatenate([edges, rng.integers(0, 2**32, size=100000, dtype=np.uint64)])
    got = torch.ops.zosam._uniform(torch.from_numpy(x.astype(np.int64))).numpy()
    want = reference.uint32_to_uniform(x.astype(np.uint32))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert got.min() >= 0.0 and got.max() <= 1.0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("offset", OFFSETS)
def test_stream_counters_match_philox(seed, offset):
    # The integers behind elements [offset, offset + 9) of the stream: the
    # counters (q_lo, q_hi, 0, 0) and key (seed_lo, seed_hi) the kernels use.
    ints, _ = reference.stream_counters(seed, 9, offset)
    q = np.arange(offset // 4, offset // 4 + len(ints), dtype=np.uint64)
    counters = np.stack([q & U32, q >> 32, 0 * q, 0 * q], axis=1)
    np.testing.assert_array_equal(philox_cpp(counters, seed & U32, seed >> 32),
                                  ints.astype(np.int64))


# --------------------------------------------------------------------------
# The normals


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("numel", SIZES)
def test_gaussian_matches_reference(numel, offset):
    for seed in SEEDS:
        got = ops.gaussian(seed, numel, offset).numpy()
        want = reference.stream(seed, numel, offset)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=NORMAL_ATOL,
                                   err_msg=f"seed={seed} offset={offset} numel={numel}")


def test_gaussian_at_end_of_stream():
    # offset + numel == 2**63: the last counters of the stream, where
    # 4 * (last counter + 1) no longer fits an int64.
    for numel in (1, 5, 6):
        offset = 2**63 - numel
        np.testing.assert_allclose(ops.gaussian(3, numel, offset).numpy(),
                                   reference.stream(3, numel, offset), rtol=0, atol=NORMAL_ATOL)


@pytest.mark.parametrize("seed, index", [(0, 59535981), (2, 29950261)])
def test_gaussian_u1_clamp(seed, index):
    # Found by search: counters whose first uniform is below 1e-7, the only
    # place where Box-Muller's clamp u1 = max(1e-7, u1) changes the result.
    ints, _ = reference.stream_counters(seed, 1, index)
    assert reference.uint32_to_uniform(ints[0])[0] < 1e-7
    first = index - index % 4
    got = ops.gaussian(seed, 4, first).numpy()
    np.testing.assert_allclose(got, reference.stream(seed, 4, first), rtol=0, atol=NORMAL_ATOL)
    pair = got[index % 4 // 2 * 2:][:2]  # (r cos, r sin) of the clamped u1
    assert math.hypot(*pair) == pytest.approx(math.sqrt(-2 * math.log(1e-7)), rel=1e-5)


def test_gaussian_statistics():
    x = ops.gaussian(2024, 10**6).double()
    assert abs(x.mean().item()) < 5e-3           # sd of the mean: 1e-3
    assert abs(x.std().item() - 1.0) < 5e-3      # sd of the sd: ~7e-4
    # CDF at a few points, to catch a wrong transform with the right moments
    # (sd of an empirical CDF value <= 5e-4).
    for z in (-2.0, -1.0, 0.0, 0.5, 1.5):
        phi = 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
        assert abs((x <= z).double().mean().item() - phi) < 3e-3, z
    # Box-Muller with u1 >= 1e-7 bounds |x| by sqrt(-2 ln 1e-7) ~ 5.68.
    assert x.abs().max().item() <= 5.7


def test_fill_gaussian_poisoned_view():
    n, offset, seed = 4097, 5, 77
    big = torch.full((n + 2,), float("nan"))
    torch.ops.zosam.fill_gaussian_(big[1:1 + n], seed, offset)
    assert torch.isnan(big[0]) and torch.isnan(big[-1])  # outside the view: untouched
    assert not torch.isnan(big[1:1 + n]).any()           # inside: all written
    np.testing.assert_allclose(big[1:1 + n].numpy(), reference.stream(seed, n, offset),
                               rtol=0, atol=NORMAL_ATOL)


# --------------------------------------------------------------------------
# The fused ops

K_VALUES = [1, 2, 5, 16]
OP_SIZES = [1, 3, 4097]
OP_OFFSETS = [0, 1, 2**32 - 3]
SCALES = [None, 1, 2]  # None: no scale; else scale_power


def make_inputs(k, n, with_mask, scale_power, salt):
    g = torch.Generator().manual_seed(1000003 * k + 1009 * n + 7 * salt + int(with_mask))
    seeds = torch.randint(0, 2**62, (k,), generator=g, dtype=torch.int64)
    seeds[0] = 2**63 - 1 if k > 1 else seeds[0]  # the largest seed now and then
    coefs = torch.randn(k, generator=g)
    mask = (torch.rand(n, generator=g) < 0.6) if with_mask else None
    scale = torch.randn(n, generator=g) if scale_power is not None else None
    return seeds, coefs, mask, scale, (scale_power or 1)


def element_atol(coefs, scale, scale_power):
    """Absolute tolerance on d = (sum_k c_k u_k) * mask * |scale|**p.

    Each u_k is within NORMAL_ATOL of the reference (the contract), so the
    exact sum is within NORMAL_ATOL * sum|c_k|. The float32 evaluation adds at
    most (K + 3) roundings of size 2**-24 * |partial sum| <= 2**-24 * 5.7 * sum|c_k|
    (|u| <= 5.7): below 6.4e-6 * sum|c_k| for K = 16. Hence 2e-5 * sum|c_k|,
    times the largest |scale|**p, plus 1e-6 for theta's own float32 rounding
    (|theta| < 6 here, half an ulp < 3e-7)."""
    s = 1.0 if scale is None else scale.abs().max().item() ** scale_power
    return 2 * NORMAL_ATOL * coefs.abs().sum().item() * s + 1e-6


@pytest.mark.parametrize("scale_power", SCALES)
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("offset", OP_OFFSETS)
@pytest.mark.parametrize("n", OP_SIZES)
@pytest.mark.parametrize("k", K_VALUES)
def test_add_directions(k, n, offset, with_mask, scale_power):
    seeds, coefs, mask, scale, power = make_inputs(k, n, with_mask, scale_power, salt=1)
    theta0 = torch.randn(n, generator=torch.Generator().manual_seed(n + k))
    theta0[0] = -0.0  # a signed zero, so "unchanged" means unchanged bits
    want = reference.add_directions(theta0, seeds, coefs, mask, scale, power, offset)

    # theta is a view into a NaN-poisoned buffer: nothing outside may change.
    big = torch.full((n + 2,), float("nan"))
    big[1:1 + n] = theta0
    theta = big[1:1 + n]
    out = ops.add_directions_(theta, seeds, coefs, mask, scale, power, offset)

    assert out is theta
    assert torch.isnan(big[0]) and torch.isnan(big[-1])
    torch.testing.assert_close(theta, want, rtol=1e-6, atol=element_atol(coefs, scale, power),
                               equal_nan=False)
    if mask is not None:
        off = ~mask
        assert torch.equal(theta[off].view(torch.int32), theta0[off].view(torch.int32))


@pytest.mark.parametrize("scale_power", SCALES)
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("offset", OP_OFFSETS)
@pytest.mark.parametrize("n", OP_SIZES)
@pytest.mark.parametrize("k", [1, 3])
def test_add_directions_with_base_takes_back_the_move_that_applied_it(k, n, offset, with_mask,
                                                                     scale_power):
    """theta = (theta - b) + d: b is the very float32 d that a move with coefs = base
    added, and each operation rounds to float32, so a move from a to b equals
    float32 ((theta0 + d_a) - d_a) + d_b bit for bit."""
    seeds, a, mask, scale, power = make_inputs(k, n, with_mask, scale_power, salt=3)
    g = torch.Generator().manual_seed(7919 * n + k)
    b = torch.randn(k, generator=g)
    theta0 = torch.randn(n, generator=g)

    def d_of(coefs):   # the kernel's own float32 d, unmasked: 0 + d is exact
        return ops.add_directions_(torch.zeros(n), seeds, coefs, None, scale, power, offset)

    theta = theta0.clone()
    ops.add_directions_(theta, seeds, a, mask, scale, power, offset)
    ops.add_directions_(theta, seeds, b, mask, scale, power, offset, base=a)
    d_a, d_b = d_of(a), d_of(b)
    want = (theta0 + d_a) - d_a + d_b
    if mask is not None:
        want = torch.where(mask, want, theta0)
    assert torch.equal(theta.view(torch.int32), want.view(torch.int32))
    moved = reference.add_directions(theta0, seeds, a, mask, scale, power, offset)
    ref = reference.add_directions(moved, seeds, b, mask, scale, power, offset, base=a)
    atol = element_atol(a.abs() + b.abs(), scale, power) * 2
    torch.testing.assert_close(theta, ref, rtol=1e-6, atol=atol)


@pytest.mark.parametrize("scale_power", SCALES)
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("offset", OP_OFFSETS)
@pytest.mark.parametrize("n", OP_SIZES)
@pytest.mark.parametrize("k", K_VALUES)
def test_directions_sq_norm(k, n, offset, with_mask, scale_power):
    seeds, coefs, mask, scale, power = make_inputs(k, n, with_mask, scale_power, salt=2)
    got = ops.directions_sq_norm(seeds, coefs, n, mask, scale, power, offset)
    want = reference.directions_sq_norm(seeds, coefs, n, mask, scale, power, offset).item()
    assert got.dtype == torch.float32 and got.dim() == 0
    # With |d_i - d_ref_i| <= e (element_atol), |sum d^2 - sum d_ref^2|
    # <= 2 e sum|d_ref_i| + n e^2 <= 2 e sqrt(n S) + n e^2 (Cauchy-Schwarz),
    # plus the float32 rounding of the double result.
    e = element_atol(coefs, scale, power)
    tol = 2 * e * math.sqrt(n * want) + n * e * e + 1e-6 * want
    assert abs(got.item() - want) <= tol, (got.item(), want, tol)


def test_empty():
    seeds, coefs = torch.tensor([5]), torch.tensor([1.0])
    theta = torch.empty(0)
    ops.add_directions_(theta, seeds, coefs)
    assert ops.directions_sq_norm(seeds, coefs, 0).item() == 0.0
    assert ops.gaussian(5, 0).numel() == 0


def test_many_seeds():
    # K well beyond the sizes above, and repeated seeds (which must add up).
    n, k = 1000, 40
    seeds = torch.arange(k, dtype=torch.int64) % 17
    coefs = torch.linspace(-1, 1, k)
    theta = torch.zeros(n)
    ops.add_directions_(theta, seeds, coefs, offset=3)
    want = reference.add_directions(torch.zeros(n), seeds, coefs, offset=3)
    torch.testing.assert_close(theta, want, rtol=1e-6, atol=element_atol(coefs, None, 1))


# --------------------------------------------------------------------------
# Determinism


def test_sq_norm_independent_of_thread_count_and_alignment():
    n = 3 * 4096 * 40 + 3  # many chunks, a ragged end
    seeds, coefs, mask, scale, power = make_inputs(3, n, True, 2, salt=3)
    prev = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(ops.directions_sq_norm(seeds, coefs, n, mask, scale, power, 1))
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(results[0].view(torch.int32), results[1].view(torch.int32))
    # Misaligned copies of the inputs: the summation order must not change.
    mask_big = torch.zeros(n + 1, dtype=torch.bool)
    mask_big[1:] = mask
    scale_big = torch.zeros(n + 3)
    scale_big[3:] = scale
    shifted = ops.directions_sq_norm(seeds, coefs, n, mask_big[1:], scale_big[3:], power, 1)
    assert torch.equal(results[0].view(torch.int32), shifted.view(torch.int32))


def test_add_directions_independent_of_thread_count():
    n = 4096 * 9 + 1
    seeds, coefs, mask, scale, power = make_inputs(2, n, True, 1, salt=4)
    prev = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            theta = torch.ones(n)
            ops.add_directions_(theta, seeds, coefs, mask, scale, power, 2)
            outs.append(theta)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(outs[0].view(torch.int32), outs[1].view(torch.int32))


# --------------------------------------------------------------------------
# Registration and argument checks of the C++ ops


def test_opcheck():
    seeds, coefs = torch.tensor([3, 2**40], dtype=torch.int64), torch.tensor([0.5, -1.25])
    mask = torch.rand(37, generator=torch.Generator().manual_seed(0)) < 0.5
    scale = torch.randn(37, generator=torch.Generator().manual_seed(1))
    torch.library.opcheck(torch.ops.zosam.fill_gaussian_.default, (torch.empty(37), 11, 3))
    torch.library.opcheck(torch.ops.zosam.add_directions_.default,
                          (torch.randn(37), seeds, coefs, mask, scale, 2, 5))
    torch.library.opcheck(torch.ops.zosam.add_directions_.default, (torch.randn(37), seeds, coefs))
    torch.library.opcheck(torch.ops.zosam.directions_sq_norm.default,
                          (seeds, coefs, 37, mask, scale, 1, 5))
    torch.library.opcheck(torch.ops.zosam.directions_sq_norm.default, (seeds, coefs, 37))


@pytest.mark.parametrize("call, match", [
    (lambda: torch.ops.zosam.fill_gaussian_(torch.empty(4), -1, 0), "non-negative"),
    (lambda: torch.ops.zosam.fill_gaussian_(torch.empty(4), 1, -1), "offset"),
    (lambda: torch.ops.zosam.fill_gaussian_(torch.empty(4), 1, 2**63 - 2), "2\\*\\*63"),
    (lambda: torch.ops.zosam.fill_gaussian_(torch.empty(4, dtype=torch.float64), 1, 0), "float32"),
    (lambda: torch.ops.zosam.fill_gaussian_(torch.empty(4, 2).t(), 1, 0), "contiguous"),
    (lambda: torch.ops.zosam.add_directions_(torch.empty(8)[::2], torch.tensor([1]),
                                             torch.tensor([1.0])), "contiguous"),
    (lambda: torch.ops.zosam.add_directions_(torch.empty(4), torch.tensor([-1]),
                                             torch.tensor([1.0])), "non-negative"),
    (lambda: torch.ops.zosam.add_directions_(torch.empty(4), torch.tensor([1, 2]),
                                             torch.tensor([1.0])), "same non-zero length"),
    (lambda: torch.ops.zosam.add_directions_(torch.empty(4), torch.tensor([1]),
                                             torch.tensor([1.0]), torch.ones(3, dtype=torch.bool)),
     "mask"),
    (lambda: torch.ops.zosam.directions_sq_norm(torch.tensor([1]), torch.tensor([1.0]), 4, None,
                                                torch.ones(4), 3), "scale_power"),
    (lambda: torch.ops.zosam.directions_sq_norm(torch.tensor([1]), torch.tensor([1.0]), -1),
     "numel"),
])
def test_cpp_argument_checks(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()
