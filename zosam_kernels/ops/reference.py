"""Ground truth for the direction stream and the two fused ops.

Integer-exact Philox4x32-10 in numpy (uint64 products of uint32 words are
exact), Triton's uint32 -> uniform conversion reproduced bit for bit in
float32, Box-Muller evaluated in float64 from those float32 uniforms. The ops
are plain float64 math over materialised directions. Slow on purpose: this is
what the C++ and Triton kernels are checked against, and the CPU fallback when
the compiled extension is missing.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import numpy.typing as npt
import torch

from ..seeds import check_seed

PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint64(0x9E3779B9)
PHILOX_W1 = np.uint64(0xBB67AE85)
_U32 = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)
UNIFORM_SCALE = np.float32(4.6566127342e-10)
TWO_PI = np.float32(6.283185307179586)
U1_FLOOR = np.float32(1e-7)


def philox4x32(counter: Sequence[npt.ArrayLike], key: Sequence[int],
               rounds: int = 10) -> tuple[npt.NDArray[np.uint32], ...]:
    """Philox4x32 on arrays: counter = (c0, c1, c2, c3), key = (k0, k1), each
    an array (or int) of uint32 values. Returns four uint32 arrays."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & _U32 for c in counter)
    c0, c1, c2, c3 = np.broadcast_arrays(c0, c1, c2, c3)
    k0 = np.uint64(int(key[0]) & 0xFFFFFFFF)
    k1 = np.uint64(int(key[1]) & 0xFFFFFFFF)
    for _ in range(rounds):
        p0 = PHILOX_M0 * c0          # exact: both factors < 2**32
        p1 = PHILOX_M1 * c2
        c0, c1, c2, c3 = (
            (p1 >> _SHIFT) ^ c1 ^ k0,
            p1 & _U32,
            (p0 >> _SHIFT) ^ c3 ^ k1,
            p0 & _U32,
        )
        k0 = (k0 + PHILOX_W0) & _U32
        k1 = (k1 + PHILOX_W1) & _U32
    return tuple(c.astype(np.uint32) for c in (c0, c1, c2, c3))


def uint32_to_uniform(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Triton's conversion: bitcast to int32, ~x for negatives, times 2**-31-ish.
    The int -> float32 cast and the product are both float32, so every backend
    gets the same bits."""
    i = np.asarray(x, dtype=np.uint32).view(np.int32)
    i = np.where(i < 0, ~i, i)
    return i.astype(np.float32) * UNIFORM_SCALE


def box_muller(u1: npt.NDArray[np.float32],
               u2: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    u1 = np.maximum(U1_FLOOR, u1).astype(np.float64)
    theta = (TWO_PI * u2).astype(np.float64)  # float32 product, as in Triton
    r = np.sqrt(-2.0 * np.log(u1))
    return r * np.cos(theta), r * np.sin(theta)


def stream_counters(seed: int, numel: int, offset: int = 0) -> tuple[npt.NDArray[np.uint32], int]:
    """Philox integers for stream elements [offset, offset + numel):
    returns an (n_counters, 4) uint32 array and the index of the first
    element inside it."""
    check_seed(seed)
    first = offset // 4
    last = (offset + numel - 1) // 4 if numel > 0 else first - 1
    q = np.arange(first, last + 1, dtype=np.uint64)
    ints = philox4x32((q & _U32, q >> _SHIFT, 0, 0), (seed & 0xFFFFFFFF, seed >> 32))
    return np.stack(ints, axis=1), offset - 4 * first


def stream(seed: int, numel: int, offset: int = 0) -> npt.NDArray[np.float64]:
    """Elements [offset, offset + numel) of the direction with this seed, as a
    float64 numpy array (the normals before their float32 rounding)."""
    ints, start = stream_counters(seed, numel, offset)
    u = uint32_to_uniform(ints)
    n0, n1 = box_muller(u[:, 0], u[:, 1])
    n2, n3 = box_muller(u[:, 2], u[:, 3])
    return np.stack([n0, n1, n2, n3], axis=1).reshape(-1)[start:start + numel]


def gaussian(seed: int, numel: int, offset: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.from_numpy(stream(int(seed), int(numel), int(offset))).to(dtype)


def direction_sum(seeds: Union[torch.Tensor, Sequence[int]], coefs: Union[torch.Tensor, Sequence[float]], numel: int,
                  mask: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None, scale_power: int = 1,
                  offset: int = 0) -> torch.Tensor:
    """d = (sum_k coefs[k] u(seeds[k])) * |scale|**scale_power where mask, else 0; float64."""
    seeds = [int(s) for s in torch.as_tensor(seeds).reshape(-1).tolist()]
    coefs = torch.as_tensor(coefs, dtype=torch.float64).reshape(-1).cpu()
    if len(seeds) != len(coefs):
        raise ValueError(f"seeds has {len(seeds)} entries but coefs has {len(coefs)}")
    d = torch.zeros(numel, dtype=torch.float64)
    for s, c in zip(seeds, coefs):
        d += c * torch.from_numpy(stream(s, numel, offset))
    if scale is not None:
        d *= scale.reshape(-1).cpu().to(torch.float64).abs() ** scale_power
    if mask is not None:   # masked-out elements are left alone, even by a non-finite coefficient
        d = torch.where(mask.reshape(-1).cpu(), d, 0.0)
    return d


def add_directions(theta: torch.Tensor, seeds: Union[torch.Tensor, Sequence[int]],
                   coefs: Union[torch.Tensor, Sequence[float]], mask: Optional[torch.Tensor] = None,
                   scale: Optional[torch.Tensor] = None, scale_power: int = 1, offset: int = 0,
                   base: Union[torch.Tensor, Sequence[float], None] = None) -> torch.Tensor:
    """theta + d in float64, rounded to theta's dtype; with base, (theta - b)
    rounded to theta's dtype first (the kernels round there too)."""
    out = theta.reshape(-1).cpu().to(torch.float64)
    if base is not None:
        b = direction_sum(seeds, base, theta.numel(), mask, scale, scale_power, offset)
        out = (out - b).to(theta.dtype).to(torch.float64)
    out = out + direction_sum(seeds, coefs, theta.numel(), mask, scale, scale_power, offset)
    return out.to(theta.dtype).to(theta.device).reshape(theta.shape)


def directions_sq_norm(seeds: Union[torch.Tensor, Sequence[int]], coefs: Union[torch.Tensor, Sequence[float]],
                       numel: int, mask: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
                       scale_power: int = 1, offset: int = 0) -> torch.Tensor:
    d = direction_sum(seeds, coefs, numel, mask, scale, scale_power, offset)
    return torch.dot(d, d)
