"""The layout of the direction stream, and flat parameters.

Layout: the order in which an optimizer sees its weights, which is also the
order of the direction stream (docs/DESIGN.md). A weight is a region of
memory, not a Parameter object: two Parameters on one storage (`.data`
tying, a reshaped view) are one weight, held by the first of them (its
owner); the later ones are its aliases, perturbed once with it and never a
stream slot of their own. Owners that require grad are grouped by (device,
dtype) into buckets, buckets in order of first appearance, parameters in
their given order. Every per-weight quantity of an optimizer (masks,
perturbation masks, Fisher sums, saved weights) is one flat buffer per
bucket in this order, with a view per parameter.

A parameter's slot holds its elements in memory order, and its views carry
the parameter's own strides, so channels_last weights stay channels_last;
for a contiguous parameter memory order is the row-major order of
`p.reshape(-1)`.

FlatParams: every parameter of a bucket becomes a view of one contiguous
buffer, so each fused op is one launch for the whole model and the stream
index of a weight is its position in the buffer plus the bucket's offset.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Optional, Sequence, overload

import torch


def dense_strides(t: torch.Tensor) -> tuple[int, ...]:
    """t's strides if its elements fill a block of memory without gaps or overlaps
    (contiguous, channels_last, a transpose), else the contiguous strides."""
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return _contiguous_strides(t.shape)
        expected *= size
    return t.stride()


def _contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= max(n, 1)
    return tuple(reversed(out))


def _region(p: torch.Tensor) -> Optional[tuple[int, int | torch.SymInt, int | torch.SymInt]]:
    """(storage pointer, first byte, end byte) of p's elements, None when p has no
    plain storage to compare (a DTensor, a meta tensor)."""
    try:
        start = p.untyped_storage().data_ptr() if p.device.type != "meta" else None
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    if start is None or not p.numel():
        return None
    span = 1 + sum((n - 1) * s for n, s in zip(p.shape, p.stride()))
    first = p.storage_offset() * p.element_size()
    return start, first, first + span * p.element_size()


class Layout:
    """buckets: lists of owner parameters; offsets / numels: each bucket's first
    stream index and size; params: all owners in stream order; aliases: pairs
    (alias, owner); known: the ids of every parameter given, frozen ones too;
    signature: which parameters, and whether each required grad, to notice a change."""

    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        params = list(params)
        if len({id(p) for p in params}) != len(params):
            raise ValueError("params: a parameter is listed twice (in one group or in two); list each "
                             "once (for tied weights, the shared Parameter once)")
        self.signature = tuple((id(p), p.requires_grad) for p in params)
        self.known = frozenset(id(p) for p in params)
        owners, self.aliases = _owners_and_aliases([p for p in params if p.requires_grad])
        groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for p in owners:
            groups.setdefault((p.device, p.dtype), []).append(p)
        self.buckets = list(groups.values())
        self.params = [p for b in self.buckets for p in b]
        self.numels = [sum(p.numel() for p in b) for b in self.buckets]
        self.offsets = [sum(self.numels[:i]) for i in range(len(self.buckets))]
        self.numel = sum(self.numels)
        self._owner = {id(p): p for p in self.params} | {id(a): o for a, o in self.aliases}

    def owner(self, p: torch.Tensor) -> Optional[torch.Tensor]:
        """The owner of parameter p's weights (p itself if it owns them), None if p is not laid out."""
        return self._owner.get(id(p))

    def owner_by_id(self, i: int) -> Optional[torch.Tensor]:
        return self._owner.get(i)

    def param_offsets(self) -> list[int]:
        """The first stream index of every parameter, in stream order."""
        out = []
        for b, offset in zip(self.buckets, self.offsets):
            for p in b:
                out.append(offset)
                offset += p.numel()
        return out

    def new_buffers(self, dtype: torch.dtype, fill: Optional[float] = None) -> list[torch.Tensor]:
        """One flat tensor per bucket, on the bucket's device (filled with `fill` if given)."""
        def make(n: int, device: torch.device) -> torch.Tensor:
            return (torch.empty((n,), dtype=dtype, device=device) if fill is None
                    else torch.full((n,), fill, dtype=dtype, device=device))
        return [make(n, b[0].device) for b, n in zip(self.buckets, self.numels)]

    @overload
    def views(self, buffers: Sequence[torch.Tensor]) -> list[torch.Tensor]: ...
    @overload
    def views(self, buffers: Sequence[Optional[torch.Tensor]]) -> list[Optional[torch.Tensor]]: ...

    def views(self, buffers: Sequence[Optional[torch.Tensor]]) -> list[Any]:
        """Per-parameter views of per-bucket buffers, in stream order (None for a None buffer)."""
        return [v for b, buf in zip(self.buckets, buffers)
                for v in (bucket_views(b, buf) if buf is not None else [None] * len(b))]


def _owners_and_aliases(params: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor],
                                                                 list[tuple[torch.Tensor, torch.Tensor]]]:
    """Split params into owners and (alias, owner) pairs: an alias covers exactly
    its owner's memory, in the same element order. Any other overlap cannot be
    laid out flat and is refused."""
    owners: list[torch.Tensor] = []
    aliases: list[tuple[torch.Tensor, torch.Tensor]] = []
    seen: dict[tuple[int, int | torch.SymInt, int | torch.SymInt], torch.Tensor] = {}
    for p in params:
        region = _region(p)
        owner = seen.get(region) if region is not None else None
        if owner is None:
            if region is not None:
                for (ptr, lo, hi), q in seen.items():
                    if ptr == region[0] and lo < region[2] and region[1] < hi:
                        raise ValueError(f"params: a parameter of shape {tuple(p.shape)} overlaps part of "
                                         f"another's memory (shape {tuple(q.shape)}); the optimizer keeps "
                                         "shared weights shared only when they cover the same memory "
                                         "(.data tying, a reshaped view): give it the parameters whose "
                                         "memory does not overlap")
                seen[region] = p
            owners.append(p)
        elif (p.dtype, p.numel()) == (owner.dtype, owner.numel()) and _memory_order_matches(p, owner):
            aliases.append((p, owner))
        else:
            raise ValueError(f"params: a parameter of shape {tuple(p.shape)} shares memory with one of shape "
                             f"{tuple(owner.shape)} but orders its elements differently; tie weights with "
                             "`a.weight = b.weight` or `a.weight.data = b.weight.data`")
    return owners, aliases


def _memory_order_matches(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b, over the same memory, map memory positions to elements alike
    (each dense: then element k of memory is element k of both flat slots)."""
    return dense_strides(a) == a.stride() and dense_strides(b) == b.stride()


def bucket_views(bucket: Sequence[torch.Tensor], buffer: torch.Tensor) -> list[torch.Tensor]:
    """Views of a bucket's flat buffer, one per parameter, of the parameters'
    shapes and (dense) strides."""
    out, start = [], 0
    for p in bucket:
        out.append(slot_view(buffer, start, p))
        start += p.numel()
    return out


def slot_view(buffer: torch.Tensor, start: int, p: torch.Tensor) -> torch.Tensor:
    """p's slot of a flat buffer (elements start.. start + p.numel()), as a tensor of
    p's shape and memory layout."""
    if not p.numel():
        return buffer[start:start].view(p.shape)
    return buffer.as_strided(p.shape, dense_strides(p), buffer.storage_offset() + start)


class InPlaceParams:
    """What FlatParams offers, for an optimizer that moves each parameter where it
    lives (the gradient ascent: no fused op, so no flat buffer and no rebinding)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def check_bound(self) -> None:
        """Nothing is bound: a parameter may live anywhere."""

    def gathering(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class FlatParams:
    """Rebinds the layout's parameters into one buffer per bucket (`buffers`);
    an alias is rebound to its owner's slot, so it stays tied."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.offsets = layout.offsets   # each buffer's first stream index
        self.buffers = [torch.empty(n, dtype=b[0].dtype, device=b[0].device)
                        for b, n in zip(layout.buckets, layout.numels)]
        self.views = layout.views(self.buffers)
        by_owner = dict(zip(map(id, layout.params), self.views))
        with torch.no_grad():
            for p, view in zip(layout.params, self.views):
                view.copy_(p)
            for p, view in zip(layout.params, self.views):
                p.data = view        # the parameter now lives in the buffer
            for alias, owner in layout.aliases:
                alias.data = by_owner[id(owner)].as_strided(alias.shape, alias.stride(),
                                                            by_owner[id(owner)].storage_offset())
        self._bound = [(p, p.data_ptr()) for p in layout.params] + [(a, a.data_ptr()) for a, _ in layout.aliases]

    def check_bound(self) -> None:
        """Raise if a parameter was re-bound away from its buffer (model.to(),
        model.half(), load_state_dict(assign=True) on the same Parameter objects),
        which the fused ops would otherwise silently miss."""
        for p, ptr in self._bound:
            if p.data_ptr() != ptr:
                raise RuntimeError(
                    f"a parameter of shape {tuple(p.shape)} no longer lives in the optimizer's "
                    "flat buffer: build the optimizer after moving or casting the model")

    def sum_over_shards(self, t: torch.Tensor) -> torch.Tensor:
        """A sum over the whole model is this process's: nothing is sharded (sharded.ShardedParams)."""
        return t

    def gathering(self) -> contextlib.AbstractContextManager[None]:
        """Around a pass (sharded.ShardedParams: FSDP2 must gather the weights anew)."""
        return contextlib.nullcontext()

