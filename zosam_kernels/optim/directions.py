"""The weights' walk along a step's random directions.

A direction u_i = u(seed_i) ⊙ M (M: the direction mask of the step) is never
stored. During a ZO-SAM step the weights are

    θ_now = θ + Σ_i net[i] · u_i            (⊙ |θ|^2 for ASAM's ε)

and `Walk` keeps only `net`, m float32 numbers on the device. Moving from net
to target coefficients is one pass over the weights, θ ← (θ − Σ net·u) + Σ
target·u: the first term is the very float32 d the last move added, so it
takes that move back exactly wherever float32 can, and rounding errors do not
pile up over steps (benchmarks/restore_drift.py). The ±δ moves of the
estimate, the move to ε and the return to θ are all this one operation; a
fault anywhere is undone by moving back to net = 0.

Two backends add coefficient-weighted directions and take their norms, over
the optimizer's flat parameter buffers (flat.FlatParams, or the local shards of
FSDP2's parameters, sharded.ShardedParams, for the fused one):
  FusedDirections    one fused op per bucket (ops.add_directions_ / directions_sq_norm)
  UnfusedDirections  each direction materialised tensor by tensor, plain torch ops
They read the same stream at the same positions and agree to rounding.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence, cast

import torch

from .. import ops
from ..flat import dense_strides
from ..masks import zero_pruned_

if TYPE_CHECKING:
    from ..flat import FlatParams, Layout
    from ..masks import Masks
    from ..sharded import ShardedParams


def _seeds_tensor(seeds: Sequence[int], device: torch.device) -> torch.Tensor:
    t = torch.tensor(seeds, dtype=torch.int64)
    if device.type == "cuda":
        # pinned + non_blocking: the copy is queued, the host does not wait for the GPU
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class FusedDirections:
    """No parameter-sized temporaries: the directions are regenerated inside the ops."""

    def __init__(self, flat: FlatParams | ShardedParams) -> None:
        self.flat = flat

    def prepare(self, seeds: Sequence[int]) -> dict[torch.device, torch.Tensor]:
        devices = {b.device for b in self.flat.buffers}
        return {d: _seeds_tensor(seeds, d) for d in devices}

    def move_(self, seeds: dict[torch.device, torch.Tensor], lo: int, hi: int, base: torch.Tensor,
              coefs: torch.Tensor, masks: Sequence[Optional[torch.Tensor]], scale: Sequence[Optional[torch.Tensor]],
              power: int) -> None:
        for buf, offset, mask, s in zip(self.flat.buffers, self.flat.offsets, masks, scale):
            ops.add_directions_(buf, seeds[buf.device][lo:hi], coefs.to(buf.device), mask, s,
                                power or 1, offset, base.to(buf.device))

    def materialized(self, seeds: dict[torch.device, torch.Tensor], coefs: torch.Tensor,
                     masks: Sequence[Optional[torch.Tensor]]) -> list[torch.Tensor]:
        out = [torch.zeros_like(b) for b in self.flat.buffers]
        for buf, offset, mask in zip(out, self.flat.offsets, masks):
            ops.add_directions_(buf, seeds[buf.device], coefs.to(buf.device), mask, None, 1, offset)
        return out

    def sq_norm(self, seeds: dict[torch.device, torch.Tensor], coefs: torch.Tensor,
                masks: Sequence[Optional[torch.Tensor]], scale: Sequence[Optional[torch.Tensor]],
                power: int) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=coefs.device)
        for buf, offset, mask, s in zip(self.flat.buffers, self.flat.offsets, masks, scale):
            total += ops.directions_sq_norm(seeds[buf.device], coefs.to(buf.device), buf.numel(),
                                            mask, s, power or 1, offset).to(coefs.device)
        return self.flat.sum_over_shards(total)


class UnfusedDirections:
    """The baseline the fused ops are measured against: each direction is
    materialised per tensor (ops.gaussian) and combined with plain torch ops."""

    def __init__(self, flat: FlatParams | ShardedParams) -> None:
        self.flat = flat
        self.offsets = flat.layout.param_offsets()

    def prepare(self, seeds: Sequence[int]) -> list[int]:
        return list(seeds)

    def _directions(self, seeds: Sequence[int], coefs: torch.Tensor, masks: Sequence[Optional[torch.Tensor]],
                    scale: Sequence[Optional[torch.Tensor]], power: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        layout = self.flat.layout
        for p, offset, mask, s in zip(layout.params, self.offsets, layout.views(masks),
                                      layout.views(scale)):
            d = torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
            for k, seed in enumerate(seeds):
                d.add_(ops.gaussian(seed, p.numel(), offset, device=p.device) * coefs[k].to(p.device))
            d = d.as_strided(p.shape, dense_strides(p))   # the stream runs over p's memory order
            if mask is not None:
                d = d * mask
            if power:
                d = d * cast(torch.Tensor, s).abs() ** power
            yield p, d

    @torch.no_grad()
    def move_(self, seeds: list[int], lo: int, hi: int, base: torch.Tensor, coefs: torch.Tensor,
              masks: Sequence[Optional[torch.Tensor]], scale: Sequence[Optional[torch.Tensor]], power: int) -> None:
        take_back = self._directions(seeds[lo:hi], base, masks, scale, power)
        for (p, b), (_, d) in zip(take_back, self._directions(seeds[lo:hi], coefs, masks, scale, power)):
            p.sub_(b).add_(d)

    @torch.no_grad()
    def materialized(self, seeds: list[int], coefs: torch.Tensor,
                     masks: Sequence[Optional[torch.Tensor]]) -> list[torch.Tensor]:
        layout = self.flat.layout
        out = layout.new_buffers(torch.float32, fill=0.0)
        for view, (_, d) in zip(layout.views(out), self._directions(seeds, coefs, masks, [None] * len(masks), 0)):
            view.copy_(d)
        return out

    @torch.no_grad()
    def sq_norm(self, seeds: list[int], coefs: torch.Tensor, masks: Sequence[Optional[torch.Tensor]],
                scale: Sequence[Optional[torch.Tensor]], power: int) -> torch.Tensor:
        return torch.stack([d.pow(2).sum().to(coefs.device)
                            for _, d in self._directions(seeds, coefs, masks, scale, power)]).sum()


class Walk:
    """The weights' offset from θ on the directions of `seeds`, for one step.

    masks: the direction mask per bucket (None: dense). saved: per-bucket buffers
    that receive a copy of θ (needed for ASAM's |θ| scaling; then the return to θ
    is that copy, exact). scale: per-bucket buffers that scale the directions
    instead of |θ| (the relative radius: each tensor's RMS), every move then
    scaled (power 1) from the start."""

    directions: FusedDirections | UnfusedDirections

    def __init__(self, directions: FusedDirections | UnfusedDirections, seeds: Sequence[int],
                 masks: Sequence[Optional[torch.Tensor]], saved: Optional[list[torch.Tensor]] = None,
                 scale: Optional[list[torch.Tensor]] = None) -> None:
        self.directions, self.masks, self.saved = directions, masks, saved
        self.scale = saved if scale is None else scale
        self.seeds: Any = directions.prepare(seeds)
        self.m = len(seeds)
        buffers = directions.flat.buffers
        self.device = buffers[0].device
        self.net = torch.zeros(self.m, dtype=torch.float32, device=self.device)
        self.power = 0 if scale is None else 1   # net multiplies scale ** power (ASAM's ε: |θ| ** 2)
        if saved is not None:
            torch._foreach_copy_(saved, buffers)

    def _scale(self, power: int) -> Sequence[Optional[torch.Tensor]]:
        return cast(Sequence[Optional[torch.Tensor]], self.scale) if power else [None] * len(self.masks)

    @torch.no_grad()
    def move_(self, target: torch.Tensor, lo: int = 0, power: Optional[int] = None) -> None:
        """To θ + Σ_{i ∈ [lo, lo + len(target))} target[i − lo]·u_i, the other
        coefficients unchanged: one pass over the weights. power: of the scale
        (None: the walk's as it is)."""
        power = self.power if power is None else power
        if power != self.power:
            if self.saved is None:
                raise RuntimeError("a change of the scale's power needs the saved weights (Walk(saved=...))")
            self.restore_()
            self.power = power
        hi = lo + target.numel()
        self.directions.move_(self.seeds, lo, hi, self.net[lo:hi], target, self.masks,
                              self._scale(power), power)
        self.net[lo:hi] = target

    def materialized(self, coefs: torch.Tensor) -> list[torch.Tensor]:
        """Σ_i coefs[i]·u_i as new flat buffers, one per bucket (the weights are not touched)."""
        return self.directions.materialized(self.seeds, coefs, self.masks)

    def sq_norm(self, coefs: torch.Tensor, power: int = 0) -> torch.Tensor:
        """‖Σ_i coefs[i]·u_i (⊙ |θ| ** power)‖² of the step's directions."""
        if power and self.scale is None:
            raise RuntimeError("a scaled norm needs a scale (Walk(saved=...) or Walk(scale=...))")
        return self.directions.sq_norm(self.seeds, coefs, self.masks, self._scale(power), power)

    @torch.no_grad()
    def restore_(self) -> None:
        """Back to θ: from the saved copy when there is one, else by moving to net = 0."""
        if self.saved is not None:
            torch._foreach_copy_(self.directions.flat.buffers, self.saved)
            self.net.zero_()
            self.power = 0
        else:
            self.move_(torch.zeros_like(self.net))


def stream_like(params: Sequence[torch.Tensor], masks: Masks, seed: int, layout: Layout) -> list[torch.Tensor]:
    """One direction of the stream as tensors of the given parameters (their
    memory order), zero at pruned weights: the draw the fused ops would make."""
    offsets = dict(zip(map(id, layout.params), layout.param_offsets()))
    out = []
    for p in params:
        u = ops.gaussian(seed, p.numel(), offsets[id(p)], device=p.device).to(p.dtype)
        u = u.as_strided(p.shape, dense_strides(p))   # the stream runs over p's memory order
        mask = masks.get(p)
        if mask is not None:
            zero_pruned_(u, mask)
        out.append(u)
    return out
