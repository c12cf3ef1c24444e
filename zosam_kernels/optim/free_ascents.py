"""Ascents that need no pass of their own, and an instrument (engine.py runs them).

MomentumAscent (MSAM, Becker et al. 2024, arXiv 2401.12033)
    eps = sign rho v / ||v||, v the base optimizer's momentum (SGD's momentum_buffer,
    Adam's exp_avg); the published default sign is -1 (against the momentum,
    as Nesterov's look-ahead). No extra pass; before the first step there is
    no momentum and eps = 0. A base optimizer that keeps no momentum (SGD with
    momentum=0, Adam with beta1=0, Adagrad) is refused, at construction and
    at every step: eps would be 0 at every step, MSAM silently plain SGD.
    (The authors' code then perturbs along the last gradient; that is another
    method, not offered under this name.) Weight decay: the engine restores
    theta before the base step, so a base optimizer's coupled weight decay
    (SGD's weight_decay) decays theta; the authors' MSAM for SGD decays
    theta - rho v/||v||, the weights they keep between steps. The two differ
    by lr * wd * rho v/||v|| per step (docs/DESIGN.md, "The engine").

NoisyOracleAscent (an instrument, not a method)
    eps = rho (c g/||g|| + sqrt(1 - c^2) u_perp), u_perp a random unit direction
    orthogonal to the gradient g at theta (one gradient pass), so cos(eps, g) = c
    exactly: which cosine does SAM's benefit need? Under a perturbation mask P,
    g and u are P g and P u: eps lies on the mask and cos(eps, P g) = c.

Under a perturbation mask (components.py) each keeps eps on it: MSAM's v is
P v, normalised on the mask.

MomentumAscent moves the weights in place along v and back by the opposite
move (no parameter-sized buffer; back to theta within float32 rounding).
"""
from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence, cast

import torch

from ..seeds import check_seed, derived_seed
from . import formulas
from .gradient_ascent import GradientAscent
from .stream_ascents import check_radius_scale
from .checks import check_nonnegative
from .components import Ascent, Plan, same_in_every_group
from .directions import stream_like
from .passes import phase

if TYPE_CHECKING:
    from .components import StepView

MOMENTUM_KEYS = ("momentum_buffer", "exp_avg")   # SGD's, Adam's and AdamW's


def momentum_of(step: StepView) -> list[Optional[torch.Tensor]]:
    """The base optimizer's momentum of each weight (None where it keeps none yet),
    kept to the step's perturbation restriction."""
    out = []
    for p in step.params:
        state = step.state(p)
        out.append(next((state[k] for k in MOMENTUM_KEYS if torch.is_tensor(state.get(k))), None))
    return step.restrict(step.params, out)


def check_keeps_momentum(group: dict[str, Any], who: str) -> None:
    """Refuse a param group whose base optimizer keeps no momentum (SGD's momentum,
    Adam's beta1): `who` perturbs along it and would never perturb."""
    beta = group["momentum"] if "momentum" in group else group["betas"][0] if "betas" in group else None
    if beta is None or not beta > 0:
        setting = ("momentum=0" if "momentum" in group else f"betas[0]={beta!r}" if "betas" in group
                   else "a base optimizer without momentum")
        raise ValueError(f"{setting}: {who} perturbs along the base optimizer's momentum, and this one keeps "
                         "none, so eps would be 0 at every step (plain SGD); give the base optimizer momentum "
                         "(torch.optim.SGD(momentum=0.9), Adam's betas[0] > 0)")


class Along:
    """The weights moved along per-parameter tensors by a device scalar, in place:
    theta + s t after move_(s), theta again (within float32 rounding) after move_(0)."""

    def __init__(self, params: Sequence[torch.Tensor], tensors: Sequence[Optional[torch.Tensor]]):
        self.pairs = [(p, t) for p, t in zip(params, tensors) if t is not None]
        self.net: Optional[torch.Tensor] = None

    @torch.no_grad()
    def move_(self, scale: torch.Tensor) -> None:
        if not self.pairs:
            return
        delta = scale if self.net is None else scale - self.net
        for p, t in self.pairs:
            p.addcmul_(t, delta)
        self.net = scale


class MomentumAscent(Ascent):
    """MomentumAscent(rho=0.3, sign=-1, radius_scale="absolute"): MSAM's perturbation along the
    momentum. radius_scale="relative": in units of each tensor's RMS s_t (ascents.StreamAscent),
    where the momentum, a gradient, is s v: eps = sign rho sqrt(d) s (s v) / ||s v||."""

    estimates_gradient = False
    measures_at_theta = False
    reusable = False   # eps follows the momentum, which every step changes
    reports = ("sign", "radius_scale")

    def __init__(self, rho: float = 0.3, sign: int = -1, radius_scale: str = "absolute"):
        check_nonnegative("rho", rho)
        if sign not in (1, -1):
            raise ValueError(f"sign must be 1 (along the momentum) or -1 (against it, MSAM's default), "
                             f"got {sign!r}")
        check_radius_scale(radius_scale)
        self.rho, self.sign, self.radius_scale = rho, sign, radius_scale

    def group_defaults(self) -> dict[str, Any]:
        return {"rho": self.rho}

    def check_group(self, group: dict[str, Any]) -> None:
        check_nonnegative("rho", group["rho"])
        check_keeps_momentum(group, "MSAM (MomentumAscent)")

    def check_groups(self, groups: Sequence[dict[str, Any]]) -> None:
        same_in_every_group(groups, "rho", when="at construction")

    @contextlib.contextmanager
    def perturbed(self, step: StepView) -> Iterator[None]:
        rho = step.radius()
        v = momentum_of(step)
        if step.plan is Plan.NONE or all(t is None for t in v):
            yield
            return
        with torch.no_grad(), phase("perturb"):
            if self.radius_scale == "relative":
                units: list[Any] = [None if t is None else formulas.tensor_rms(p, step.masks.get(p))
                                    for p, t in zip(step.params, v)]
                v = [None if t is None else s * t for s, t in zip(units, v)]   # the momentum in RMS units
                size = rho * sum(formulas.active_count(p, step.masks.get(p))
                                 for p, t in zip(step.params, v) if t is not None) ** 0.5
                norm = formulas.norm([t for t in v if t is not None])
                v = [None if t is None else s * t for s, t in zip(units, v)]   # back to the weights' units
            else:
                size, norm = rho, formulas.norm([t for t in v if t is not None])
            present = [t for t in v if t is not None]
            along = Along(step.params, v)
            along.move_(self.sign * size / (norm + formulas.EPS))
        try:
            yield
        finally:
            with phase("restore"):
                along.move_(torch.zeros((), device=present[0].device))


class OrthogonalMix:
    """The noisy oracle's aim piece (for GradientAscent): eps = rho (c g/||g|| +
    sqrt(1 - c^2) u_perp/||u_perp||), u_perp the part of a stream direction (drawn
    from (the ascent's seed, step) on the active weights) orthogonal to g."""

    def __init__(self, cosine: float):
        self.cosine = cosine

    def __call__(self, step: StepView, params: list[torch.Tensor], grads: list[torch.Tensor],
                 seed: int) -> list[torch.Tensor]:
        rho = step.radius()
        grads = cast(list[torch.Tensor], step.restrict(params, grads))
        u = cast(list[torch.Tensor], step.restrict(params, stream_like(params, step.masks,
                                                                       derived_seed(seed, step.index, 0),
                                                                       step.masks.layout)))
        g_norm = formulas.norm(grads) + formulas.EPS
        u_perp = formulas.orthogonal_part(u, grads)
        u_norm = formulas.norm(u_perp) + formulas.EPS
        c, s = self.cosine, math.sqrt(1 - self.cosine ** 2)
        return [rho * (c * g / g_norm + s * v / u_norm) for g, v in zip(grads, u_perp)]


class NoisyOracleAscent(GradientAscent):
    """NoisyOracleAscent(rho=0.05, cosine=0.5, seed=0): the gradient at theta
    (one gradient pass, as SAM), mixed with a random unit direction
    orthogonal to it (drawn from the stream on the active weights) so that
    cos(eps, g) = cosine: the gradient ascent with the OrthogonalMix aim."""

    reports = GradientAscent.reports + ("cosine",)

    def __init__(self, rho: float = 0.05, cosine: float = 0.5, seed: int = 0):
        if not isinstance(cosine, (int, float)) or isinstance(cosine, bool) or not 0 <= cosine <= 1:
            raise ValueError(f"cosine must be a number in [0, 1], got {cosine!r}")
        check_seed(seed)
        super().__init__(rho=rho, seed=seed, aim=OrthogonalMix(float(cosine)))
        self.cosine = float(cosine)
