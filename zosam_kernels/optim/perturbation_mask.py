"""SSAM's perturbation masks (Mi et al., "Make Sharpness-Aware Minimization
Stronger: A Sparsified Perturbation Approach", NeurIPS 2022), and the part
that keeps an ascent's eps to one (SSAM with the gradient ascent, ZO-SSAM
with the zeroth-order ascent).

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
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional, Sequence, cast

import torch

from ..masks import keep_top_across
from ..seeds import check_seed, derived_seed
from .checks import check_nonnegative, check_positive_int
from .components import Part, Plan

if TYPE_CHECKING:
    from ..flat import FlatParams, InPlaceParams, Layout
    from ..masks import Masks
    from ..sharded import ShardedParams
    from .components import StepView

KINDS = ("fisher", "dynamic")
DROP_RATE = 0.5   # SSAM-D's, when not given


class PerturbationMask:
    """`buffers`: the mask in use, one flat bool tensor per bucket (None until the
    first is made); `fisher`: the Fisher sum since the last remake (kind "fisher")."""

    def __init__(self, sparsity: float, kind: str, update_interval: int, drop_rate: Optional[float],
                 total_steps: Optional[int], seed: int) -> None:
        check_nonnegative("sparsity", sparsity)
        if not 0 <= sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
        if kind not in KINDS:
            raise ValueError(f"mask must be 'fisher' or 'dynamic', got {kind!r}")
        check_positive_int("update_interval", update_interval)
        if kind == "fisher":
            for name, value in (("drop_rate", drop_rate), ("total_steps", total_steps)):
                if value is not None:
                    raise ValueError(f"{name}: only the dynamic mask (mask='dynamic') drops and grows, and the "
                                     f"Fisher mask would ignore it; drop {name} or set mask='dynamic'")
        if drop_rate is None:
            drop_rate = DROP_RATE
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
        self.layout: Any = None            # flat.Layout, from relayout_
        self.buffers: Optional[list[torch.Tensor]] = None
        self.fisher: Optional[list[torch.Tensor]] = None

    def relayout_(self, layout: Layout) -> None:
        """Follow the optimizer's layout; a new layout starts the mask afresh."""
        self.layout, self.buffers, self.fisher = layout, None, None

    def views(self) -> list[Optional[torch.Tensor]]:
        """The mask per parameter (views of the flat buffers), in stream order."""
        return cast(list[Optional[torch.Tensor]], self.layout.views(self.buffers))

    def due(self, step: int) -> bool:
        return self.buffers is None or step % self.update_interval == 0

    # ---- the rules; masks, scores and gradients are lists of per-bucket flat tensors

    def keep(self, active: Sequence[torch.Tensor]) -> int:
        return round((1 - self.sparsity) * sum(int(a.sum()) for a in active))

    def _uniform(self, step: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(derived_seed(self.seed, step, 1))
        return [torch.rand(n, generator=g).to(b[0].device) for b, n in zip(self.layout.buckets,
                                                                          self.layout.numels)]

    def random(self, step: int, active: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return keep_top_across(self._uniform(step), self.keep(active), active)

    def drop_rate_at(self, step: int) -> float:
        t = min(step, cast(int, self.total_steps))
        return self.drop_rate / 2 * (1 + math.cos(math.pi * t / cast(int, self.total_steps)))

    def drop_and_grow(self, step: int, mask: Sequence[torch.Tensor], grad: Sequence[torch.Tensor],
                      active: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        mask = [m & a for m, a in zip(mask, active)]
        n = min(round(self.drop_rate_at(step) * self.keep(active)), sum(int(m.sum()) for m in mask))
        dropped = keep_top_across([-g.abs() for g in grad], n, mask)
        mask = [m & ~d for m, d in zip(mask, dropped)]
        grown = keep_top_across(self._uniform(step), n, [a & ~m for a, m in zip(active, mask)])
        return [m | g for m, g in zip(mask, grown)]

    def remade(self, step: int, grads: Sequence[Optional[torch.Tensor]],
               active: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The mask for `step` from the gradients of this step (per parameter, in
        stream order; None: no gradient) and the active weights (per bucket);
        new tensors, not installed."""
        grad = self.layout.new_buffers(torch.float32, fill=0.0)
        pairs = [(v, g) for v, g in zip(self.layout.views(grad), grads) if g is not None]
        if pairs:
            torch._foreach_copy_([v for v, _ in pairs], [g for _, g in pairs])
        if self.kind == "fisher":
            scores = [g * g if f is None else f + g * g
                      for g, f in zip(grad, self.fisher or cast(list[Optional[torch.Tensor]], [None] * len(grad)))]
            return keep_top_across(scores, self.keep(active), active)
        if self.buffers is None:
            return self.random(step, active)
        return self.drop_and_grow(step, self.buffers, grad, active)

    @torch.no_grad()
    def commit_(self, mask: list[torch.Tensor], grads: Sequence[Optional[torch.Tensor]], remade: bool) -> None:
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

    def state_dict(self) -> dict[str, Any]:
        return {"mask": self.buffers, "fisher": self.fisher}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        devices = [b[0].device for b in self.layout.buckets]
        self.buffers, self.fisher = (
            None if state.get(key) is None else [t.to(d, copy=True) for t, d in zip(state[key], devices)]
            for key in ("mask", "fisher"))


def active_weights(masks: Masks) -> list[torch.Tensor]:
    """The active (unpruned) weights per bucket, from an optimizer's Masks."""
    return [m if m is not None else torch.ones(n, dtype=torch.bool, device=b[0].device)
            for m, b, n in zip(masks.buffers, masks.layout.buckets, masks.layout.numels)]


class PerturbationMasking(Part):
    """PerturbationMasking(sparsity=0.5, mask="fisher", update_interval=1950, drop_rate=None,
    total_steps=None, seed=0): eps kept to a perturbation mask among the active weights.
    drop_rate (0.5 when not given) and total_steps are the dynamic mask's; the
    Fisher mask refuses them.

    With the gradient ascent (SSAM), the mask of step t is remade (t = 0, T,
    2T, ...) from this step's gradient at theta before eps is formed, and the
    Fisher sums those gradients; as in the paper, ||g|| is the whole
    gradient's norm, so ||eps|| <= rho. With the zeroth-order ascent (ZO-SSAM)
    the directions themselves are restricted to the mask, so the estimate and
    eps live on it and ||eps|| = rho; the only gradient of a step is the
    update's, grad L(theta + eps): the Fisher sums those, SSAM-D drops by
    them, the mask of step t is made from step t - 1's, and step 0's is random
    (both kinds). The restriction costs nothing in the fused ops: they read
    the perturbation mask instead of the sparse one (kept within the active
    weights when the sparse topology changes)."""

    uses_theta_gradient = True
    restricts_directions = True
    state_keys = ("perturbation_mask",)
    reports = ("perturbation_mask",)

    def __init__(self, sparsity: float = 0.5, mask: str = "fisher", update_interval: int = 1950,
                 drop_rate: Optional[float] = None, total_steps: Optional[int] = None, seed: int = 0) -> None:
        self.perturbation_mask = PerturbationMask(sparsity, mask, update_interval, drop_rate, total_steps, seed)

    def relayout(self, layout: Layout, masks: Masks, flat: InPlaceParams | FlatParams | ShardedParams) -> None:
        self.perturbation_mask.relayout_(layout)
        self._masks, self._topology = masks, masks.changes
        self._pending: Any = None

    def _for_step(self, step_index: int,
                  grads: Sequence[Optional[torch.Tensor]]) -> tuple[list[torch.Tensor], bool]:
        """(mask, remade): the mask of a step, remade from `grads` (new tensors,
        installed by commit once the step is taken) when due, else the one in use."""
        pm = self.perturbation_mask
        if pm.due(step_index):
            return pm.remade(step_index, grads, active_weights(self._masks)), True
        return cast(list[torch.Tensor], pm.buffers), False

    def before_ascent(self, step: StepView) -> None:
        if step.first_order:
            if step.plan is Plan.FULL:
                self._pending = self._for_step(step.index, cast(list[Optional[torch.Tensor]], step.theta_grads))
                step.restriction = self._pending[0]
            return
        pm = self.perturbation_mask
        if pm.buffers is None:   # installed by commit if the step is taken
            self._pending = pm.random(step.index, active_weights(self._masks))
            step.restriction = self._pending
            return
        if self._topology != self._masks.changes:   # perturbed weights that were pruned leave it
            for b, a in zip(pm.buffers, active_weights(self._masks)):
                b.logical_and_(a)
            self._topology = self._masks.changes
        step.restriction = pm.buffers

    def commit(self, step: StepView) -> None:
        pm = self.perturbation_mask
        if step.first_order:
            if self._pending is not None:
                pm.commit_(self._pending[0], cast(list[Optional[torch.Tensor]], step.theta_grads), self._pending[1])
        else:
            if pm.buffers is None:
                pm.commit_(self._pending, [], remade=True)
            grads = step.grads()
            mask, remade = self._for_step(step.index + 1, grads)   # the next step's mask, from this one's
            pm.commit_(mask, grads, remade)
        self._pending = None

    def state_dict(self) -> dict[str, Any]:
        return {"perturbation_mask": self.perturbation_mask.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.perturbation_mask.load_state_dict(state.get("perturbation_mask", {}))
