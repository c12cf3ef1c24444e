"""The layout of the direction stream, and flat parameters.

Layout: the order in which an optimizer sees its parameters, which is also
the order of the direction stream: the trainable parameters (tied ones once,
requires_grad=False ones left out) grouped by (device, dtype) into buckets,
buckets in order of first appearance, parameters in their given order. Every
per-weight quantity of an optimizer (masks, perturbation masks, Fisher sums,
saved weights) is one flat buffer per bucket in this order, with a view per
parameter.

FlatParams: every parameter of a bucket becomes a view of one contiguous
buffer, so each fused op is one launch for the whole model and the stream
index of a weight is its position in the buffer plus the bucket's offset.
"""
import contextlib

import torch


def unique_trainable(params):
    """Parameters in order, tied ones once, requires_grad=False ones left out."""
    seen, out = set(), []
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


class Layout:
    """buckets: lists of parameters; offsets / numels: each bucket's first stream
    index and size; params: all of them in stream order."""

    def __init__(self, params):
        groups = {}
        for p in unique_trainable(params):
            groups.setdefault((p.device, p.dtype), []).append(p)
        self.buckets = list(groups.values())
        self.params = [p for b in self.buckets for p in b]
        self.numels = [sum(p.numel() for p in b) for b in self.buckets]
        self.offsets = [sum(self.numels[:i]) for i in range(len(self.buckets))]
        self.numel = sum(self.numels)

    def param_offsets(self):
        """The first stream index of every parameter, in stream order."""
        out = []
        for b, offset in zip(self.buckets, self.offsets):
            for p in b:
                out.append(offset)
                offset += p.numel()
        return out

    def new_buffers(self, dtype, fill=None):
        """One flat tensor per bucket, on the bucket's device (filled with `fill` if given)."""
        make = torch.empty if fill is None else (lambda *a, **k: torch.full(*a, fill, **k))
        return [make((n,), dtype=dtype, device=b[0].device) for b, n in zip(self.buckets, self.numels)]

    def views(self, buffers):
        """Per-parameter views of per-bucket buffers, in stream order (None for a None buffer)."""
        return [v for b, buf in zip(self.buckets, buffers)
                for v in (bucket_views(b, buf) if buf is not None else [None] * len(b))]


def bucket_views(bucket, buffer):
    """Views of a bucket's flat buffer, one per parameter, of the parameters' shapes."""
    out, start = [], 0
    for p in bucket:
        out.append(buffer[start:start + p.numel()].view(p.shape))
        start += p.numel()
    return out


class FlatParams:
    """Rebinds the layout's parameters into one buffer per bucket (`buffers`)."""

    def __init__(self, layout):
        self.layout = layout
        self.offsets = layout.offsets   # each buffer's first stream index
        self.buffers = [torch.empty(n, dtype=b[0].dtype, device=b[0].device)
                        for b, n in zip(layout.buckets, layout.numels)]
        self.views = layout.views(self.buffers)
        with torch.no_grad():
            for p, view in zip(layout.params, self.views):
                view.copy_(p)
                p.data = view        # the parameter now lives in the buffer
                if p.grad is not None:
                    p.grad = p.grad.contiguous()

    def check_bound(self):
        """Raise if a parameter was re-bound away from its buffer (model.to(),
        model.half(), load_state_dict(assign=True) on the same Parameter objects),
        which the fused ops would otherwise silently miss."""
        for p, view in zip(self.layout.params, self.views):
            if p.data_ptr() != view.data_ptr() or p.shape != view.shape:
                raise RuntimeError(
                    f"a parameter of shape {tuple(p.shape)} no longer lives in the optimizer's "
                    "flat buffer: build the optimizer after moving or casting the model")

    def sum_over_shards(self, t):
        """A sum over the whole model is this process's: nothing is sharded (sharded.ShardedParams)."""
        return t

    def gathering(self):
        """Around a pass (sharded.ShardedParams: FSDP2 must gather the weights anew)."""
        return contextlib.nullcontext()
