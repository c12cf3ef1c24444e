"""SSAM's perturbation masks (Mi et al., "Make Sharpness-Aware Minimization
Stronger: A Sparsified Perturbation Approach", NeurIPS 2022), shared by SSAM
and ZOSSAM.

A perturbation mask keeps k = round((1 - sparsity) * n) of the n active
(unpruned) weights in the perturbation; it is remade every `update_interval`
steps (at steps 0, T, 2T, ...):

- "fisher" (SSAM-F): the k active weights with the largest empirical Fisher
  sum g^2, summed over the mini-batch gradients seen since the last remake.
- "dynamic" (SSAM-D): random at first; then drop the N perturbed weights with
  the smallest |g| and grow N random ones among the active unperturbed (the
  just-dropped included, as in the paper's Algorithm 2), with
  N = round(f(t) k), f(t) = drop_rate / 2 (1 + cos(pi t / total_steps)).

The mask and the Fisher sum are flat buffers per bucket of the optimizer's
layout (flat.Layout), so the fused ops read the mask as it is. The Fisher sum
is accumulated in place; a remake (every T steps) is the only time
temporaries are made. Random draws come from a generator seeded by
(seed, step), so a resumed run draws the same.
"""
import math

import torch

from ..masks import keep_top_across
from ..seeds import check_seed, derived_seed
from .base import check_nonnegative, check_positive_int

KINDS = ("fisher", "dynamic")


class PerturbationMask:
    """`buffers`: the mask in use, one flat bool tensor per bucket (None until the
    first is made); `fisher`: the Fisher sum since the last remake (kind "fisher")."""

    def __init__(self, sparsity, kind, update_interval, drop_rate, total_steps, seed):
        check_nonnegative("sparsity", sparsity)
        if not 0 <= sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
        if kind not in KINDS:
            raise ValueError(f"mask must be 'fisher' or 'dynamic', got {kind!r}")
        check_positive_int("update_interval", update_interval)
        check_nonnegative("drop_rate", drop_rate)
        if not drop_rate <= 1:
            raise ValueError(f"drop_rate must be in [0, 1], got {drop_rate!r}")
        if kind == "dynamic" and (not isinstance(total_steps, int) or isinstance(total_steps, bool)
                                  or total_steps < 1):
            raise ValueError("total_steps (the length of training in optimizer steps, the horizon of "
                             f"the cosine-decayed drop rate) must be an int >= 1 for mask='dynamic', "
                             f"got {total_steps!r}")
        check_seed(seed)
        self.sparsity, self.kind, self.update_interval = float(sparsity), kind, update_interval
        self.drop_rate, self.total_steps, self.seed = float(drop_rate), total_steps, seed
        self.layout, self.buffers, self.fisher = None, None, None

    def relayout_(self, layout):
        """Follow the optimizer's layout; a new layout starts the mask afresh."""
        self.layout, self.buffers, self.fisher = layout, None, None

    def views(self):
        """The mask per parameter (views of the flat buffers), in stream order."""
        return self.layout.views(self.buffers)

    def due(self, step):
        return self.buffers is None or step % self.update_interval == 0

    # ---- the rules; masks, scores and gradients are lists of per-bucket flat tensors

    def keep(self, active):
        return round((1 - self.sparsity) * sum(int(a.sum()) for a in active))

    def _uniform(self, step):
        g = torch.Generator().manual_seed(derived_seed(self.seed, step, 1))
        return [torch.rand(n, generator=g).to(b[0].device) for b, n in zip(self.layout.buckets,
                                                                          self.layout.numels)]

    def random(self, step, active):
        return keep_top_across(self._uniform(step), self.keep(active), active)

    def drop_rate_at(self, step):
        t = min(step, self.total_steps)
        return self.drop_rate / 2 * (1 + math.cos(math.pi * t / self.total_steps))

    def drop_and_grow(self, step, mask, grad, active):
        mask = [m & a for m, a in zip(mask, active)]
        n = min(round(self.drop_rate_at(step) * self.keep(active)), sum(int(m.sum()) for m in mask))
        dropped = keep_top_across([-g.abs() for g in grad], n, mask)
        mask = [m & ~d for m, d in zip(mask, dropped)]
        grown = keep_top_across(self._uniform(step), n, [a & ~m for a, m in zip(active, mask)])
        return [m | g for m, g in zip(mask, grown)]

    def remade(self, step, grads, active):
        """The mask for `step` from the gradients of this step (per parameter, in
        stream order; None: no gradient) and the active weights (per bucket);
        new tensors, not installed."""
        grad = self.layout.new_buffers(torch.float32, fill=0.0)
        pairs = [(v, g) for v, g in zip(self.layout.views(grad), grads) if g is not None]
        if pairs:
            torch._foreach_copy_([v for v, _ in pairs], [g for _, g in pairs])
        if self.kind == "fisher":
            scores = [g * g if f is None else f + g * g
                      for g, f in zip(grad, self.fisher or [None] * len(grad))]
            return keep_top_across(scores, self.keep(active), active)
        if self.buffers is None:
            return self.random(step, active)
        return self.drop_and_grow(step, self.buffers, grad, active)

    @torch.no_grad()
    def commit_(self, mask, grads, remade):
        """After a step that was taken: install the remade mask and restart the
        Fisher sum, or add this step's g^2 to it (in place)."""
        if remade:
            self.buffers = mask
            if self.kind == "fisher":
                if self.fisher is None:
                    self.fisher = [torch.zeros(m.shape, device=m.device) for m in mask]
                else:
                    torch._foreach_zero_(self.fisher)
            return
        if self.kind == "fisher":
            pairs = [(f, g) for f, g in zip(self.layout.views(self.fisher), grads) if g is not None]
            if pairs:
                torch._foreach_addcmul_([f for f, _ in pairs], [g for _, g in pairs],
                                        [g for _, g in pairs])

    def state_dict(self):
        return {"mask": self.buffers, "fisher": self.fisher}

    def load_state_dict(self, state):
        devices = [b[0].device for b in self.layout.buckets]
        self.buffers, self.fisher = (
            None if state.get(key) is None else [t.to(d, copy=True) for t, d in zip(state[key], devices)]
            for key in ("mask", "fisher"))


def active_weights(masks):
    """The active (unpruned) weights per bucket, from an optimizer's Masks."""
    return [m if m is not None else torch.ones(n, dtype=torch.bool, device=b[0].device)
            for m, b, n in zip(masks.buffers, masks.layout.buckets, masks.layout.numels)]


class PerturbationMasked:
    """Mixed into an optimizer of the shared base (before it in the bases) that
    sets `perturbation_mask`: the mask follows the optimizer's layout, is
    remade from a step's gradients when due, and lives in its state_dict."""

    def _relayout(self, layout):
        super()._relayout(layout)
        self.perturbation_mask.relayout_(layout)

    def _mask_for_step(self, step, grads):
        """(mask, remade): the mask of `step`, remade from `grads` (new tensors,
        installed by commit_ once the step is taken) when due, else the one in use."""
        pm = self.perturbation_mask
        if pm.due(step):
            return pm.remade(step, grads, active_weights(self.masks)), True
        return pm.buffers, False

    def _extra_state(self):
        return super()._extra_state() | {"perturbation_mask": self.perturbation_mask.state_dict()}

    def _load_extra_state(self, extra):
        super()._load_extra_state(extra)
        self.perturbation_mask.load_state_dict(extra.get("perturbation_mask", {}))
