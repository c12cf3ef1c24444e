"""The gradient ascent: SAM's perturbation from the gradient at theta (engine.py runs it).

GradientAscent (SAM, Foret et al. 2021; ASAM, Kwon et al. 2021; ESAM's
stochastic weight perturbation, Du et al. 2022)

    g = grad L(theta),  eps = rho g / (||g|| + 1e-12)     (adaptive: rho T^2 g / ||T g||, T = |theta| + eta)

one forward + backward at theta, and one parameter-sized copy of theta to
restore it exactly. rho may differ per param group. Its aim piece turns
the gradient into eps (SamAim; free_ascents.OrthogonalMix for the noisy
oracle); `perturb` keeps it to some tensors (selection.py).
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator, Optional, cast

import torch

from ..seeds import check_seed, derived_seed
from . import formulas
from .checks import check_fraction, check_nonnegative
from .components import Ascent, Plan, same_in_every_group
from .passes import mean_loss, phase
from .selection import check_chosen, chosen_tensors

if TYPE_CHECKING:
    from ..flat import FlatParams, InPlaceParams, Layout
    from ..masks import Masks
    from ..sharded import ShardedParams
    from .components import StepView


class SamAim:
    """The gradient ascent's eps from the gradient g at theta (its aim piece): SAM's
    rho g / (||g|| + 1e-12), ASAM's when adaptive (T = |theta| + eta, 1 on the
    `unscaled` tensors); rho per param group. Under ESAM's stochastic weight
    perturbation (beta < 1) the authors' rescaling by 1/beta."""

    def __init__(self, beta: float = 1.0, eta: float = 0.0, unscaled: frozenset[int] = frozenset()):
        self.beta, self.eta, self.unscaled = beta, eta, unscaled

    def __call__(self, step: StepView, params: list[torch.Tensor], grads: list[torch.Tensor],
                 seed: int) -> list[Optional[torch.Tensor]]:
        adaptive = same_in_every_group(step.groups, "adaptive")
        rho_of = {id(p): step.radius(g) for g in step.groups for p in g["params"]}
        rhos = [rho_of[id(p)] for p in params]
        for rho in rhos:
            check_nonnegative("rho", rho)
        eps = formulas.sam_perturbation(grads, params, rhos, adaptive, self.eta,
                                        [id(p) in self.unscaled for p in params])
        if self.beta < 1:
            torch._foreach_div_(eps, self.beta)
        return step.restrict(params, eps)   # a perturbation mask (SSAM): ||g|| stays the whole one


class GradientAscent(Ascent):
    """GradientAscent(rho=0.05, adaptive=False, m_sharpness=False, beta=1.0, seed=0)

    m_sharpness: under DDP, eps from each rank's own gradient (the SAM paper's
    m-sharpness, m = the per-rank batch) instead of DDP's average; parts that
    use the gradient at theta for more than eps refuse it (the ranks' states
    would differ). beta < 1: ESAM's stochastic weight perturbation: each
    parameter tensor joins the perturbation with probability beta, drawn from
    (seed, step); the others sit out the backward at theta (requires_grad off
    while it runs: the saving) and eps = rho g_S / (beta (||g_S|| + 1e-12)),
    the authors' rescaling. perturb: the tensors eps may touch (None: all);
    the others sit out the backward at theta the same way, so autograd stops
    below the lowest of them (selection.py picks them from a model: the
    normalization layers, the last k modules, a predicate on names). Under
    DDP, as with beta < 1, wrap the model with find_unused_parameters=True.
    eta and unscaled: ASAM's T = |theta| + eta, 1 on the `unscaled` tensors
    (the ASAM authors' code leaves biases unscaled; SAM-ON's does too)."""

    first_order = True
    state_keys = ("seed", "eps_params", "eps_tensors")
    reports: tuple[str, ...] = ("seed", "beta", "m_sharpness", "last_perturbed")

    def __init__(self, rho: float = 0.05, adaptive: bool = False, m_sharpness: bool = False,
                 beta: float = 1.0, seed: int = 0, perturb: Any = None, eta: float = 0.0, unscaled: Any = None,
                 *, aim: Any = None):
        check_nonnegative("rho", rho)
        check_fraction("beta", beta)
        check_seed(seed)
        check_nonnegative("eta", eta)
        if (eta or unscaled) and not adaptive:
            raise ValueError("eta and unscaled: ASAM's scaling, read only with adaptive=True; set adaptive=True "
                             "or drop them")
        self.rho, self.adaptive, self.m_sharpness = rho, bool(adaptive), bool(m_sharpness)
        self.beta, self.seed, self.eta = float(beta), seed, eta
        self.perturb = chosen_tensors(perturb)
        self.estimates_gradient = self.perturb is None   # the gradient at theta on some tensors only
        unscaled_ids = (chosen_tensors(unscaled) if unscaled else None) or frozenset()
        self.aim: Any = SamAim(self.beta, eta, unscaled_ids) if aim is None else aim   # eps from the gradient at theta
        self.last_perturbed: list[bool] = []
        self._saved: Optional[list[torch.Tensor]] = None   # theta, to restore exactly
        self._kept: Any = None      # (params, eps) kept for Plan.REUSE
        self._pending: Any = None   # this step's (params, eps)
        self._params: list[torch.Tensor] = []

    def describe(self) -> str:
        if self.perturb is None:
            return type(self).__name__
        return f"{type(self).__name__} with perturb= (the gradient at theta on some tensors only)"

    def group_defaults(self) -> dict[str, Any]:
        return {"rho": self.rho, "adaptive": self.adaptive}

    def check_group(self, group: dict[str, Any]) -> None:
        check_nonnegative("rho", group["rho"])

    def relayout(self, layout: Layout, masks: Masks, flat: InPlaceParams | FlatParams | ShardedParams) -> None:
        self._saved = self._kept = None   # theta's copy, and a kept eps, are of the old layout
        self._params = layout.params
        check_chosen(self.perturb, layout)

    def observe(self, step: StepView) -> None:
        chosen = self._draw(len(step.params), step.index)
        if self.perturb is not None:
            chosen = [c and id(p) in self.perturb for p, c in zip(step.params, chosen)]
        left_out = [p for p, c in zip(step.params, chosen) if not c] if any(chosen) else []
        for p in left_out:
            p.requires_grad_(False)
        try:
            step.at_theta = step.gradient("the first pass", local=self.m_sharpness)
        finally:
            for p in left_out:
                p.requires_grad_(True)
        for p, c in zip(step.params, chosen):
            if not c:   # only reached when no tensor was chosen: eps is then 0
                p.grad = None
        step.loss = mean_loss(step.at_theta)
        step.theta_grads = step.grads()
        self.last_perturbed = chosen

    def _draw(self, n: int, index: int) -> list[bool]:
        if self.beta == 1:
            return [True] * n
        g = torch.Generator().manual_seed(derived_seed(self.seed, index, 0))
        return (torch.rand(n, generator=g) < self.beta).tolist()

    @torch.no_grad()
    def _eps(self, step: StepView) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        pairs = [(p, p.grad) for p in step.params if p.grad is not None]
        if not pairs:
            return [], []
        params = [p for p, _ in pairs]
        return params, self.aim(step, params, [g for _, g in pairs], self.seed)

    @contextlib.contextmanager
    def perturbed(self, step: StepView) -> Iterator[None]:
        if step.plan is Plan.NONE:
            yield
            return
        params, eps = self._kept if step.plan is Plan.REUSE else self._eps(step)
        self._pending = (params, eps)
        if self._saved is None:
            self._saved = [torch.empty_like(p) for p in step.params]
        with torch.no_grad(), phase("perturb"):
            torch._foreach_copy_(self._saved, [p.detach() for p in step.params])
            if params:
                torch._foreach_add_(params, eps)
        try:
            yield
        finally:
            with torch.no_grad(), phase("restore"):
                torch._foreach_copy_(step.params, self._saved)

    def can_reuse(self) -> bool:
        return self._kept is not None

    def commit(self, step: StepView) -> None:
        if step.keep_eps:   # one parameter-sized set of tensors, kept between steps
            self._kept = self._pending
        self._pending = None

    def kept_state(self) -> dict[str, Any]:
        if self._kept is None:
            return {}
        index = {id(p): i for i, p in enumerate(self._params)}
        return {"eps_params": [index[id(p)] for p in self._kept[0]], "eps_tensors": list(self._kept[1])}

    def load_kept_state(self, state: dict[str, Any]) -> None:
        if "eps_tensors" not in state:
            self._kept = None
            return
        params = [self._params[i] for i in state["eps_params"]]
        self._kept = (params, [t.to(p.device, p.dtype) for p, t in zip(params, state["eps_tensors"])])

    def direction(self, step: StepView) -> list[Optional[torch.Tensor]]:
        return cast(list[Optional[torch.Tensor]], step.theta_grads)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state.get("seed", self.seed))
