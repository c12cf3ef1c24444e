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

Masks, scores and gradients are flat vectors over the parameters in the
direction stream's order (flat.bucket_order). Random draws come from a
generator seeded by (seed, step), so a resumed run draws the same.
"""
import math

import torch

from ..flat import bucket_order
from .base import check_nonnegative
from .zosam import check_seed, direction_seed

KINDS = ("fisher", "dynamic")


def flatten(params, tensors, default=0.0):
    """Concatenate per-parameter tensors (dict id(param) -> tensor; an absent
    one is `default` everywhere) in stream order."""
    out = []
    for group in bucket_order(params):
        for p in group:
            t = tensors.get(id(p))
            out.append(t.reshape(-1) if t is not None else torch.full((p.numel(),), default, device=p.device))
    return torch.cat(out)


def split(params, flat):
    """The inverse of flatten: dict id(param) -> tensor of the parameter's shape (copies)."""
    out, start = {}, 0
    for group in bucket_order(params):
        for p in group:
            out[id(p)] = flat[start:start + p.numel()].view_as(p).clone()
            start += p.numel()
    return out


class MaskRule:
    """The hyperparameters of a perturbation mask and the rules that remake it."""

    def __init__(self, sparsity, kind, update_interval, drop_rate, total_steps, seed):
        check_nonnegative("sparsity", sparsity)
        if not 0 <= sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
        if kind not in KINDS:
            raise ValueError(f"mask must be 'fisher' or 'dynamic', got {kind!r}")
        if not isinstance(update_interval, int) or isinstance(update_interval, bool) or update_interval < 1:
            raise ValueError(f"update_interval must be an int >= 1, got {update_interval!r}")
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

    def due(self, step):
        return step % self.update_interval == 0

    def keep(self, active):
        return round((1 - self.sparsity) * int(active.sum()))

    def _top(self, scores, eligible, k):
        """Bool mask of the k largest scores among the eligible entries."""
        out = torch.zeros_like(eligible)
        if k > 0:
            out[torch.topk(torch.where(eligible, scores, -math.inf), k).indices] = True
        return out

    def _uniform(self, step, like):
        g = torch.Generator().manual_seed(direction_seed(self.seed, step, 1))
        return torch.rand(like.numel(), generator=g).to(like.device)

    def random(self, step, active):
        return self._top(self._uniform(step, active), active, self.keep(active))

    def fisher(self, fisher, active):
        return self._top(fisher, active, self.keep(active))

    def drop_rate_at(self, step):
        t = min(step, self.total_steps)
        return self.drop_rate / 2 * (1 + math.cos(math.pi * t / self.total_steps))

    def drop_and_grow(self, step, mask, grad, active):
        mask = mask & active
        n = min(round(self.drop_rate_at(step) * self.keep(active)), int(mask.sum()))
        dropped = self._top(-grad.abs(), mask, n)
        mask = mask & ~dropped
        return mask | self._top(self._uniform(step, mask), active & ~mask, n)

    def remake(self, step, mask, fisher, grad, active):
        """The mask for this step, given the last one (None at first)."""
        if self.kind == "fisher":
            return self.fisher(fisher, active)
        if mask is None:
            return self.random(step, active)
        return self.drop_and_grow(step, mask, grad, active)
