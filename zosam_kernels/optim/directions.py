"""Where ZO-SAM's directions live: regenerated inside fused ops over flat
buffers (the fast path), or materialised tensor by tensor (the reference).

Both apply the same update: for seeds s[lo:hi] of the step and coefficients c,
    theta += (sum_k c[k] u(s[lo + k])) * mask * |saved theta| ** scale_power
where scale_power (ASAM's |theta| scaling) is used only between save_() and
release_(); both read the same direction stream, so they agree to rounding.
An optional perturbation mask (set_perturbation_mask_, for ZOSSAM) restricts
the directions further; gradients and weights stay under the sparse mask only.
"""
import torch

from .. import ops
from ..flat import FlatParams, stream_offsets, unique_trainable
from ..masks import ParamMasks


def seeds_tensor(seeds, device):
    t = torch.tensor(seeds, dtype=torch.int64)
    if device.type == "cuda":
        # pinned + non_blocking: the copy is queued, the host does not wait for the GPU
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class FlatDirections:
    """One fused op per (device, dtype) bucket; no parameter-sized temporaries."""

    def __init__(self, params, masks):
        self.flat = FlatParams(params, masks)
        self.params = self.flat.params
        self.device = self.params[0].device
        self._saved = None
        self._perturb = None
        self._direction_masks = [b.mask for b in self.flat.buckets]

    def set_perturbation_mask_(self, mask):
        """mask: a flat bool tensor over the stream (all buckets, in order), or None."""
        self._perturb = mask

    def begin(self, seeds):
        self.flat.check_bound()
        self._seeds = {b.buffer.device: seeds_tensor(seeds, b.buffer.device) for b in self.flat.buckets}
        self._direction_masks = [self._direction_mask(i, b) for i, b in enumerate(self.flat.buckets)]

    def _direction_mask(self, i, b):
        """The sparse mask AND the perturbation mask, into a bool buffer kept between steps
        (re-made each step, since either may have changed)."""
        if self._perturb is None:
            return b.mask
        part = self._perturb[b.stream_offset:b.stream_offset + b.numel].to(b.buffer.device)
        if b.mask is None:
            return part
        out = self._direction_masks[i]
        if out is None or out is b.mask:
            out = torch.empty_like(b.mask)
        return torch.logical_and(part, b.mask, out=out)

    def add_(self, lo, hi, coefs, scale_power=None):
        for b, mask in zip(self.flat.buckets, self._direction_masks):
            dev = b.buffer.device
            ops.add_directions_(b.buffer, self._seeds[dev][lo:hi], coefs.to(dev), mask,
                                self._scale(b, scale_power), scale_power or 1, b.stream_offset)

    def sq_norm(self, coefs, scale_power=None):
        total = None
        for b, mask in zip(self.flat.buckets, self._direction_masks):
            dev = b.buffer.device
            n = ops.directions_sq_norm(self._seeds[dev], coefs.to(dev), b.numel, mask,
                                       self._scale(b, scale_power), scale_power or 1, b.stream_offset)
            total = n.to(self.device) if total is None else total + n.to(self.device)
        return total

    def _scale(self, bucket, scale_power):
        return None if scale_power is None else self._saved[self.flat.buckets.index(bucket)]

    def save_(self):
        self._saved = [b.buffer.clone() for b in self.flat.buckets]

    def restore_(self):
        for b, s in zip(self.flat.buckets, self._saved):
            b.buffer.copy_(s)

    def release_(self):
        self._saved = None

    def refresh_masks_(self):
        self.flat.refresh_masks_()

    def mask_params_(self):
        self.flat.mask_params_()

    def observe_gradients(self):
        self.flat.observe_gradients()

    def mask_grads_(self):
        self.flat.mask_grads_()


class TensorDirections:
    """The unfused baseline: each direction materialised per tensor, plain torch ops."""

    def __init__(self, params, masks):
        self.params = unique_trainable(params)
        self.device = self.params[0].device
        self.masks = ParamMasks(self.params, masks)
        self.offsets = stream_offsets(self.params)
        self._saved = None
        self._perturb = None
        self.mask_params_()

    def set_perturbation_mask_(self, mask):
        """mask: a flat bool tensor over the stream, or None."""
        self._perturb = mask

    def begin(self, seeds):
        self._seeds = list(seeds)

    def _direction(self, p, lo, hi, coefs, scale_power):
        d = torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
        for k, seed in enumerate(self._seeds[lo:hi]):
            u = ops.gaussian(seed, p.numel(), self.offsets[id(p)], device=p.device)
            d.add_(u * coefs[k].to(p.device))
        d = d.view_as(p)
        mask = self.masks.get(p)
        if mask is not None:
            d = d * mask
        if self._perturb is not None:
            start = self.offsets[id(p)]
            d = d * self._perturb[start:start + p.numel()].view_as(p).to(p.device)
        if scale_power is not None:
            d = d * self._saved[id(p)].abs() ** scale_power
        return d

    @torch.no_grad()
    def add_(self, lo, hi, coefs, scale_power=None):
        for p in self.params:
            p.add_(self._direction(p, lo, hi, coefs, scale_power))

    @torch.no_grad()
    def sq_norm(self, coefs, scale_power=None):
        sq = [self._direction(p, 0, len(self._seeds), coefs, scale_power).pow(2).sum()
              for p in self.params]
        return torch.stack([s.to(self.device) for s in sq]).sum()

    def save_(self):
        self._saved = {id(p): p.detach().clone() for p in self.params}

    @torch.no_grad()
    def restore_(self):
        for p in self.params:
            p.copy_(self._saved[id(p)])

    def release_(self):
        self._saved = None

    def refresh_masks_(self):
        self.masks.refresh_()

    def mask_params_(self):
        self.masks.mask_params_()

    def observe_gradients(self):
        self.masks.observe_gradients()

    def mask_grads_(self):
        self.masks.mask_grads_()
