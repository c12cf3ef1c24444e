"""The guided zeroth-order ascent (new here): finite differences along a
first-order prior that is already free, plus m directions of the stream,
combined into one estimate of the gradient.

The prior p is the base optimizer's momentum (prior="momentum": SGD's
momentum_buffer, Adam's exp_avg: free), or the previous step's update
gradient (prior="gradient", for a base optimizer without momentum): the
optimizer keeps that tensor in its state ("guided_prior"), where .grad held
it between steps anyway, so that a resumed or faulted run has it too.
With b_0 = p/||p|| and b_i = u_i, i = 1..m, the 2(m+1) passes measure
y_j = <g, b_j> (central differences, step delta); the estimate is the
projection of g onto their span,

    g_hat = B w,   G w = y,   G_jk = <b_j, b_k>,

the least-squares combination, so cos(g_hat, g) = ||P g|| / ||g|| >= |alpha|,
alpha = cos(p, g), against sqrt(2m / (pi d)) for plain ZO-SAM. Then
eps = rho g_hat / ||g_hat||, ||g_hat||^2 = w.y. The Gram entries among the
u_i are norms of the fused ops; <b_0, u_i> reads u_i once, one bucket at a
time (a transient the size of a bucket, freed before the update's pass).
Nothing parameter-sized is kept: eps is one coefficient on p and m on the
stream, and the move along p is taken back by the opposite move (theta
within float32 rounding). Before any prior exists (the first step, or after
zero_grad), the step is plain ZO-SAM on the m directions (m >= 1), or
unperturbed (m = 0). prior="momentum" refuses a base optimizer that keeps
none (it would be plain ZO-SAM at every step). Under a perturbation mask P
the prior is P p and the directions P u_i.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import torch

from ..flat import FlatParams
from ..seeds import derived_seed
from . import formulas
from .stream_ascents import ZerothOrderAscent, take_from_checkpoint
from .components import Ascent, Plan, same_in_every_group
from .free_ascents import Along, check_keeps_momentum, momentum_of
from .passes import phase

if TYPE_CHECKING:
    from ..flat import InPlaceParams, Layout
    from ..masks import Masks
    from ..sharded import ShardedParams
    from .directions import Walk
    from .components import StepView

PRIORS = ("momentum", "gradient")


class GuidedAscent(Ascent):
    """GuidedAscent(rho=0.05, delta=1e-3, n_dirs=1, prior="momentum", seed=0, backend="fused"):
    2 (n_dirs + 1) no-grad passes (n_dirs may be 0: the prior alone). Composed
    of a zeroth-order ascent (`stream`: the directions' walk, the
    finite-difference passes, and plain ZO-SAM before a prior exists) and the
    move along the prior (free_ascents.Along). `last_alpha_estimate`: the last
    step's <g_hat, p>/(||g_hat|| ||p||)."""

    flattens = True
    compares_losses = True
    estimates_gradient = False   # its estimate lives on p and the stream: no surgery on it
    measures_at_theta = False    # no per-sample losses at theta (data selection)
    reusable = False             # its eps is tied to this step's prior
    state_keys = ("seed", "n_dirs")
    reports = ("seed", "n_dirs", "prior", "last_seeds", "last_coefficients", "last_eps", "last_alpha_estimate")
    last_coefficients: Optional[torch.Tensor]
    last_eps: Optional[torch.Tensor]

    def __init__(self, rho: float = 0.05, delta: float = 1e-3, n_dirs: int = 1, prior: str = "momentum",
                 seed: int = 0, backend: str = "fused"):
        if not isinstance(n_dirs, int) or isinstance(n_dirs, bool) or n_dirs < 0:
            raise ValueError(f"n_dirs must be an int >= 0 (the stream directions beside the prior), got {n_dirs!r}")
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        self.stream = ZerothOrderAscent(rho=rho, delta=delta, n_dirs=max(n_dirs, 1), seed=seed, backend=backend)
        self.rho, self.delta, self.n_dirs, self.prior, self.seed = rho, delta, n_dirs, prior, seed
        self.last_alpha_estimate: Optional[torch.Tensor] = None
        self.last_seeds: list[int] = []
        self.last_coefficients = self.last_eps = None
        self._pending: Any = None   # this step's (seeds, y, eps); None: the stream's step (no prior yet)

    def pass_options(self) -> dict[str, Any]:
        return self.stream.pass_options()

    def group_defaults(self) -> dict[str, Any]:
        return self.stream.group_defaults()

    def check_group(self, group: dict[str, Any]) -> None:
        self.stream.check_group(group)
        if group["adaptive"]:
            raise ValueError("adaptive: the guided ascent has no adaptive (ASAM) form; set adaptive=False")
        if self.prior == "momentum":
            check_keeps_momentum(group, 'the guided ascent with prior="momentum"')

    def check_groups(self, groups: Sequence[dict[str, Any]]) -> None:
        self.stream.check_groups(groups)

    def relayout(self, layout: Layout, masks: Masks, flat: InPlaceParams | FlatParams | ShardedParams) -> None:
        self.stream.relayout(layout, masks, flat)
        if not isinstance(flat, FlatParams):
            raise NotImplementedError("params: the guided ascent on FSDP2 shards is not supported: its "
                                      "prior's inner products with the stream are per rank")

    def _prior(self, step: StepView) -> Optional[list[Optional[torch.Tensor]]]:
        if self.prior == "momentum":
            v = momentum_of(step)
        else:
            v = step.restrict(step.params, [step.state(p).get("guided_prior") for p in step.params])
        return v if any(t is not None for t in v) else None

    @contextlib.contextmanager
    def perturbed(self, step: StepView) -> Iterator[None]:
        self._pending = None
        prior = self._prior(step) if step.plan is Plan.FULL else None
        if step.plan is not Plan.FULL or (prior is None and self.n_dirs == 0):
            yield   # no perturbation ("none"; or no prior yet and no direction to fall back on)
            return
        if prior is None:   # nothing to be guided by yet: plain ZO-SAM on the stream
            with self.stream.perturbed(step):
                yield
            return
        rho, delta = step.radius(), same_in_every_group(step.groups, "delta")
        seeds = [derived_seed(self.seed, step.index, i) for i in range(self.n_dirs)]
        along = Along(step.params, prior)
        walk = self.stream.walk(step, seeds) if seeds else None
        device = self.stream.flat.buffers[0].device
        try:
            inv_norm = 1.0 / (formulas.norm([t for t in prior if t is not None]) + formulas.EPS)
            plus: list[torch.Tensor] = []
            minus: list[torch.Tensor] = []
            with torch.no_grad():
                for sign, out in ((1.0, plus), (-1.0, minus)):
                    with phase("perturb"):
                        along.move_(sign * delta * inv_norm)
                    out.append(step.extra("zo_forward"))
                with phase("perturb"):
                    along.move_(torch.zeros((), device=device))
            if walk is not None:
                p_i, m_i = self.stream.estimate.losses(walk, step, delta)
                with phase("perturb"):
                    walk.move_(torch.zeros(walk.m, device=device))
            else:
                p_i = m_i = torch.zeros(0, device=device)
            y = formulas.zo_coefficients(torch.cat([step.mean_over_ranks_(torch.stack(plus).float()), p_i]),
                                         torch.cat([step.mean_over_ranks_(torch.stack(minus).float()), m_i]),
                                         delta)
            gram = self._gram(walk, step, prior, inv_norm, device)
            # a non-finite loss skips the step (the engine sees it in the losses); LAPACK must not see it
            y_ok = torch.where(torch.isfinite(y), y, torch.zeros_like(y)).double()
            w = torch.linalg.lstsq(torch.nan_to_num(gram), y_ok.unsqueeze(1)).solution.squeeze(1)
            size = torch.clamp((w * y_ok).sum(), min=0).sqrt()
            scale = rho / (size + formulas.EPS)
            eps = torch.where(torch.isfinite(scale * w), scale * w, torch.zeros_like(w)).float()
            self.last_alpha_estimate = (w[0] / (size + formulas.EPS)).float()
            step.losses["the +delta passes"] = torch.cat([torch.stack(plus).float(), p_i])
            step.losses["the -delta passes"] = torch.cat([torch.stack(minus).float(), m_i])
            step.loss = (step.losses["the +delta passes"].mean() + step.losses["the -delta passes"].mean()) / 2
            self._pending = (seeds, y.float(), eps)
            with torch.no_grad(), phase("perturb"):
                along.move_(eps[0] * inv_norm)
                if walk is not None:
                    walk.move_(eps[1:])
            yield
        finally:
            with phase("restore"):
                if walk is not None:
                    walk.restore_()
                along.move_(torch.zeros((), device=device))

    @torch.no_grad()
    def _gram(self, walk: Optional[Walk], step: StepView, prior: list[Optional[torch.Tensor]], inv_norm: torch.Tensor,
              device: torch.device) -> torch.Tensor:
        """G_jk = <b_j, b_k>: b_0 the unit prior, b_i the stream directions (masked)."""
        m = self.n_dirs
        gram = torch.zeros(m + 1, m + 1, dtype=torch.float64, device=device)
        gram[0, 0] = 1.0
        if walk is None:
            return gram
        eye = torch.eye(m, device=device)
        sq = [walk.sq_norm(eye[i]) for i in range(m)]
        for i in range(m):
            gram[i + 1, i + 1] = sq[i]
            for j in range(i + 1, m):   # polarisation: <u_i, u_j> = (|u_i + u_j|^2 - |u_i|^2 - |u_j|^2) / 2
                both = walk.sq_norm(eye[i] + eye[j])
                gram[i + 1, j + 1] = gram[j + 1, i + 1] = (both.double() - sq[i].double() - sq[j].double()) / 2
            u = step.masks.layout.views(walk.materialized(eye[i]))   # transient: one direction
            dot = formulas.dot([a for a, t in zip(u, prior) if t is not None], [t for t in prior if t is not None])
            gram[0, i + 1] = gram[i + 1, 0] = dot.double() * inv_norm
        return gram

    def commit(self, step: StepView) -> None:
        if step.plan is Plan.FULL and (self._pending is not None or self.stream._pending is not None):
            if self._pending is None:   # the stream's step
                self.stream.commit(step)
                self._pending = self.stream._pending
            self.last_seeds, self.last_coefficients, self.last_eps = self._pending
        self._pending = self.stream._pending = None
        if self.prior == "gradient":   # the tensor .grad holds until the next pass drops it
            for p in step.params:
                if p.grad is not None:
                    step.keep(p, "guided_prior", p.grad)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "n_dirs": self.n_dirs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        take_from_checkpoint(self, state, ("seed", "n_dirs"))
        self.stream.seed, self.stream.n_dirs = self.seed, max(self.n_dirs, 1)
