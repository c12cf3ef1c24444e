"""The stream ascents: eps on m directions of the stream (engine.py runs them).

ZerothOrderAscent (ZO-SAM, arXiv 2603.13115)

    c_i   = (L(theta + delta u_i) - L(theta - delta u_i)) / (2 delta),   u_i ~ N(0, I), i < m
    g_hat = 1/m sum_i c_i u_i,   eps = rho g_hat / (||g_hat|| + 1e-12)   (adaptive: rho T^2 g_hat / ||T g_hat||)

2m no-grad forward passes. The directions are never stored: they are
regenerated from seeds derived from (seed, step, i), so eps is m
coefficients on them and every move of the weights is one pass of a fused
op over the flat buffers (directions.Walk); a resumed run replays the same
directions. Its coin-flip control (CoinFlipAscent) and the random direction
(RandomAscent) are the same skeleton (StreamAscent) with other pieces.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence, cast

import torch

from ..flat import FlatParams
from ..seeds import check_seed, derived_seed
from . import formulas
from .checks import check_nonnegative, check_positive, check_positive_int
from .components import Ascent, Plan, same_in_every_group
from .directions import FusedDirections, UnfusedDirections, Walk
from .passes import mean_loss, phase
from .selection import check_chosen, chosen_tensors

if TYPE_CHECKING:
    from ..flat import InPlaceParams, Layout
    from ..masks import Masks
    from ..sharded import ShardedParams
    from .components import StepView

BACKENDS: dict[str, type[FusedDirections] | type[UnfusedDirections]] = {"fused": FusedDirections,
                                                                        "unfused": UnfusedDirections}
RADIUS_SCALES = ("absolute", "relative")   # eps of norm rho; or rho times each tensor's RMS per weight (StreamAscent)


def check_radius_scale(radius_scale: str) -> None:
    if radius_scale not in RADIUS_SCALES:
        raise ValueError(f"radius_scale must be one of {RADIUS_SCALES}, got {radius_scale!r}")


class FiniteDifferences:
    """The zeroth-order estimate (an estimate piece of a StreamAscent): from 2m
    no-grad passes, c_i = (L(theta + delta u_i) - L(theta - delta u_i)) / (2 delta).
    batch_fraction < 1 and autocast make the passes cheaper (passes.Passes: a
    leading fraction of the batch, whose closure takes `indices` and returns
    per-sample losses; bf16/fp16 autocast)."""

    compares_losses = True     # L(theta + delta u) - L(theta - delta u): common random numbers by default
    estimates_gradient = True
    measures_at_theta = True   # (L+ + L-)/2 per sample is L(theta) to O(delta^2)

    def __init__(self, delta: float = 1e-3, batch_fraction: float = 1.0, autocast: Optional[torch.dtype] = None):
        check_positive("delta", delta)
        self.delta, self.batch_fraction, self.autocast = delta, batch_fraction, autocast

    def group_defaults(self) -> dict[str, Any]:
        return {"delta": self.delta}

    def check_group(self, group: dict[str, Any]) -> None:
        check_positive("delta", group["delta"])

    def check_groups(self, groups: Sequence[dict[str, Any]]) -> None:
        same_in_every_group(groups, "delta", when="at construction")

    def pass_options(self) -> dict[str, Any]:
        return {"batch_fraction": self.batch_fraction, "autocast": self.autocast, "name": "zo"}

    def coefficients(self, walk: Walk, step: StepView) -> torch.Tensor:
        """c, one per direction of the walk; sets the step's losses and its loss (the estimate of L(theta))."""
        delta = same_in_every_group(step.groups, "delta")
        plus, minus = self.losses(walk, step, delta)
        step.losses["the +delta passes"], step.losses["the -delta passes"] = plus, minus
        step.loss = (plus.mean() + minus.mean()) / 2
        return formulas.zo_coefficients(plus, minus, delta)

    def losses(self, walk: Walk, step: StepView, delta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(L(theta + delta u_i), L(theta - delta u_i)) for every direction i, as two
        device tensors (the global batch's under DDP); per-sample losses at theta
        in step.at_theta when a part asks for them. The move to theta + delta u_i
        also takes back the -delta u_{i-1} of the direction before; the weights
        are left at theta - delta u_{m-1}."""
        up = torch.full((2,), delta, device=walk.device)
        up[0] = 0.0                                     # (u_{i-1}, u_i) to (0, +delta)
        down = torch.full((1,), -delta, device=walk.device)
        plus, minus, per_sample = [], [], []
        for i in range(walk.m):
            with phase("perturb"):
                walk.move_(up if i else up[1:], lo=max(i - 1, 0))
            plus.append(step.extra("zo_forward", reduce=not step.per_sample_at_theta))
            with phase("perturb"):
                walk.move_(down, lo=i)
            minus.append(step.extra("zo_forward", reduce=not step.per_sample_at_theta))
            if step.per_sample_at_theta:
                per_sample.append((plus[-1] + minus[-1]) / 2)
                plus[-1], minus[-1] = mean_loss(plus[-1]), mean_loss(minus[-1])
        if per_sample:   # L(theta) per sample, to O(delta^2): what ESAM's data selection compares
            step.at_theta = torch.stack(per_sample).mean(0)
        losses = step.mean_over_ranks_(torch.stack([torch.stack(plus), torch.stack(minus)]).float()
                                       .to(walk.device))
        return losses[0], losses[1]


class UnitCoefficients:
    """No estimate (an estimate piece of a StreamAscent): c_i = 1, no pass; eps is
    then rho u / ||u|| for one direction, a random perturbation of norm rho."""

    compares_losses = False
    estimates_gradient = False
    measures_at_theta = False
    batch_fraction = 1.0

    def group_defaults(self) -> dict[str, Any]:
        return {}

    def check_group(self, group: dict[str, Any]) -> None:
        pass

    def check_groups(self, groups: Sequence[dict[str, Any]]) -> None:
        pass

    def pass_options(self) -> dict[str, Any]:
        return {}

    def coefficients(self, walk: Walk, step: StepView) -> torch.Tensor:
        return torch.ones(walk.m, device=walk.device)


class CoinFlipSigns:
    """A transform of the coefficients (a piece of a StreamAscent): each c_i given a
    coin-flip sign drawn from (the ascent's seed, step), so eps keeps the estimate's size and
    support but none of its information about the gradient's direction."""

    keeps_direction = False

    def __call__(self, c: torch.Tensor, step: StepView, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(derived_seed(seed, step.index, COIN_INDEX))
        signs = torch.randint(0, 2, (c.numel(),), generator=g).mul_(2).sub_(1)
        return signs.to(c.device, c.dtype) * c.abs()


COIN_INDEX = 1 << 32   # the coin's draw index: apart from the directions' (0 .. n_dirs - 1)


class StreamAscent(Ascent):
    """An ascent whose eps lies on m directions of the stream, composed of three pieces:

        c     = estimate.coefficients(walk, step)      (FiniteDifferences; UnitCoefficients: no pass)
        c     = transform(c, step, seed)               (optional: CoinFlipSigns)
        g_hat = 1/m sum_i c_i u_i,   eps = rho g_hat / (||g_hat|| + 1e-12)   (adaptive: rho T^2 g_hat / ||T g_hat||)

    radius_scale="relative" measures the weights in units of their tensor's RMS,
    s_i = ||theta_t|| / sqrt(n_t) for weight i of tensor t (n_t its active
    weights): the directions are s u_i (the passes probe theta +- delta s u_i)
    and eps = rho sqrt(d) s g_hat / ||g_hat||, d the number of weights the
    directions run over, so each weight moves by about rho times its tensor's
    RMS whatever the model's size, and scaling a layer (a ReLU net's function
    unchanged) scales its eps alike. A tensor of zeros is not perturbed.

    and the walk (directions.Walk) that moves the weights along the directions,
    one pass of a fused op each. Its capabilities are its pieces'.
    rho (and the estimate's delta) must be the same in every param group: eps is
    normalised over the whole model and the directions are one stream, so a
    per-group radius would need a per-weight scale buffer the fused ops do not
    read. backend="unfused" materialises each direction per tensor (the baseline
    the fused ops are measured against). `last_seeds`, `last_coefficients` (the
    c_i) and `last_eps` (eps = sum_i last_eps[i] u_i, times T^2 when adaptive)
    tell what the last step taken used."""

    flattens = True
    state_keys = ("seed", "n_dirs", "eps_seeds", "eps")
    reports = ("seed", "n_dirs", "backend", "radius_scale", "last_seeds", "last_coefficients", "last_eps")

    def __init__(self, rho: float, n_dirs: int, seed: int, adaptive: bool, backend: str, estimate: Any,
                 transform: Any = None, radius_scale: str = "absolute", perturb: Any = None):
        check_nonnegative("rho", rho)
        check_positive_int("n_dirs", n_dirs)
        check_seed(seed)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be 'fused' or 'unfused', got {backend!r}")
        check_radius_scale(radius_scale)
        if radius_scale == "relative" and adaptive:
            raise ValueError("radius_scale='relative' and adaptive=True are two scalings of eps by the weights; "
                             "choose one")
        self.rho, self.adaptive, self.n_dirs, self.seed, self.backend = rho, bool(adaptive), n_dirs, seed, backend
        self.radius_scale = radius_scale
        self.perturb = chosen_tensors(perturb)
        self.estimate, self.transform = estimate, transform
        self.compares_losses = estimate.compares_losses
        self.measures_at_theta = estimate.measures_at_theta
        self.batch_fraction = estimate.batch_fraction
        self.estimates_gradient = estimate.estimates_gradient and getattr(transform, "keeps_direction", True)
        self.last_seeds: list[int] = []
        self.last_coefficients: Optional[torch.Tensor] = None
        self.last_eps: Optional[torch.Tensor] = None
        self._kept: Any = None      # (seeds, eps coefficients) kept for Plan.REUSE
        self._pending: Any = None   # this step's (seeds, c_i, eps coefficients)

    def pass_options(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.estimate.pass_options())

    def group_defaults(self) -> dict[str, Any]:
        return {"rho": self.rho, "adaptive": self.adaptive, **self.estimate.group_defaults()}

    def check_group(self, group: dict[str, Any]) -> None:
        check_nonnegative("rho", group["rho"])
        self.estimate.check_group(group)

    def check_groups(self, groups: Sequence[dict[str, Any]]) -> None:
        for name in ("rho", "adaptive"):
            same_in_every_group(groups, name, when="at construction")
        self.estimate.check_groups(groups)
        for p in (p for g in groups for p in g["params"]):
            if p.requires_grad and p.dtype != torch.float32:
                raise TypeError(f"params: the zeroth-order ascent perturbs float32 parameters, got {p.dtype} "
                                f"(shape {tuple(p.shape)}); {_WHY_FLOAT32.get(p.dtype, _WHY_FLOAT32[None])}")

    def relayout(self, layout: Layout, masks: Masks, flat: InPlaceParams | FlatParams | ShardedParams) -> None:
        self.flat = cast("FlatParams | ShardedParams", flat)
        if not isinstance(flat, FlatParams) and (self.backend != "fused" or masks.masked):
            raise NotImplementedError("params: the zeroth-order ascent on FSDP2 (fully_shard) needs "
                                      "backend='fused' and no masks")
        if self.radius_scale == "relative" and not isinstance(flat, FlatParams):
            raise NotImplementedError("params: radius_scale='relative' on FSDP2 (fully_shard) is not supported: "
                                      "each tensor's RMS spans the ranks' shards")
        check_chosen(self.perturb, layout)
        if self.perturb is not None and not isinstance(flat, FlatParams):
            raise NotImplementedError("params: perturb= on FSDP2 (fully_shard) is not supported")
        self.directions = BACKENDS[self.backend](self.flat)
        self._masks = masks
        self._chosen = None if self.perturb is None else self._chosen_masks(layout, masks)
        self._saved: Optional[list[torch.Tensor]] = None  # theta, for the adaptive eps (one parameter-sized copy, kept)
        self._rms: Optional[list[torch.Tensor]] = None    # each weight's tensor's RMS, for the relative radius (kept)

    def direction_masks(self, step: StepView) -> Sequence[Optional[torch.Tensor]]:
        """The mask of the step's directions, per bucket: the perturbation restriction, else the sparse
        masks; kept to the chosen tensors (perturb=)."""
        if step.restriction is not None:
            masks: Sequence[Optional[torch.Tensor]] = step.restriction
        else:
            masks = self._masks.buffers if isinstance(self.flat, FlatParams) else [None] * len(self.flat.buffers)
        if self._chosen is None:
            return masks
        return [c if m is None else m & c for m, c in zip(masks, self._chosen)]

    def _chosen_masks(self, layout: Layout, masks: Masks) -> list[torch.Tensor]:
        """Per bucket, True on the active weights of the chosen tensors (perturb=)."""
        out = layout.new_buffers(torch.bool, fill=False)
        for p, view in zip(layout.params, layout.views(out)):
            if self.perturb is not None and id(p) in self.perturb:
                mask = masks.get(p)
                view.copy_(torch.ones_like(view) if mask is None else mask)
        return out

    def walk(self, step: StepView, seeds: Sequence[int], saved: Optional[list[torch.Tensor]] = None,
             scale: Optional[list[torch.Tensor]] = None) -> Walk:
        """The step's walk on the directions of `seeds`."""
        with phase("perturb"):
            return Walk(self.directions, seeds, self.direction_masks(step), saved, scale)

    @torch.no_grad()
    def _tensor_rms(self) -> list[torch.Tensor]:
        """Per bucket, every weight's tensor's RMS over its active weights (the relative radius's scale)."""
        if self._rms is None:
            self._rms = [torch.empty_like(b) for b in self.flat.buffers]
        layout = self._masks.layout
        for p, view in zip(layout.params, layout.views(self._rms)):
            view.copy_(formulas.tensor_rms(p, self._masks.get(p)).expand_as(view))
        return self._rms

    def _size(self, step: StepView) -> int | torch.Tensor:
        """The number of weights the directions run over: eps's norm is rho sqrt(d) in relative units."""
        masks = self.direction_masks(step)
        return sum(b.numel() if m is None else m.sum() for b, m in zip(self.flat.buffers, masks))

    @contextlib.contextmanager
    def perturbed(self, step: StepView) -> Iterator[None]:
        if step.plan is Plan.NONE:
            yield
            return
        rho, adaptive = step.radius(), same_in_every_group(step.groups, "adaptive")
        reuse = step.plan is Plan.REUSE
        seeds = self._kept[0] if reuse else [derived_seed(self.seed, step.index, i) for i in range(self.n_dirs)]
        relative = self.radius_scale == "relative"
        walk = self.walk(step, seeds, self._saved_theta() if adaptive else None,
                         self._tensor_rms() if relative else None)
        try:
            if reuse:
                eps = self._kept[1]
            else:
                coefs = self.estimate.coefficients(walk, step)
                if self.transform is not None:
                    coefs = self.transform(coefs, step, self.seed)
                with phase("perturb"):   # ||g_hat|| (||T g_hat|| when adaptive; in RMS units when relative)
                    norm = walk.sq_norm(coefs / walk.m, power=1 if adaptive else 0).sqrt()
                    size = rho * self._size(step) ** 0.5 if relative else rho
                eps = formulas.zo_perturbation(coefs, norm, size)
                self._pending = (seeds, coefs, eps)
            walk.move_(eps, power=2 if adaptive else None)   # theta + eps; the last -delta u rides along
            yield
        finally:
            with phase("restore"):
                walk.restore_()

    def _saved_theta(self) -> list[torch.Tensor]:
        if self._saved is None:
            self._saved = [torch.empty_like(b) for b in self.flat.buffers]
        return self._saved

    def can_reuse(self) -> bool:
        return self._kept is not None

    def direction(self, step: StepView) -> list[Optional[torch.Tensor]]:
        """g_hat = 1/m sum_i c_i u_i, materialised (one parameter-sized buffer per bucket)."""
        seeds, coefs, _ = self._pending
        walk = Walk(self.directions, seeds, self.direction_masks(step))
        return cast(list[Optional[torch.Tensor]], self._masks.layout.views(walk.materialized(coefs / walk.m)))

    def commit(self, step: StepView) -> None:
        if step.plan is not Plan.FULL:
            return
        self.last_seeds, self.last_coefficients, self.last_eps = self._pending
        if step.keep_eps:   # m seeds and m coefficients: no parameter-sized buffer
            self._kept = (self._pending[0], self._pending[2])

    def kept_state(self) -> dict[str, Any]:
        """The eps kept for reuse: m seeds and m coefficients."""
        if self._kept is None:
            return {}
        return {"eps_seeds": list(self._kept[0]), "eps": self._kept[1].tolist()}

    def load_kept_state(self, state: dict[str, Any]) -> None:
        seeds, eps = list(state.get("eps_seeds", [])), state.get("eps")
        device = self.flat.buffers[0].device
        self._kept = None if eps is None else (seeds, torch.tensor(eps, dtype=torch.float32, device=device))
        if self._kept is not None:
            self.last_seeds, self.last_eps = self._kept

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "n_dirs": self.n_dirs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        take_from_checkpoint(self, state, ("seed", "n_dirs"))


def take_from_checkpoint(component: object, state: dict[str, Any], names: Sequence[str]) -> None:
    """Set the integer settings `names` of `component` from a checkpoint's state, with a
    warning where one replaces a value given to the constructor (a resumed run replays
    the checkpoint's directions)."""
    for name in names:
        value = int(state.get(name, getattr(component, name)))
        if value != getattr(component, name):
            warnings.warn(f"load_state_dict: the checkpoint's {name}={value} replaces "
                          f"{name}={getattr(component, name)} given to the constructor (a resumed run "
                          "replays the checkpoint's directions)", UserWarning, stacklevel=4)
        setattr(component, name, value)


class ZerothOrderAscent(StreamAscent):
    """ZerothOrderAscent(rho=0.05, delta=1e-3, n_dirs=1, seed=0, adaptive=False,
    backend="fused", zo_batch_fraction=1.0, zo_autocast=None, radius_scale="absolute",
    perturb=None): ZO-SAM's ascent, the stream ascent with the finite-difference
    estimate (FiniteDifferences, whose passes see zo_batch_fraction of the batch
    under zo_autocast). perturb: the tensors its directions run over (None: all)."""

    def __init__(self, rho: float = 0.05, delta: float = 1e-3, n_dirs: int = 1, seed: int = 0,
                 adaptive: bool = False, backend: str = "fused", zo_batch_fraction: float = 1.0,
                 zo_autocast: Optional[torch.dtype] = None, radius_scale: str = "absolute", perturb: Any = None):
        super().__init__(rho, n_dirs, seed, adaptive, backend, FiniteDifferences(delta, zo_batch_fraction, zo_autocast),
                         radius_scale=radius_scale, perturb=perturb)


class CoinFlipAscent(StreamAscent):
    """CoinFlipAscent(rho=0.05, delta=1e-3, n_dirs=1, seed=0, backend="fused"): the
    control of the zeroth-order ascent: its own passes, directions and |c_i|,
    each c_i given a coin-flip sign (CoinFlipSigns). Same cost as ZO-SAM."""

    def __init__(self, rho: float = 0.05, delta: float = 1e-3, n_dirs: int = 1, seed: int = 0,
                 backend: str = "fused", radius_scale: str = "absolute"):
        super().__init__(rho, n_dirs, seed, False, backend, FiniteDifferences(delta), CoinFlipSigns(), radius_scale)


class RandomAscent(StreamAscent):
    """RandomAscent(rho=0.05, seed=0, backend="fused"): eps = rho u/||u|| along one
    direction of the stream, drawn anew each step from (seed, step); no pass
    (UnitCoefficients). The loss returned is the update pass's (nothing is
    measured at theta). Isotropic with a fixed norm: not the published random
    weight perturbation, whose noise is scaled per filter."""

    def __init__(self, rho: float = 0.05, seed: int = 0, backend: str = "fused", radius_scale: str = "absolute"):
        super().__init__(rho, 1, seed, False, backend, UnitCoefficients(), radius_scale=radius_scale)


_WHY_FLOAT32 = {
    torch.float16: "delta is below the resolution of fp16 weights: keep float32 master weights "
                   "and use autocast (zo_autocast for the zeroth-order passes)",
    torch.bfloat16: "delta is below the resolution of bf16 weights: keep float32 master weights "
                    "and use autocast (zo_autocast for the zeroth-order passes)",
    None: "the fused ops work on float32 buffers: convert the model with model.float()",
}
