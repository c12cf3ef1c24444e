"""The fused ops as torch custom ops, torch.ops.zosam.*, one name for every device.

Schemas live here; implementations register per dispatch key:
  CPU   the C++ kernels of zosam_kernels._C (TORCH_LIBRARY_IMPL in csrc/), or,
        when the extension could not be loaded, the numpy reference (slow, warned once);
  CUDA  the Triton kernels of triton_kernels.py;
  Meta  shape-only fakes, so torch.compile can trace through a step.
Semantics, for local index i and stream index j = offset + i:
  d[i] = (sum_k coefs[k] * u(seeds[k])[j]) * mask[i] * |scale[i]| ** scale_power
  b[i] = the same with base[k] for coefs[k]
  add_directions_:    theta[i] = (theta[i] - b[i]) + d[i]   (theta[i] + d[i] without base)
  directions_sq_norm: sum_i d[i] ** 2            (a 0-dim float32 tensor)
  fill_gaussian_:     out[i] = u(seed)[j]
"""
from __future__ import annotations

import importlib
import warnings
from types import ModuleType
from typing import Optional

import torch

from . import reference

torch.library.define(
    "zosam::fill_gaussian_", "(Tensor(a!) out, int seed, int offset=0) -> ()")
torch.library.define(
    "zosam::add_directions_",
    "(Tensor(a!) theta, Tensor seeds, Tensor coefs, Tensor? mask=None, "
    "Tensor? scale=None, int scale_power=1, int offset=0, Tensor? base=None) -> ()")
torch.library.define(
    "zosam::directions_sq_norm",
    "(Tensor seeds, Tensor coefs, int numel, Tensor? mask=None, "
    "Tensor? scale=None, int scale_power=1, int offset=0) -> Tensor")


@torch.library.register_fake("zosam::fill_gaussian_")
def _(out: torch.Tensor, seed: int, offset: int = 0) -> None:
    return None


@torch.library.register_fake("zosam::add_directions_")
def _(theta: torch.Tensor, seeds: torch.Tensor, coefs: torch.Tensor, mask: Optional[torch.Tensor] = None,
      scale: Optional[torch.Tensor] = None, scale_power: int = 1, offset: int = 0,
      base: Optional[torch.Tensor] = None) -> None:
    return None


@torch.library.register_fake("zosam::directions_sq_norm")
def _(seeds: torch.Tensor, coefs: torch.Tensor, numel: int, mask: Optional[torch.Tensor] = None,
      scale: Optional[torch.Tensor] = None, scale_power: int = 1, offset: int = 0) -> torch.Tensor:
    return coefs.new_empty(())


def _load_cpu_extension() -> bool:
    try:
        importlib.import_module("zosam_kernels._C")   # registers the CPU kernels
        return True
    except ImportError as e:
        warnings.warn(
            f"zosam_kernels: the C++ extension could not be loaded ({e}); CPU ops fall "
            "back to the numpy reference, which is correct but slow. Reinstall with "
            "`pip install -e .` and a working C++ compiler to build it.",
            RuntimeWarning, stacklevel=3)
        return False


HAS_CPU_EXTENSION = _load_cpu_extension()

if not HAS_CPU_EXTENSION:
    @torch.library.impl("zosam::fill_gaussian_", "CPU")
    def _(out: torch.Tensor, seed: int, offset: int = 0) -> None:
        out.copy_(reference.gaussian(seed, out.numel(), offset).reshape(out.shape))

    @torch.library.impl("zosam::add_directions_", "CPU")
    def _(theta: torch.Tensor, seeds: torch.Tensor, coefs: torch.Tensor, mask: Optional[torch.Tensor] = None,
          scale: Optional[torch.Tensor] = None, scale_power: int = 1, offset: int = 0,
          base: Optional[torch.Tensor] = None) -> None:
        theta.copy_(reference.add_directions(theta, seeds, coefs, mask, scale, scale_power, offset,
                                             base))

    @torch.library.impl("zosam::directions_sq_norm", "CPU")
    def _(seeds: torch.Tensor, coefs: torch.Tensor, numel: int, mask: Optional[torch.Tensor] = None,
          scale: Optional[torch.Tensor] = None, scale_power: int = 1, offset: int = 0) -> torch.Tensor:
        return reference.directions_sq_norm(
            seeds, coefs, numel, mask, scale, scale_power, offset).to(torch.float32)


def _load_triton() -> Optional[ModuleType]:
    try:
        from . import triton_kernels
        return triton_kernels
    except ImportError:
        return None


triton_kernels = _load_triton()

if triton_kernels is not None:
    torch.library.impl("zosam::fill_gaussian_", "CUDA")(triton_kernels.fill_gaussian_)
    torch.library.impl("zosam::add_directions_", "CUDA")(triton_kernels.add_directions_)
    torch.library.impl("zosam::directions_sq_norm", "CUDA")(triton_kernels.directions_sq_norm)
