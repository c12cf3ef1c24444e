"""Triton kernels for the direction stream and the two fused ops.

Compiled on CUDA tensors; on CPU tensors they run through the Triton
interpreter (TRITON_INTERPRET=1 set before triton is imported). The launchers
beside the kernels are registered by library.py as the CUDA implementations;
they do not validate their arguments (ops/__init__.py does).

Stream element j of seed s is normal j % 4 of tl.randn4x(s, j // 4), the
counter j // 4 being int64 so that its high word is used (docs/DESIGN.md). Every
kernel walks Philox counters: program p covers the BLOCK_Q counters
q = q_first + p * BLOCK_Q + [0, BLOCK_Q), q_first = offset // 4, and lays the
four normals of each counter out as a [BLOCK_Q, 4] tile whose element (a, r)
is stream element 4q + r, i.e. local element i = 4q + r - offset. Loads and
stores are masked to 0 <= i < n. Program ids and all indices are int64, so
buffers over 2**31 elements and stream offsets up to 2**63 work.

K, the number of directions in one launch, is a compile-time constant: one
compile per K (ZOSAM launches K = 1, 2 and its n_dirs), and Triton 3.6's
interpreter (the device image's version) cannot take a run-time loop bound
under numpy >= 2.4.
"""
import contextlib
from typing import Any, Optional

import torch
import triton
import triton.language as tl

BLOCK_Q = 256  # Philox counters per program, i.e. 1024 stream elements
NUM_WARPS = 4
# enable_fp_fusion=False stops the compiler contracting a*b + c into an fma,
# so the uniform -> Box-Muller arithmetic and the sums round like the other
# backends (the C++ kernels build with -ffp-contract=off). The interpreter
# drops launch options it does not know.
_LAUNCH_OPTIONS = dict(num_warps=NUM_WARPS, enable_fp_fusion=False)


@triton.jit
def _interleave(x0, x1, x2, x3):
    """Row a of the result is (x0[a], x1[a], x2[a], x3[a]). tl.join adds a
    last axis: join(join(x0, x2), join(x1, x3))[a, j, t] is x(j * 2 + t), so
    the row-major reshape lays the four out in order. Joins keep each row in
    one thread; selecting on the lane index instead let the compiler spread a
    row over four threads that each made all four normals, 4x the Philox work
    where no 16-byte access anchors the layout (benchmarks/triton_sass.py)."""
    BLOCK: tl.constexpr = x0.shape[0]
    return tl.reshape(tl.join(tl.join(x0, x2), tl.join(x1, x3)), (BLOCK, 4))


@triton.jit
def _stream_tile(seed, q):
    """[BLOCK_Q, 4] tile of stream elements 4q + r for counters q, r = 0..3 along the row."""
    n0, n1, n2, n3 = tl.randn4x(seed, q)
    return _interleave(n0, n1, n2, n3)


@triton.jit
def _local_index(n, start, BLOCK_Q: tl.constexpr):
    """Counter offsets from q_first, the [BLOCK_Q, 4] local element index
    i = 4 q_local + r - start and its in-range mask, all int64."""
    q_local = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    i = 4 * q_local[:, None] + tl.arange(0, 4)[None, :] - start
    return q_local, i, (i >= 0) & (i < n)


@triton.jit
def _scaled(d, s, HAS_SCALE: tl.constexpr, SCALE_POWER: tl.constexpr):
    """d * |s| ** SCALE_POWER (d itself without a scale)."""
    if HAS_SCALE:
        if SCALE_POWER == 1:
            d = d * tl.abs(s)
        else:
            d = d * (s * s)
    return d


@triton.jit
def _direction_tile(seeds_ptr, coefs_ptr, base_ptr, mask_ptr, scale_ptr, n, K: tl.constexpr, q_first, start,
                    HAS_MASK: tl.constexpr, HAS_SCALE: tl.constexpr,
                    SCALE_POWER: tl.constexpr, HAS_BASE: tl.constexpr, BLOCK_Q: tl.constexpr):
    """d = (sum_k coefs[k] u(seeds[k])) * |scale| ** SCALE_POWER on this
    program's tile, b the same with base[k] for coefs[k] (0 without base; the
    normals are made once for both), its local indices i, and `keep` = in range
    and mask[i]. d and b are only meaningful where keep is true."""
    q_local, i, keep = _local_index(n, start, BLOCK_Q)
    q = q_local + q_first
    acc0 = tl.zeros([BLOCK_Q], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_Q], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_Q], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_Q], dtype=tl.float32)
    bac0 = tl.zeros([BLOCK_Q], dtype=tl.float32)
    bac1 = tl.zeros([BLOCK_Q], dtype=tl.float32)
    bac2 = tl.zeros([BLOCK_Q], dtype=tl.float32)
    bac3 = tl.zeros([BLOCK_Q], dtype=tl.float32)
    for k in range(K):
        seed = tl.load(seeds_ptr + k)
        c = tl.load(coefs_ptr + k)
        n0, n1, n2, n3 = tl.randn4x(seed, q)
        acc0 += c * n0
        acc1 += c * n1
        acc2 += c * n2
        acc3 += c * n3
        if HAS_BASE:
            cb = tl.load(base_ptr + k)
            bac0 += cb * n0
            bac1 += cb * n1
            bac2 += cb * n2
            bac3 += cb * n3
    if HAS_MASK:
        keep = keep & (tl.load(mask_ptr + i, mask=keep, other=0) != 0)
    s = tl.load(scale_ptr + i, mask=keep, other=0.0) if HAS_SCALE else 0.0
    d = _scaled(_interleave(acc0, acc1, acc2, acc3), s, HAS_SCALE, SCALE_POWER)
    b = _scaled(_interleave(bac0, bac1, bac2, bac3), s, HAS_SCALE, SCALE_POWER)
    return d, b, i, keep


@triton.jit(do_not_specialize=["seed"])  # seeds change every call: no recompiles on value
def _fill_gaussian_kernel(out_ptr, n, seed, q_first, start, BLOCK_Q: tl.constexpr):
    q_local, i, inside = _local_index(n, start, BLOCK_Q)
    u = _stream_tile(seed, q_local + q_first)
    tl.store(out_ptr + i, u, mask=inside)


@triton.jit
def _add_directions_kernel(theta_ptr, seeds_ptr, coefs_ptr, base_ptr, mask_ptr, scale_ptr,
                           n, K: tl.constexpr, q_first, start,
                           HAS_MASK: tl.constexpr, HAS_SCALE: tl.constexpr,
                           SCALE_POWER: tl.constexpr, HAS_BASE: tl.constexpr,
                           BLOCK_Q: tl.constexpr):
    d, b, i, keep = _direction_tile(seeds_ptr, coefs_ptr, base_ptr, mask_ptr, scale_ptr, n, K,
                                    q_first, start, HAS_MASK, HAS_SCALE, SCALE_POWER, HAS_BASE,
                                    BLOCK_Q)
    # Masked-out elements are neither read nor written: they stay bit-exact.
    theta = tl.load(theta_ptr + i, mask=keep, other=0.0)
    if HAS_BASE:
        theta = theta - b   # rounded here, before d is added: the earlier move taken back
    tl.store(theta_ptr + i, theta + d, mask=keep)


@triton.jit
def _sq_norm_partials_kernel(partials_ptr, seeds_ptr, coefs_ptr, mask_ptr, scale_ptr,
                             n, K: tl.constexpr, q_first, start,
                             HAS_MASK: tl.constexpr, HAS_SCALE: tl.constexpr,
                             SCALE_POWER: tl.constexpr, BLOCK_Q: tl.constexpr):
    d, _, i, keep = _direction_tile(seeds_ptr, coefs_ptr, None, mask_ptr, scale_ptr, n, K,
                                    q_first, start, HAS_MASK, HAS_SCALE, SCALE_POWER, False,
                                    BLOCK_Q)
    d = tl.where(keep, d, 0.0)
    tl.store(partials_ptr + tl.program_id(0), tl.sum(tl.sum(d * d, axis=1), axis=0))


def _geometry(numel: int, offset: int) -> tuple[tuple[int], int, int]:
    """(grid, q_first, start): start = offset % 4 is the lane of local element 0
    in counter q_first = offset // 4."""
    q_first, start = divmod(int(offset), 4)
    return (triton.cdiv(start + numel, 4 * BLOCK_Q),), q_first, start


def _on_device(t: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    # Triton launches on the current CUDA device; make it the tensor's.
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _mask_and_scale(mask: Optional[torch.Tensor], scale: Optional[torch.Tensor],
                    scale_power: int) -> dict[str, Any]:
    # bool tensors go in as uint8 (same bytes), compared != 0 in the kernel.
    return dict(mask_ptr=None if mask is None else mask.view(torch.uint8),
                scale_ptr=scale, HAS_MASK=mask is not None,
                HAS_SCALE=scale is not None, SCALE_POWER=int(scale_power))


def fill_gaussian_(out: torch.Tensor, seed: int, offset: int = 0) -> None:
    """out[i] = u(seed)[offset + i] (out contiguous float32)."""
    n = out.numel()
    if n == 0:
        return
    grid, q_first, start = _geometry(n, offset)
    with _on_device(out):
        _fill_gaussian_kernel[grid](out, n, int(seed), q_first, start,
                                    BLOCK_Q=BLOCK_Q, **_LAUNCH_OPTIONS)


def add_directions_(theta: torch.Tensor, seeds: torch.Tensor, coefs: torch.Tensor, mask: Optional[torch.Tensor] = None,
                    scale: Optional[torch.Tensor] = None, scale_power: int = 1, offset: int = 0,
                    base: Optional[torch.Tensor] = None) -> None:
    """theta[i] = (theta[i] - b[i]) + d[i], d[i] = (sum_k coefs[k] u(seeds[k])[offset + i]) * mask[i]
    * |scale[i]| ** scale_power and b[i] the same with base (0 without), in one
    launch; seeds (int64), coefs and base (float32) stay on the device."""
    n = theta.numel()
    if n == 0:
        return
    grid, q_first, start = _geometry(n, offset)
    with _on_device(theta):
        _add_directions_kernel[grid](
            theta, seeds, coefs, base, n=n, K=seeds.numel(), q_first=q_first, start=start,
            HAS_BASE=base is not None, BLOCK_Q=BLOCK_Q, **_mask_and_scale(mask, scale, scale_power),
            **_LAUNCH_OPTIONS)


def directions_sq_norm(seeds: torch.Tensor, coefs: torch.Tensor, numel: int, mask: Optional[torch.Tensor] = None,
                       scale: Optional[torch.Tensor] = None, scale_power: int = 1, offset: int = 0) -> torch.Tensor:
    """sum_i d_i ** 2 as a 0-dim float32 tensor on seeds' device.

    Two launches: a float atomic_add into one scalar would make the result
    depend on the order programs finish, so each program writes its fp32
    partial sum to its own slot and torch sums the partials in a fixed order;
    the result is identical run to run."""
    n = int(numel)
    if n == 0:
        return torch.zeros((), dtype=torch.float32, device=seeds.device)
    grid, q_first, start = _geometry(n, offset)
    partials = torch.empty(grid[0], dtype=torch.float32, device=seeds.device)
    with _on_device(seeds):
        _sq_norm_partials_kernel[grid](
            partials, seeds, coefs, n=n, K=seeds.numel(), q_first=q_first, start=start,
            BLOCK_Q=BLOCK_Q, **_mask_and_scale(mask, scale, scale_power), **_LAUNCH_OPTIONS)
    return partials.sum()
