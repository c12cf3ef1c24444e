"""Sparsity masks of an optimizer's parameters, and the rankings that make masks.

A mask is a bool tensor of its parameter's shape and device; False marks a
pruned weight, which every optimizer of the package keeps exactly 0.

The `masks` argument of an optimizer is either a fixed mapping parameter ->
bool tensor (read once), or a masking object (zosam_kernels.sparse) with
`param_masks()` and an integer `version` that it bumps on every topology
change; the optimizer re-reads such an object at the start of a step whenever
its version moved, so drop-and-grow reaches it without a call from the user.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, TypeVar, cast

import torch

from .flat import Layout, bucket_views

_Optimizer = TypeVar("_Optimizer", bound=torch.optim.Optimizer)


def normalize_masks(layout: Layout, masks: Any) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Validate `masks` (a mapping parameter -> bool tensor, a masking object, or
    None) against the layout; returns (id(owner) -> mask of the masked weights,
    id(param) -> mask of the layout's parameters that are not laid out now:
    frozen ones, whose mask waits until they train)."""
    if masks is None:
        return {}, {}
    if hasattr(masks, "param_masks"):   # a sparse-training masking object
        masks = masks.param_masks()
    if not hasattr(masks, "items"):
        raise TypeError(f"masks must be a mapping from parameter to bool tensor, got {type(masks).__name__}")
    out: dict[int, torch.Tensor] = {}
    dormant: dict[int, torch.Tensor] = {}
    for p, m in masks.items():
        if not torch.is_tensor(m) or m.dtype != torch.bool:
            raise TypeError(f"masks: the mask of a parameter of shape {tuple(p.shape)} must be a bool "
                            f"tensor, got {getattr(m, 'dtype', type(m).__name__)}")
        if m.shape != p.shape:
            raise ValueError(f"masks: mask shape {tuple(m.shape)} differs from its parameter's "
                             f"shape {tuple(p.shape)}")
        if m.device != p.device:
            raise ValueError(f"masks: mask is on {m.device} but its parameter is on {p.device}")
        owner = layout.owner(p)
        if owner is None:
            if id(p) not in layout.known:
                raise ValueError("masks has a key that is not one of the optimized parameters")
            dormant[id(p)] = m
            continue
        if owner.shape != p.shape:
            raise ValueError(f"masks: a parameter of shape {tuple(p.shape)} is tied to one of shape "
                             f"{tuple(owner.shape)}: give the mask of the tied weight under that one")
        if id(owner) in out and not torch.equal(out[id(owner)], m):
            raise ValueError("masks: two tied parameters have different masks; they are one weight")
        out[id(owner)] = m
    return out, dormant


class Masks:
    """The sparsity masks of an optimizer: one flat bool buffer per bucket of its
    layout (flat.Layout), made on first need and kept after (a bucket never goes
    back to unmasked, so the fused ops keep one signature), with a view per
    parameter; unmasked parameters of a masked bucket read True.

    `buffers` is what the fused ops read (None: a dense bucket); `get(p)` is a
    parameter's mask (None: dense)."""

    buffers: list[Optional[torch.Tensor]]
    _views: dict[int, torch.Tensor]

    def __init__(self, layout: Layout, masks: Any) -> None:
        self.version = getattr(masks, "version", None)
        # a fixed mapping is read once and not kept (it may be large, and the caller owns it),
        # but for the parameters that are frozen now, whose masks wait in `dormant`
        self.source = masks if self.version is not None else None
        self.buffers, self._views = [], {}
        self.changes = 0   # topology changes seen (refresh_), for what must follow them
        by_id, self.dormant = normalize_masks(layout, masks)
        self._write(layout, by_id)

    def relayout_(self, layout: Layout) -> None:
        """Follow a new layout (parameters added, frozen or unfrozen): masks of
        parameters that stay or come back are kept, new parameters are dense."""
        kept = {id(p): self._views[id(p)].clone() for p in self.masked} | self.dormant
        self.dormant = {i: m for i, m in kept.items() if i in layout.known and layout.owner_by_id(i) is None}
        by_id = {id(layout.owner_by_id(i)): m for i, m in kept.items() if layout.owner_by_id(i) is not None}
        self.buffers, self._views = [], {}
        self._write(layout, by_id)

    @torch.no_grad()
    def _write(self, layout: Layout, by_id: dict[int, torch.Tensor]) -> None:
        """Write the masks by_id (id(param) -> bool tensor; absent = dense) into the flat buffers."""
        self.layout = layout
        if not self.buffers:
            self.buffers = [None] * len(layout.buckets)
        for k, bucket in enumerate(layout.buckets):
            if self.buffers[k] is None and any(id(p) in by_id for p in bucket):
                self.buffers[k] = torch.empty(layout.numels[k], dtype=torch.bool, device=bucket[0].device)
                self._views.update((id(p), v) for p, v in zip(
                    bucket, bucket_views(bucket, cast(torch.Tensor, self.buffers[k]))))
        for p in layout.params:
            view = self._views.get(id(p))
            if view is None:
                continue
            if id(p) in by_id:
                view.copy_(by_id[id(p)])
            else:
                view.fill_(True)
        self.masked = [p for p in layout.params if id(p) in by_id]
        self._masked_ids = set(by_id)

    def get(self, p: torch.Tensor) -> Optional[torch.Tensor]:
        """The mask of parameter p, a view of the flat buffer (None if p is dense)."""
        return self._views[id(p)] if id(p) in self._masked_ids else None

    def refresh_(self) -> bool:
        """Re-read a masking object whose version moved and zero the newly pruned
        weights. Returns whether the masks changed (never for a fixed mapping)."""
        version = getattr(self.source, "version", None)
        if version == self.version:
            return False
        self.version = version
        by_id, self.dormant = normalize_masks(self.layout, self.source)
        self._write(self.layout, by_id)
        self.mask_params_()
        self.changes += 1
        return True

    def observe_gradients(self) -> None:
        """Show a masking object the dense gradients before they are masked, if it
        wants them (RigL's growth); a fixed mapping has nothing to observe."""
        observe = getattr(self.source, "observe_gradients", None)
        if observe is not None:
            observe()

    @torch.no_grad()
    def mask_params_(self) -> None:
        for p in self.masked:
            zero_pruned_(p.data, self._views[id(p)])

    @torch.no_grad()
    def mask_grads_(self) -> None:
        for p in self.masked:
            if p.grad is not None:
                zero_pruned_(p.grad, self._views[id(p)])


def mask_plain_optimizer(optimizer: _Optimizer, masks: Any) -> _Optimizer:
    """Keep a plain torch optimizer's weights to fixed `masks` (a mapping parameter ->
    bool tensor), as the family's optimizers keep theirs: pruned weights are
    zeroed now, their gradients before every step and their values after it."""
    held = Masks(Layout(p for g in optimizer.param_groups for p in g["params"]), masks)
    held.mask_params_()
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: held.mask_grads_())
    optimizer.register_step_post_hook(lambda opt, args, kwargs: held.mask_params_())
    return optimizer


def zero_pruned_(t: torch.Tensor, mask: torch.Tensor) -> None:
    """t = t where mask else 0, in place. Not t.mul_(mask): a float-by-bool product
    makes a float copy of the mask, a parameter-sized temporary, on the CPU. (A
    0-dim CPU zero is a scalar to a CUDA kernel too.)"""
    torch.where(mask, t, torch.zeros((), dtype=t.dtype), out=t)


def keep_top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """A bool mask of scores' shape with the `count` largest scores set; ties go
    to the lower flat index, so the choice is deterministic."""
    order = torch.argsort(scores.reshape(-1), descending=True, stable=True)
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    mask[order[:count]] = True
    return mask.view_as(scores)


def keep_top_across(scores: Sequence[torch.Tensor], count: int,
                    eligible: Optional[Sequence[torch.Tensor]] = None) -> list[torch.Tensor]:
    """keep_top over several tensors ranked as one: the `count` largest scores
    among all of them (only where `eligible`, a list of bool tensors, is True),
    returned as one bool mask per tensor, of its shape and on its device."""
    if eligible is not None:
        scores = [torch.where(e, s, -torch.inf) for s, e in zip(scores, eligible)]
    device = scores[0].device
    flat = keep_top(torch.cat([s.detach().reshape(-1).to(device) for s in scores]), count)
    out, start = [], 0
    for s in scores:
        out.append(flat[start:start + s.numel()].view(s.shape).to(s.device))
        start += s.numel()
    return out
