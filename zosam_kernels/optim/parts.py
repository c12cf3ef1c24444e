"""Parts: what an ascent can be composed with (engine.py; the perturbation
mask of SSAM is perturbation_mask.PerturbationMasking).

Reuse(k)                     eps found every k-th step, reused in between (ZO-LookSAM)
LookAhead(k, alpha)          LookSAM's g_v: SAM every k-th step, g + alpha ||g||/||g_v|| g_v between
SurrogateGap(alpha)          GSAM's gradient surgery: g_p - alpha g_perp
LearningRateRadius(rho_min)  GSAM's radius schedule: rho follows the learning rate
DataSelection(gamma)         ESAM's sharpness-sensitive data selection

Each says in `refuses` which compositions its math does not allow.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence, cast

import torch

from . import formulas
from .checks import check_fraction, check_nonnegative, check_positive_int
from .components import Ascent, Part, Plan, same_in_every_group
from .passes import check_takes_indices

if TYPE_CHECKING:
    from .components import StepView


class Reuse(Part):
    """Reuse(k): every k-th step (step 0 included) the ascent finds eps and keeps
    it; in between the step is one forward + backward at theta + eps_kept.
    The zeroth-order ascent keeps eps as m seeds and m coefficients (no
    parameter-sized buffer), the gradient ascent as tensors (one). The loss
    of an in-between step is the loss at theta + eps (no pass at theta)."""

    decides_plan = True
    reuses_eps = True
    state_keys = ("k",)
    reports = ("k",)

    def __init__(self, k: int = 5):
        check_positive_int("k", k)
        self.k = k

    def refuses(self, ascent: Ascent, parts: Sequence[Part]) -> Optional[str]:
        if not ascent.reusable:
            return f"{type(ascent).__name__} finds eps from what changes every step; there is nothing to reuse"
        return None

    def plan(self, step: StepView) -> None:
        if step.index % self.k and step.can_reuse:
            step.plan = Plan.REUSE
        else:
            step.keep_eps = True   # the ascent keeps it, and saves it with the optimizer's state

    def state_dict(self) -> dict[str, Any]:
        return {"k": self.k}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.k = int(state.get("k", self.k))


class LookAhead(Part):
    """LookSAM (Liu et al., CVPR 2022): every k-th step (step 0 included) is a full
    step, g = the ascent's gradient at theta, g_s = grad L(theta + eps), and it
    keeps the part of g_s orthogonal to g,

        g_v = g_s - (<g_s, g> / ||g||^2) g;

    in between, one forward + backward gives g at theta, no perturbation (the
    weights never move, so there is nothing to restore), and the update uses

        g + alpha (||g|| / ||g_v||) g_v.

    Norms over the whole model. g_v lives in the optimizer state
    ("looksam_g_v", one tensor per weight), so it resumes from a checkpoint."""

    uses_theta_gradient = True
    decides_plan = True
    state_keys = ("k",)
    reports = ("k",)
    _perturbed: list[torch.Tensor]
    _g_v: Sequence[torch.Tensor]

    def refuses(self, ascent: Ascent, parts: Sequence[Part]) -> Optional[str]:
        return _needs_an_estimate(ascent)

    def __init__(self, k: int = 5, alpha: float = 0.7):
        check_positive_int("k", k)
        check_nonnegative("alpha", alpha)
        self.k, self.alpha = k, alpha

    def group_defaults(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def check_group(self, group: dict[str, Any]) -> None:
        check_nonnegative("alpha", group["alpha"])

    def plan(self, step: StepView) -> None:
        if step.index % self.k:
            step.plan = Plan.NONE

    def after_update(self, step: StepView) -> None:
        if step.plan is Plan.FULL:
            step.masks.mask_grads_()   # g_v (and its norm) on the active weights only
            pairs = [(p, d) for p, d in zip(step.params, step.ascent_direction())
                     if p.grad is not None and d is not None]
            self._perturbed = [p for p, _ in pairs]
            self._g_v = formulas.orthogonal_part(cast(list[torch.Tensor], [p.grad for p in self._perturbed]),
                                                 [d for _, d in pairs])
            return
        alpha = same_in_every_group(step.groups, "alpha")
        with torch.no_grad():
            pairs = [(p.grad, step.state(p)["looksam_g_v"]) for p in step.params
                     if p.grad is not None and "looksam_g_v" in step.state(p)]
            if pairs:
                grads, g_v = [g for g, _ in pairs], [v for _, v in pairs]
                torch._foreach_add_(grads, torch._foreach_mul(g_v, formulas.looksam_scale(grads, g_v, alpha)))

    def commit(self, step: StepView) -> None:
        if step.plan is Plan.FULL:
            for p, v in zip(self._perturbed, self._g_v):
                step.keep(p, "looksam_g_v", v)
        self._g_v, self._perturbed = [], []

    def state_dict(self) -> dict[str, Any]:
        return {"k": self.k}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.k = int(state.get("k", self.k))


class SurrogateGap(Part):
    """GSAM (Zhuang et al., ICLR 2022): the update minus the part of the ascent's
    gradient g that raises the surrogate gap,

        g_perp = g - (<g, g_p> / ||g_p||^2) g_p,   update along g_p - alpha g_perp,

    g_p = grad L(theta + eps). With the zeroth-order ascent g is its estimate
    g_hat (materialised: one parameter-sized buffer for the step)."""

    uses_theta_gradient = True

    def __init__(self, alpha: float = 0.02):
        check_nonnegative("alpha", alpha)
        self.alpha = alpha

    def refuses(self, ascent: Ascent, parts: Sequence[Part]) -> Optional[str]:
        if any(p.reuses_eps for p in parts):
            return "a reused step measures no gradient at theta, and the surgery needs it"
        return _needs_an_estimate(ascent)

    def group_defaults(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def check_group(self, group: dict[str, Any]) -> None:
        check_nonnegative("alpha", group["alpha"])

    def after_update(self, step: StepView) -> None:
        if step.plan is not Plan.FULL:   # unperturbed (LookAhead's in-between steps): g_perp = 0
            return
        alpha = same_in_every_group(step.groups, "alpha")
        g = step.ascent_direction()
        pairs = [(p.grad, d) for p, d in zip(step.params, g) if p.grad is not None and d is not None]
        if pairs:
            with torch.no_grad():
                formulas.gsam_update_([p for p, _ in pairs], [d for _, d in pairs], alpha)


class LearningRateRadius(Part):
    """GSAM's schedule: rho_t = rho_min + (rho - rho_min)(lr - lr_min)/(lr_max - lr_min)
    per param group, lr the group's current learning rate (so any LR scheduler
    drives it), lr_max its lr when the optimizer is built unless given."""

    def __init__(self, rho_min: float, lr_max: Optional[float] = None, lr_min: float = 0.0):
        check_nonnegative("rho_min", rho_min)
        check_nonnegative("lr_min", lr_min)
        if lr_max is not None:
            check_nonnegative("lr_max", lr_max)
        self.rho_min, self.lr_max, self.lr_min = rho_min, lr_max, lr_min

    def group_defaults(self) -> dict[str, Any]:
        return {"rho_min": self.rho_min, "lr_min": self.lr_min, "lr_max": self.lr_max}

    def check_group(self, group: dict[str, Any]) -> None:
        if group["lr_max"] is None:   # rho follows the group's own learning rate from where it starts
            group["lr_max"] = group["lr"]
        for name in ("rho_min", "lr_min", "lr_max"):
            check_nonnegative(name, group[name])
        if not group["lr_max"] > group["lr_min"]:
            raise ValueError(f"lr_max must exceed lr_min for rho to follow the learning rate, "
                             f"got lr_max={group['lr_max']!r}, lr_min={group['lr_min']!r}")

    def radius(self, group: dict[str, Any], rho: float) -> float:
        return formulas.lr_following_radius(rho, group["rho_min"], group["lr"], group["lr_min"], group["lr_max"])


class DataSelection(Part):
    """ESAM's sharpness-sensitive data selection (Du et al., ICLR 2022): from
    per-sample losses l(theta) and l(theta + eps) (one no-grad pass), the
    update's gradient pass runs on the k = max(1, floor(gamma B)) samples whose
    loss rose most (torch.topk). With the gradient ascent l(theta) comes from
    its pass at theta; with the zeroth-order ascent it is the mean of the
    +-delta passes' per-sample losses (exact to O(delta^2)). The closure must
    take `indices` and return per-sample losses. `last_indices`: the samples
    of the last step."""

    compares_losses = True   # ranks losses after - before: common random numbers by default

    reports = ("gamma", "last_indices")

    @classmethod
    def needs_indices(cls, options: dict[str, Any]) -> bool:
        return cast(bool, options["gamma"] < 1)

    def __init__(self, gamma: float = 0.5):
        check_fraction("gamma", gamma)
        self.gamma = float(gamma)
        self.last_indices: Optional[torch.Tensor] = None
        self._chosen: Optional[torch.Tensor] = None   # this step's selection

    def refuses(self, ascent: Ascent, parts: Sequence[Part]) -> Optional[str]:
        if not ascent.measures_at_theta:
            return f"data selection compares per-sample losses at theta, which {type(ascent).__name__} never measures"
        if ascent.batch_fraction < 1:
            return ("data selection compares per-sample losses of the whole batch, and the zeroth-order "
                    "passes run on a fraction of it (zo_batch_fraction < 1)")
        return None

    def plan(self, step: StepView) -> None:
        check_takes_indices(step.closure, "ESAM's data selection (gamma < 1)")
        step.per_sample_at_theta = True

    def before_update(self, step: StepView) -> None:
        if step.plan is not Plan.FULL:   # nothing measured at theta: the whole batch
            return
        before = cast(torch.Tensor, step.at_theta)
        if before.dim() != 1:
            raise ValueError("closure must return per-sample losses (a 1-D tensor) for ESAM's data "
                             f"selection (gamma={self.gamma} < 1), got a scalar")
        after = step.extra("selection_pass", reduce=False)
        if after.shape != before.shape:
            raise ValueError(f"closure returned {tuple(after.shape)} losses at theta + eps but "
                             f"{tuple(before.shape)} at theta: ESAM needs one loss per sample")
        step.losses["the selection pass"] = after
        k = max(1, int(self.gamma * before.numel()))
        self._chosen = torch.topk(after - before, k).indices
        step.indices = self._chosen

    def commit(self, step: StepView) -> None:
        self.last_indices = self._chosen




def _needs_an_estimate(ascent: Ascent) -> Optional[str]:
    if not ascent.estimates_gradient:
        return (f"its surgery needs the ascent's estimate of the gradient at theta, and "
                f"{ascent.describe()} makes none")
    return None
