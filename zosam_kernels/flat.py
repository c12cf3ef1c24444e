"""Flat parameters: every parameter of one (device, dtype) as a view of one buffer.

With the whole model in one contiguous buffer, each fused op is one launch
for the whole model, and the direction stream index of a weight is simply its
position in the buffer (plus the sizes of the buckets before it).
"""
import torch

from .masks import MaskSource, normalize_masks


class Bucket:
    """One contiguous buffer holding the parameters of one (device, dtype)."""

    def __init__(self, params, stream_offset, masks):
        self.params = params
        self.stream_offset = stream_offset
        p0 = params[0]
        numels = [p.numel() for p in params]
        self.numel = sum(numels)
        self.buffer = torch.empty(self.numel, dtype=p0.dtype, device=p0.device)
        self.views, self.starts = [], []
        start = 0
        with torch.no_grad():
            for p, n in zip(params, numels):
                self.starts.append(start)
                view = self.buffer[start:start + n].view_as(p)
                view.copy_(p)
                p.data = view        # the parameter now lives in the buffer
                if p.grad is not None:
                    p.grad = p.grad.contiguous()
                self.views.append(view)
                start += n
        self.mask = None
        self.mask_views = {}
        self.set_masks(masks)

    @torch.no_grad()
    def set_masks(self, masks):
        """Write masks (id(param) -> bool tensor; absent = dense) into the flat
        bool buffer, made on first need and kept after (a bucket never goes
        back to unmasked, so the ops keep one signature)."""
        if self.mask is None:
            if not any(id(p) in masks for p in self.params):
                return
            self.mask = torch.empty(self.numel, dtype=torch.bool, device=self.buffer.device)
            self.mask_views = {id(p): self.mask[s:s + p.numel()].view_as(p)
                               for p, s in zip(self.params, self.starts)}
        for p in self.params:
            m = masks.get(id(p))
            view = self.mask_views[id(p)]
            if m is None:
                view.fill_(True)
            else:
                view.copy_(m)


class FlatParams:
    """Rebinds `params` (unique, requires_grad) into one buffer per (device, dtype).

    masks: mapping parameter -> bool tensor (see masks.normalize_masks); the
    flat bool buffer of a bucket holds them, and `mask_of(p)` is a view into
    it, so a topology change written into that view reaches the fused ops.
    """

    def __init__(self, params, masks=None):
        self.source = MaskSource(masks)
        masks = normalize_masks(params, masks)
        self.buckets = []
        offset = 0
        for group in bucket_order(params):
            bucket = Bucket(group, offset, masks)
            self.buckets.append(bucket)
            offset += bucket.numel
        self.numel = offset
        self.mask_params_()

    @property
    def params(self):
        return [p for b in self.buckets for p in b.params]

    @property
    def has_mask(self):
        return any(b.mask is not None for b in self.buckets)

    def mask_of(self, p):
        for b in self.buckets:
            if id(p) in b.mask_views:
                return b.mask_views[id(p)]
        return None

    def check_bound(self):
        """Raise if a parameter was re-bound away from its buffer (e.g. model.to()
        or model.half() after the optimizer was built), which the fused ops
        would otherwise silently miss."""
        for b in self.buckets:
            for p, view in zip(b.params, b.views):
                if p.data_ptr() != view.data_ptr() or p.shape != view.shape:
                    raise RuntimeError(
                        f"a parameter of shape {tuple(p.shape)} no longer lives in the optimizer's "
                        "flat buffer: build the optimizer after moving or casting the model")

    def refresh_masks_(self):
        """Re-read a masking object whose topology changed (see masks.MaskSource)
        into the flat mask buffers, and zero the newly pruned weights."""
        if self.source.changed():
            masks = normalize_masks(self.params, self.source.masks)
            for b in self.buckets:
                b.set_masks(masks)
            self.mask_params_()

    def observe_gradients(self):
        self.source.observe_gradients()

    @torch.no_grad()
    def mask_params_(self):
        for b in self.buckets:
            if b.mask is not None:
                b.buffer.mul_(b.mask)

    @torch.no_grad()
    def mask_grads_(self):
        for b in self.buckets:
            if b.mask is None:
                continue
            pairs = [(p.grad, b.mask_views[id(p)]) for p in b.params if p.grad is not None]
            if pairs:
                torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])


def unique_trainable(params):
    """Parameters in order, tied ones once, requires_grad=False ones left out."""
    seen, out = set(), []
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def bucket_order(params):
    """The trainable parameters grouped by (device, dtype), buckets in order of
    first appearance, parameters in their given order: the layout of the flat
    buffers and hence of the direction stream."""
    groups = {}
    for p in unique_trainable(params):
        groups.setdefault((p.device, p.dtype), []).append(p)
    return list(groups.values())


def stream_offsets(params):
    """id(param) -> index of its first element in the direction stream."""
    offsets, offset = {}, 0
    for group in bucket_order(params):
        for p in group:
            offsets[id(p)] = offset
            offset += p.numel()
    return offsets
