"""The Triton kernels against ops/reference.py and against Triton's own Philox.

Without CUDA they run on CPU through the interpreter (conftest.py sets
TRITON_INTERPRET=1), so sizes stay small; on a GPU the same tests run compiled.
"""
import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from zosam_kernels.ops import reference
from zosam_kernels.ops.triton_kernels import add_directions_, directions_sq_norm, fill_gaussian_

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZES = [1, 3, 4, 5, 4097]
OFFSETS = [0, 1, 3, 2**32 - 3, 2**34 - 5]
SEEDS = [0, 1, 2**40 + 7, 2**63 - 1]
# (numel, odd offset) pairs for the fused ops; the last straddles programs and
# has a counter high word of 3.
OP_CASES = [(1, 1), (3, 2**32 - 3), (4097, 2**34 - 5)]
LAUNCH = dict(enable_fp_fusion=False)  # as the kernels under test


# --- test-only kernels: Triton's generator itself, laid out trivially --------

@triton.jit
def _randn4x_rows_kernel(out_ptr, seed, q0, NQ, BLOCK: tl.constexpr):
    """out[r, k] = normal r of tl.randn4x(seed, q0 + k), an int64 counter."""
    k = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = k < NQ
    n0, n1, n2, n3 = tl.randn4x(seed, k + q0)
    tl.store(out_ptr + k, n0, mask=live)
    tl.store(out_ptr + NQ + k, n1, mask=live)
    tl.store(out_ptr + 2 * NQ + k, n2, mask=live)
    tl.store(out_ptr + 3 * NQ + k, n3, mask=live)


@triton.jit
def _randint4x_rows_kernel(out_ptr, seed, q0, NQ, BLOCK: tl.constexpr):
    """out[r, k] = word r of tl.randint4x(seed, q0 + k), as int32 bits."""
    k = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = k < NQ
    i0, i1, i2, i3 = tl.randint4x(seed, k + q0)
    tl.store(out_ptr + k, i0.to(tl.int32, bitcast=True), mask=live)
    tl.store(out_ptr + NQ + k, i1.to(tl.int32, bitcast=True), mask=live)
    tl.store(out_ptr + 2 * NQ + k, i2.to(tl.int32, bitcast=True), mask=live)
    tl.store(out_ptr + 3 * NQ + k, i3.to(tl.int32, bitcast=True), mask=live)


@triton.jit
def _word(ptr, row, j, live):
    return tl.load(ptr + 6 * row + j, mask=live, other=0).to(tl.uint32, bitcast=True)


@triton.jit
def _philox_kernel(in_ptr, out_ptr, N, BLOCK: tl.constexpr):
    """in rows (c0, c1, c2, c3, k0, k1) -> out rows of tl.philox_impl, 10 rounds."""
    row = tl.arange(0, BLOCK)
    live = row < N
    x0, x1, x2, x3 = tl.philox_impl(_word(in_ptr, row, 0, live), _word(in_ptr, row, 1, live),
                                    _word(in_ptr, row, 2, live), _word(in_ptr, row, 3, live),
                                    _word(in_ptr, row, 4, live), _word(in_ptr, row, 5, live))
    tl.store(out_ptr + 4 * row, x0.to(tl.int32, bitcast=True), mask=live)
    tl.store(out_ptr + 4 * row + 1, x1.to(tl.int32, bitcast=True), mask=live)
    tl.store(out_ptr + 4 * row + 2, x2.to(tl.int32, bitcast=True), mask=live)
    tl.store(out_ptr + 4 * row + 3, x3.to(tl.int32, bitcast=True), mask=live)


def _triton_rows(kernel, dtype, seed, q0, nq):
    out = torch.empty(4, nq, dtype=dtype, device=DEVICE)
    kernel[(triton.cdiv(nq, 128),)](out, seed, q0, nq, BLOCK=128, **LAUNCH)
    return out.T.cpu()  # (nq, 4): row = counter, column = word / normal


def _as_u32(t):
    return t.contiguous().numpy().view(np.uint32)


# --- the integers ------------------------------------------------------------

# Random123 known-answer vectors for Philox4x32-10: counter (4 words), key (2 words) -> 4 words.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def test_philox_known_answers():
    words = np.array([list(c) + list(k) for c, k, _ in PHILOX_KAT], dtype=np.uint32)
    expected = np.array([x for _, _, x in PHILOX_KAT], dtype=np.uint32)
    inp = torch.from_numpy(words.view(np.int32)).to(DEVICE)
    out = torch.empty(len(PHILOX_KAT), 4, dtype=torch.int32, device=DEVICE)
    _philox_kernel[(1,)](inp, out, len(PHILOX_KAT), BLOCK=4, **LAUNCH)
    np.testing.assert_array_equal(_as_u32(out.cpu()), expected)
    for c, k, x in PHILOX_KAT:
        assert [int(w) for w in reference.philox4x32(c, k)] == list(x)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("offset", [0, 2**34 - 5])
def test_randint4x_matches_reference_integers(seed, offset):
    ints, start = reference.stream_counters(seed, 37, offset)
    got = _triton_rows(_randint4x_rows_kernel, torch.int32, seed, offset // 4, len(ints))
    assert start == offset % 4
    np.testing.assert_array_equal(_as_u32(got), ints)


# --- the stream ----------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 2**40 + 7, 2**63 - 1])
@pytest.mark.parametrize("offset", [0, 3, 2**34 - 5])
@pytest.mark.parametrize("numel", [1, 5, 1030])
def test_fill_gaussian_is_randn4x_interleaved(seed, offset, numel):
    q0, start = divmod(offset, 4)
    nq = (start + numel + 3) // 4
    rows = _triton_rows(_randn4x_rows_kernel, torch.float32, seed, q0, nq)
    expected = rows.reshape(-1)[start:start + numel]  # element j = normal j % 4 of counter j // 4
    out = torch.full((numel,), float("nan"), device=DEVICE)
    fill_gaussian_(out, seed, offset)
    assert torch.equal(out.cpu(), expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("numel", SIZES)
def test_fill_gaussian_matches_reference(seed, offset, numel):
    big = torch.full((numel + 2,), float("nan"), device=DEVICE)
    out = big[1:1 + numel]
    fill_gaussian_(out, seed, offset)
    expected = torch.from_numpy(reference.stream(seed, numel, offset))
    # docs/DESIGN.md, The direction stream: normals agree to float32 rounding, |delta| <= 1e-5.
    assert (out.cpu().double() - expected).abs().max().item() <= 1e-5
    assert big[0].isnan() and big[-1].isnan()


def test_empty_inputs():
    seeds = torch.tensor([5], device=DEVICE)
    coefs = torch.tensor([1.0], device=DEVICE)
    fill_gaussian_(torch.empty(0, device=DEVICE), 3, 7)
    add_directions_(torch.empty(0, device=DEVICE), seeds, coefs, offset=3)
    s = directions_sq_norm(seeds, coefs, 0, offset=3)
    assert s.dim() == 0 and s.dtype == torch.float32 and s.item() == 0.0
    assert s.device.type == torch.device(DEVICE).type


# --- the fused ops ---------------------------------------------------------------

def _op_inputs(numel, K, with_mask, scale_power, case_seed):
    g = torch.Generator().manual_seed(case_seed)
    seeds = torch.randint(0, 2**63 - 1, (K,), generator=g, dtype=torch.int64)
    coefs = torch.randn(K, generator=g)
    mask = torch.rand(numel, generator=g) < 0.5 if with_mask else None
    scale = torch.randn(numel, generator=g) if scale_power else None
    theta = torch.randn(numel, generator=g)
    kw = dict(mask=mask, scale=scale, scale_power=scale_power or 1)
    return theta, seeds, coefs, kw


def _to_device(seeds, coefs, kw):
    kw = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in kw.items()}
    return seeds.to(DEVICE), coefs.to(DEVICE), kw


def _direction_error_bound(numel, coefs, kw):
    """Per-element bound on |d_kernel - d_reference|.

    Each normal is within 1e-5 of the float64 reference (docs/DESIGN.md). The fp32
    sum over K adds 2K roundings of terms |c_k u_k| <= 6 |c_k| (|u| <= 5.7
    because u1 >= 1e-7), at most 2 * 5 * 6 * 6e-8 < 4e-6 per unit of
    sum |c_k| for K <= 5; the scale product adds two more relative roundings.
    2e-5 * sum |c_k| * |scale| ** p covers all of it with margin."""
    bound = torch.full((numel,), 2e-5 * coefs.abs().sum().item(), dtype=torch.float64)
    if kw["scale"] is not None:
        bound = bound * kw["scale"].double().abs() ** kw["scale_power"]
    return bound


@pytest.mark.parametrize("scale_power", [None, 1, 2])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("K", [1, 2, 5])
@pytest.mark.parametrize("numel,offset", OP_CASES)
def test_add_directions_matches_reference(numel, offset, K, with_mask, scale_power):
    case_seed = numel + 7 * K + offset % 97
    theta0, seeds, coefs, kw = _op_inputs(numel, K, with_mask, scale_power, case_seed)
    expected = reference.add_directions(theta0, seeds, coefs, offset=offset, **kw).double()
    big = torch.full((numel + 2,), float("nan"), device=DEVICE)  # poison around theta
    theta = big[1:1 + numel]
    theta.copy_(theta0)
    d_seeds, d_coefs, d_kw = _to_device(seeds, coefs, kw)
    add_directions_(theta, d_seeds, d_coefs, offset=offset, **d_kw)
    got = theta.cpu().double()
    # d's bound, plus one fp32 rounding of theta + d in the kernel and one of
    # the float64 reference result: 2 * 2**-23 relative.
    tol = _direction_error_bound(numel, coefs, kw) + 2.4e-7 * expected.abs()
    assert ((got - expected).abs() <= tol).all()
    assert big[0].isnan() and big[-1].isnan()
    if with_mask:
        off = ~kw["mask"]
        assert torch.equal(theta.cpu()[off], theta0[off])  # exactly unchanged


@pytest.mark.parametrize("scale_power", [None, 2])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("numel,offset", OP_CASES)
def test_add_directions_with_base_takes_back_the_move_that_applied_it(numel, offset, K, with_mask,
                                                                     scale_power):
    """theta = (theta - b) + d with b the very float32 d that a move with coefs =
    base added: a move from a to b equals float32 ((theta0 + d_a) - d_a) + d_b."""
    theta0, seeds, a, kw = _op_inputs(numel, K, with_mask, scale_power, numel + 31 * K)
    b = torch.randn(K, generator=torch.Generator().manual_seed(numel + K))
    d_seeds, d_a, d_kw = _to_device(seeds, a, kw)
    d_b = b.to(DEVICE)
    unmasked = dict(d_kw, mask=None)

    def d_of(coefs):   # the kernel's own float32 d: 0 + d is exact
        out = torch.zeros(numel, device=DEVICE)
        add_directions_(out, d_seeds, coefs, offset=offset, **unmasked)
        return out

    theta = theta0.to(DEVICE, copy=True)
    add_directions_(theta, d_seeds, d_a, offset=offset, **d_kw)
    add_directions_(theta, d_seeds, d_b, offset=offset, base=d_a, **d_kw)
    want = (theta0.to(DEVICE) + d_of(d_a)) - d_of(d_a) + d_of(d_b)
    if with_mask:
        want = torch.where(d_kw["mask"], want, theta0.to(DEVICE))
    assert torch.equal(theta.view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("scale_power", [None, 1, 2])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("K", [1, 2, 5])
@pytest.mark.parametrize("numel,offset", OP_CASES)
def test_directions_sq_norm_matches_reference(numel, offset, K, with_mask, scale_power):
    _, seeds, coefs, kw = _op_inputs(numel, K, with_mask, scale_power, 3 * numel + K + offset % 89)
    d = reference.direction_sum(seeds, coefs, numel, offset=offset, **kw)
    expected = reference.directions_sq_norm(seeds, coefs, numel, offset=offset, **kw).item()
    d_seeds, d_coefs, d_kw = _to_device(seeds, coefs, kw)
    got = directions_sq_norm(d_seeds, d_coefs, numel, offset=offset, **d_kw)
    assert got.dim() == 0 and got.dtype == torch.float32 and got.device == d_coefs.device
    # |d_i' - d_i| <= e_i gives |sum d_i'^2 - sum d_i^2| <= sum (2 |d_i| e_i + e_i^2);
    # the fp32 squares and the two-level tree sum (1024 per program, then the
    # partials) add under 30 roundings of the positive total: 1e-5 relative.
    e = _direction_error_bound(numel, coefs, kw)
    if kw["mask"] is not None:
        e = e * kw["mask"].double()
    tol = (2 * d.abs() * e + e * e).sum().item() + 1e-5 * expected
    assert abs(got.item() - expected) <= tol
    again = directions_sq_norm(d_seeds, d_coefs, numel, offset=offset, **d_kw)
    assert torch.equal(got, again)  # deterministic: no float atomics


def test_add_then_sq_norm_agree_on_one_direction():
    """directions_sq_norm(s, c) == || add_directions_(0, s, c) ||^2 up to the sum's rounding."""
    seeds = torch.tensor([11, 2**62 + 3], device=DEVICE)
    coefs = torch.tensor([0.5, -1.5], device=DEVICE)
    theta = torch.zeros(4097, device=DEVICE)
    add_directions_(theta, seeds, coefs, offset=5)
    s = directions_sq_norm(seeds, coefs, 4097, offset=5)
    assert abs(s.item() - theta.double().square().sum().item()) <= 1e-5 * s.item()


# --- int64 local indices, only where the memory is ---------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (2**31 elements)")
def test_past_2_31_elements():
    n = 2**31 + 9
    if torch.cuda.mem_get_info()[0] < 3 * 4 * n:
        pytest.skip("not enough free GPU memory")
    tail = torch.from_numpy(reference.stream(77, 4097, 3 + n - 4097))
    out = torch.empty(n, device="cuda")
    fill_gaussian_(out, 77, 3)
    assert (out[-4097:].cpu().double() - tail).abs().max().item() <= 1e-5
    out.zero_()
    one = torch.tensor([1.0], device="cuda")
    add_directions_(out, torch.tensor([77], device="cuda"), one, offset=3)
    assert (out[-4097:].cpu().double() - tail).abs().max().item() <= 1e-5
