"""The direction stream and the two fused ops over a flat fp32 buffer.

    gaussian(seed, numel, offset=0, device=None)  -> u(seed)[offset : offset + numel]
    add_directions_(theta, seeds, coefs, mask=None, scale=None, scale_power=1, offset=0, base=None)
        theta += (sum_k coefs[k] * u(seeds[k])) * mask * |scale| ** scale_power
        with base: theta = (theta - b) + d, b the same sum with base for coefs, the
        subtraction rounded first; a move from coefficients `base` to `coefs` so
        takes back the earlier move with the very d it added (exact where float32 allows)
    directions_sq_norm(seeds, coefs, numel, mask=None, scale=None, scale_power=1, offset=0)
        -> || (sum_k coefs[k] * u(seeds[k])) * mask * |scale| ** scale_power ||^2

seeds (int64) and coefs (float32) are 1-D tensors on the op's device, so no
host-device synchronisation is needed; docs/DESIGN.md describes the stream.
"""
from __future__ import annotations

from typing import Optional, Union, cast

import torch

from . import library  # noqa: F401  (registers torch.ops.zosam.*)
from .library import HAS_CPU_EXTENSION
from ..seeds import MAX_SEED, check_seed

__all__ = ["gaussian", "add_directions_", "directions_sq_norm", "HAS_CPU_EXTENSION"]


def gaussian(seed: int, numel: int, offset: int = 0,
             device: Optional[Union[torch.device, str, int]] = None) -> torch.Tensor:
    _check_stream_args(seed, numel, offset)
    out = torch.empty(numel, dtype=torch.float32, device=device)
    torch.ops.zosam.fill_gaussian_(out, seed, offset)
    return out


def add_directions_(theta: torch.Tensor, seeds: torch.Tensor, coefs: torch.Tensor, mask: Optional[torch.Tensor] = None,
                    scale: Optional[torch.Tensor] = None, scale_power: int = 1, offset: int = 0,
                    base: Optional[torch.Tensor] = None) -> torch.Tensor:
    if not torch.is_tensor(theta) or theta.dtype != torch.float32 or not theta.is_contiguous():
        raise TypeError(f"theta must be a contiguous float32 tensor, got "
                        f"{getattr(theta, 'dtype', type(theta).__name__)}")
    _check_op_args(theta.numel(), theta.device, seeds, coefs, mask, scale, scale_power, offset)
    if base is not None and (not torch.is_tensor(base) or base.dtype != torch.float32
                             or base.shape != coefs.shape or base.device != coefs.device):
        raise TypeError(f"base must be a float32 tensor of coefs' shape {tuple(coefs.shape)} on "
                        f"{coefs.device}")
    torch.ops.zosam.add_directions_(theta, seeds, coefs, mask, scale, scale_power, offset, base)
    return theta


def directions_sq_norm(seeds: torch.Tensor, coefs: torch.Tensor, numel: int, mask: Optional[torch.Tensor] = None,
                       scale: Optional[torch.Tensor] = None, scale_power: int = 1, offset: int = 0) -> torch.Tensor:
    if not isinstance(numel, int) or numel < 0:
        raise ValueError(f"numel must be a non-negative int, got {numel!r}")
    if not torch.is_tensor(coefs):
        raise TypeError("coefs must be a 1-D float32 tensor")
    _check_op_args(numel, coefs.device, seeds, coefs, mask, scale, scale_power, offset)
    return cast(torch.Tensor,
                torch.ops.zosam.directions_sq_norm(seeds, coefs, numel, mask, scale, scale_power, offset))


def _check_stream_args(seed: int, numel: int, offset: int) -> None:
    check_seed(seed)
    if not isinstance(numel, int) or numel < 0:
        raise ValueError(f"numel must be a non-negative int, got {numel!r}")
    if not isinstance(offset, int) or offset < 0 or offset + numel > MAX_SEED:
        raise ValueError(f"offset must be a non-negative int with offset + numel < 2**63, got {offset!r}")


def _check_op_args(numel: int, dev: torch.device, seeds: torch.Tensor, coefs: torch.Tensor,
                   mask: Optional[torch.Tensor], scale: Optional[torch.Tensor], scale_power: int,
                   offset: int) -> None:
    if not torch.is_tensor(seeds) or seeds.dtype != torch.int64 or seeds.dim() != 1:
        raise TypeError("seeds must be a 1-D int64 tensor")
    if not torch.is_tensor(coefs) or coefs.dtype != torch.float32 or coefs.dim() != 1:
        raise TypeError("coefs must be a 1-D float32 tensor")
    if seeds.numel() != coefs.numel() or seeds.numel() == 0:
        raise ValueError(f"seeds and coefs must have the same non-zero length, got "
                         f"{seeds.numel()} and {coefs.numel()}")
    t: Optional[torch.Tensor]
    for name, t in (("seeds", seeds), ("coefs", coefs)):
        if t.device != dev:
            raise ValueError(f"{name} is on {t.device} but the op runs on {dev}")
    for name, t, dtype in (("mask", mask, torch.bool), ("scale", scale, torch.float32)):
        if t is None:
            continue
        if not torch.is_tensor(t) or t.dtype != dtype:
            raise TypeError(f"{name} must be a {dtype} tensor")
        if t.numel() != numel or t.device != dev or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous with {numel} elements on {dev}, "
                             f"got {t.numel()} on {t.device}")
    if scale_power not in (1, 2):
        raise ValueError(f"scale_power must be 1 or 2, got {scale_power!r}")
    if not isinstance(offset, int) or offset < 0 or offset + numel > MAX_SEED:
        raise ValueError(f"offset must be a non-negative int, got {offset!r}")
