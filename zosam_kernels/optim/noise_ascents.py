"""Gaussian weight noise scaled per filter: random weight perturbation (RWP,
Li et al. 2024, "Revisiting Random Weight Perturbation for Efficiently
Improving Generalization") and LPF-SGD (Bisla et al., AISTATS 2022, "Low-Pass
Filtering SGD for Recovering Flat Optima in the Deep Learning Optimization
Landscape"), as their authors define them (engine.py runs the ascent).

The noise of draw j has, per output filter f of a weight tensor W (its rows:
W[f], all dimensions but the first), the standard deviation rho ||W[f]||, and
for a tensor of one dimension (a bias, a norm's scale) rho (||p|| + 1e-16):

    n_j = rho ||W[f]|| u_j          u_j ~ N(0, I), drawn from the stream at (seed, step, j)

(rho is the authors' gamma; LPF-SGD calls it std). The update's gradient is

    g = (1 - alpha) grad L_0(theta) + alpha / M sum_{j < M} grad L_j(theta + n_j)

with M = draws. batch="split": each gradient on its own part of the batch,
the parts strided (part k: samples k, k + K, ..., K the number of gradients),
so a step costs one forward + backward of the batch, SGD's, as the authors'
code spends it (RWP: one batch per GPU for each term, the epochs doubled;
LPF-SGD: the batch split into M chunks). batch="same": every gradient on
the whole batch (M + 1 forward + backward with alpha < 1). Each part's loss
is its mean, weighted as above whatever its size, as the authors' code does.
RWP is alpha = 0.5, M = 1 (rho 0.01 their default); LPF-SGD alpha = 1 (no
gradient at theta), M draws (rho 0.001, M = 1 their defaults; the noise's
size is constant, as in their training script).

Under a perturbation mask the noise is kept to it; pruned weights get none.
The first gradient pass of a step moves BatchNorm's statistics, the others
leave them (the authors' clean rank holds the statistics DDP keeps).
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator, Optional, cast

import torch

from ..seeds import check_seed, derived_seed
from .checks import check_nonnegative, check_positive_int
from .components import Ascent, Plan
from .directions import stream_like
from .passes import check_takes_indices, mean_loss, phase

if TYPE_CHECKING:
    from ..flat import FlatParams, InPlaceParams, Layout
    from ..masks import Masks
    from ..sharded import ShardedParams
    from .components import StepView

BATCHES = ("split", "same")


def filter_scale(p: torch.Tensor) -> torch.Tensor:
    """||W[f]|| broadcast over each output filter f of p (||p|| + 1e-16 for one dimension)."""
    if p.dim() > 1:
        return cast(torch.Tensor,
                    torch.linalg.vector_norm(p.reshape(p.shape[0], -1), dim=1).reshape(-1, *[1] * (p.dim() - 1)))
    return cast(torch.Tensor, torch.linalg.vector_norm(p) + 1e-16)


class FilterNoiseAscent(Ascent):
    """FilterNoiseAscent(rho=0.01, alpha=0.5, draws=1, batch="split", seed=0): RWP's and
    LPF-SGD's perturbation and mixed gradient (module docstring). rho may differ per
    param group."""

    estimates_gradient = False
    measures_at_theta = False   # no per-sample losses at theta for data selection
    reusable = False            # new noise every step
    reports = ("alpha", "draws", "batch", "seed")

    def __init__(self, rho: float = 0.01, alpha: float = 0.5, draws: int = 1, batch: str = "split", seed: int = 0):
        check_nonnegative("rho", rho)
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha <= 1:
            raise ValueError(f"alpha (the weight of the perturbed gradients) must be in (0, 1], got {alpha!r}; "
                             "alpha = 0 would be SGD on part of the batch")
        check_positive_int("draws", draws)
        if batch not in BATCHES:
            raise ValueError(f"batch must be one of {BATCHES}, got {batch!r}")
        check_seed(seed)
        self.rho, self.alpha, self.draws, self.batch, self.seed = rho, float(alpha), draws, batch, seed
        self._saved: Optional[list[torch.Tensor]] = None
        self._at_theta: Optional[list[Optional[torch.Tensor]]] = None

    @classmethod
    def needs_indices(cls, options: dict[str, Any]) -> bool:
        return cast(bool, options["batch"] == "split" and options["draws"] + (options["alpha"] < 1) > 1)

    def group_defaults(self) -> dict[str, Any]:
        return {"rho": self.rho}

    def check_group(self, group: dict[str, Any]) -> None:
        check_nonnegative("rho", group["rho"])

    def relayout(self, layout: Layout, masks: Masks, flat: InPlaceParams | FlatParams | ShardedParams) -> None:
        self._saved = None

    def _parts(self, step: StepView) -> list[Optional[slice]]:
        """The samples of each gradient: the pass at theta (alpha < 1) first, then the draws."""
        count = self.draws + (self.alpha < 1)
        if self.batch == "same" or count == 1:
            return [None] * count
        check_takes_indices(step.closure, f"{type(self).__name__}'s split batch (batch='split')")
        return [slice(k, None, count) for k in range(count)]

    def observe(self, step: StepView) -> None:
        self._at_theta = None
        if self.alpha < 1:
            returned = step.gradient("the pass at theta", indices=self._parts(step)[0], mask=False)
            step.loss = mean_loss(returned)
            self._at_theta = step.grads()

    @torch.no_grad()
    def _noise(self, step: StepView, draw: int) -> list[torch.Tensor]:
        """n_draw per weight (None where a group's radius is 0), kept to the perturbation restriction."""
        rho_of = {id(p): step.radius(g) for g in step.groups for p in g["params"]}
        u = stream_like(step.params, step.masks, derived_seed(self.seed, step.index, draw), step.masks.layout)
        noise = [rho_of[id(p)] * filter_scale(p.detach()) * t for p, t in zip(step.params, u)]
        return cast(list[torch.Tensor], step.restrict(step.params, noise))

    @contextlib.contextmanager
    def perturbed(self, step: StepView) -> Iterator[None]:
        if step.plan is Plan.NONE:
            yield
            return
        parts = self._parts(step)[1:] if self.alpha < 1 else self._parts(step)
        if self._saved is None:
            self._saved = [torch.empty_like(p) for p in step.params]
        with torch.no_grad():
            torch._foreach_copy_(self._saved, [p.detach() for p in step.params])
        kept: list[list[Optional[torch.Tensor]]] = []
        try:
            for j in range(self.draws):
                with torch.no_grad(), phase("perturb"):
                    if j:
                        torch._foreach_copy_(step.params, self._saved)
                    torch._foreach_add_(step.params, self._noise(step, j))
                if j < self.draws - 1:
                    step.gradient(f"the pass at theta + n_{j}", indices=parts[j], mask=False)
                    kept.append(step.grads())
            step.indices = parts[-1]
            yield   # the update's gradient pass, at theta + the last draw
            self._mix(step, kept)
        finally:
            with torch.no_grad(), phase("restore"):
                torch._foreach_copy_(step.params, self._saved)

    @torch.no_grad()
    def _mix(self, step: StepView, kept: list[list[Optional[torch.Tensor]]]) -> None:
        """g = (1 - alpha) g_theta + alpha / M sum_j g_j, into the weights' .grad."""
        each = self.alpha / self.draws
        terms = [(each, g) for g in kept] + ([(1 - self.alpha, self._at_theta)] if self._at_theta else [])
        for i, p in enumerate(step.params):
            total = None if p.grad is None else p.grad.mul_(each)
            for weight, grads in terms:
                g: Any = grads[i]
                if g is not None:
                    total = g.mul(weight) if total is None else total.add_(g, alpha=weight)
            p.grad = total
        self._at_theta = None
