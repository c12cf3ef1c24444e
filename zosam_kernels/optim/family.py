"""The family: FAMILY, the one registry of the methods by the name the command
lines use (zosam-train --optimizer, zosam-bench --methods). An entry (Member)
names the ascent and the parts it composes (engine.py) and the paper's
defaults where they differ from the components'; every option is routed to
the components whose constructors name it, so each default is written once,
in a component's signature or in the entry. recipes.py, zosam-bench,
zosam-train, the benchmarks and the tests build from it. The public classes
(SAM, ZOSAM, ...) are members under a class name; help() shows their options.

Every member takes `params`, `base_optimizer` (a torch.optim class, wrapped and
stepped by the engine), the method's options, `masks`, `check_finite`, the
loop's options (engine.LOOP_OPTIONS) and the base optimizer's keyword arguments.
`step(closure)` takes a closure that runs the forward pass and returns the loss
and never calls backward (Engine.step says what it must be).

Any other composition is one Engine call, e.g. ZO-GSAM:

    Engine(params, torch.optim.SGD, ascent=ZerothOrderAscent(rho=0.05, n_dirs=4),
           parts=[SurrogateGap(alpha=0.02)], lr=0.1)
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, cast

import torch

from .gradient_ascent import GradientAscent
from .stream_ascents import CoinFlipAscent, RandomAscent, ZerothOrderAscent
from .free_ascents import MomentumAscent, NoisyOracleAscent
from .guided import GuidedAscent
from .noise_ascents import FilterNoiseAscent
from .selection import biases, select
from .engine import LOOP_OPTIONS, Engine
from .parts import DataSelection, LearningRateRadius, LookAhead, Reuse, SurrogateGap
from .perturbation_mask import PerturbationMasking

if TYPE_CHECKING:
    from torch.optim.optimizer import ParamsT

    from .components import Ascent, Component, Part

SGD = torch.optim.SGD
ENGINE_OPTIONS = ("masks", "check_finite") + LOOP_OPTIONS


def _options_of(component: type) -> dict[str, Any]:
    """A component's options: its constructor's named parameters, with their defaults
    (None for one without: an optional part's switch). Keyword-only parameters are
    pieces (an ascent's aim), not options."""
    params = inspect.signature(component).parameters
    return {n: (None if p.default is p.empty else p.default) for n, p in params.items()
            if p.kind is p.POSITIONAL_OR_KEYWORD}


@dataclass(frozen=True)
class Member:
    """A registry entry: the ascent and the parts a method composes.

    optional: part -> (option, test): the part joins when test(option's value)
    holds (GSAM's radius schedule when rho_min is given); its other options are
    refused while it is out, since nothing would read them. paper: the paper's
    defaults where they differ from the components'. fixed: options the method
    pins (SAM's beta = 1: ESAM's stochastic perturbation is another member).
    quick: the options at which its state matters within a few steps (masks
    remade every 2 steps instead of 1950), for tests."""
    ascent: Optional[type[Ascent]]                    # None: the plain base optimizer
    parts: tuple[type[Part], ...] = ()
    optional: dict[type[Part], tuple[str, Callable[[Any], bool]]] = field(default_factory=dict)
    paper: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    needs_total_steps: bool = False                   # a schedule over the run (SSAM-D's drop rate)
    quick: dict[str, Any] = field(default_factory=dict)
    cls: Optional[type[_Member]] = None               # its public class, if it has one

    def _components(self) -> list[type[Component]]:
        return [] if self.ascent is None else [self.ascent, *self.parts, *self.optional]

    @property
    def defaults(self) -> dict[str, Any]:
        """Every option of the method with its default."""
        out: dict[str, Any] = {}
        for component in self._components():
            for name, value in _options_of(component).items():
                out.setdefault(name, value)
        out.update(self.paper)
        return {n: v for n, v in out.items() if n not in self.fixed}

    def takes(self) -> set[str]:
        """The keyword options it takes besides the base optimizer's (`model`: where a
        selection of tensors by name or module is resolved, selection.py)."""
        if self.ascent is None:
            return set()
        return set(self.defaults) | set(ENGINE_OPTIONS) | ({"model"} if "perturb" in self.defaults else set())

    def arguments(self, options: dict[str, Any]) -> dict[str, Any]:
        """Engine's keyword arguments for `options` (the rest goes to the base optimizer)."""
        fixed = sorted(set(options) & set(self.fixed))
        if fixed:
            raise ValueError(f"{fixed[0]}: this method pins {fixed[0]}={self.fixed[fixed[0]]!r}; "
                             "use the member that varies it (e.g. esam for beta)")
        options = dict(options)
        model = options.pop("model", None)
        values = {**self.defaults, **self.fixed, **options}
        _resolve_selections(values, model)
        parts = list(self.parts)
        for part, (switch, test) in self.optional.items():
            if test(values[switch]):
                parts.append(part)
                continue
            idle = sorted(n for n, d in _options_of(part).items()
                          if n != switch and n in options and options[n] != d)
            if idle:
                raise ValueError(f"{idle[0]}: only read by {part.__name__}, which joins when {switch} is "
                                 f"given (got {switch}={values[switch]!r}); give {switch} too, or drop {idle[0]}")
        built = [c(**{n: values[n] for n in _options_of(c)}) for c in [cast("type[Ascent]", self.ascent), *parts]]
        rest = {n: v for n, v in options.items() if n not in self.defaults}
        return dict(ascent=built[0], parts=built[1:], **rest)

    def needs_indices(self, options: Optional[dict[str, Any]] = None) -> bool:
        """Whether its closure must take `indices` and return per-sample losses (data selection)."""
        if self.ascent is None:
            return False
        values = {**self.defaults, **self.fixed, **(options or {})}
        present = [self.ascent, *self.parts, *(p for p, (k, on) in self.optional.items() if on(values[k]))]
        return any(c.needs_indices(values) for c in present)

    def build(self, params: ParamsT, base_optimizer: type[torch.optim.Optimizer] = SGD,
              **options: Any) -> torch.optim.Optimizer:
        """The method over `params`: its defaults overridden by `options`; the plain
        base optimizer for a member without an ascent."""
        if self.ascent is None:
            return base_optimizer(params, **options)
        if self.cls is not None:   # (ssam-d is SSAM at the paper's other defaults)
            return self.cls(params, base_optimizer, **{**self.paper, **options})
        return Engine(params, base_optimizer, **self.arguments(options))


def _resolve_selections(values: dict[str, Any], model: Any) -> None:
    """perturb and unscaled given by name or module (selection.py), made tensors of `model`."""
    for key in ("perturb", "unscaled"):
        spec = values.get(key)
        if not (isinstance(spec, str) or callable(spec)):
            continue
        if model is None:
            raise ValueError(f"{key}={spec!r} names parts of a model: pass model= (make_optimizer(..., "
                             "model=model)), or the tensors themselves")
        if key == "perturb":
            values[key] = select(model, spec)
        elif spec == "biases":
            values[key] = biases(model, values.get("perturb") or list(model.parameters())) or None
        else:
            raise ValueError(f"unscaled: {spec!r} is not a selection; use 'biases' or the tensors")


class _Member(Engine):
    """A member of FAMILY under a class name (isinstance, help)."""
    name: str

    def __init__(self, params: ParamsT, base_optimizer: type[torch.optim.Optimizer] = SGD, **options: Any):
        super().__init__(params, base_optimizer, **FAMILY[self.name].arguments(options))


class SAM(_Member):
    """SAM (Foret et al. 2021) and ASAM (adaptive=True, Kwon et al. 2021):
    eps = rho g/||g||, 2 forward + 2 backward per step; rho may differ per
    param group. m_sharpness=True takes eps from each rank's own shard under
    DDP (the SAM paper's m-sharpness), the update from DDP's average."""
    name = "sam"


class ZOSAM(_Member):
    """ZO-SAM (arXiv 2603.13115): eps from 2 n_dirs no-grad forward passes along
    random directions regenerated from seeds (ascents.ZerothOrderAscent), one
    forward + backward at theta + eps. Returns the mean of the L+ and L-
    losses (the estimate of the loss at theta). zo_batch_fraction and
    zo_autocast make the zeroth-order passes cheaper; backend="unfused"
    materialises the directions (the baseline)."""
    name = "zosam"


class ESAM(_Member):
    """ESAM (Du et al., ICLR 2022): SAM with stochastic weight perturbation (beta:
    the share of parameter tensors perturbed, the rest skip the first
    backward) and sharpness-sensitive data selection (gamma: the share of the
    batch in the second backward). beta = gamma = 1 is SAM exactly.
    `last_perturbed` and `last_indices` (None when gamma = 1) tell what the
    last step used."""
    name = "esam"

    @property
    def last_indices(self) -> Optional[torch.Tensor]:
        return next((p.last_indices for p in self.parts if isinstance(p, DataSelection)), None)


class LookSAM(_Member):
    """LookSAM (Liu et al., CVPR 2022): SAM every k-th step, in between one
    forward + backward and the kept g_v (parts.LookAhead)."""
    name = "looksam"


class GSAM(_Member):
    """GSAM (Zhuang et al., ICLR 2022): SAM's update minus alpha times the part of
    the plain gradient orthogonal to it (parts.SurrogateGap); with rho_min,
    rho follows the learning rate (parts.LearningRateRadius)."""
    name = "gsam"


class SSAM(_Member):
    """SSAM (Mi et al., NeurIPS 2022): SAM whose eps touches only a perturbation
    mask of the active weights, from the Fisher (mask="fisher", SSAM-F) or
    by drop and grow (mask="dynamic", SSAM-D, needs total_steps)."""
    name = "ssam-f"


class ZOLookSAM(_Member):
    """ZO-LookSAM: ZO-SAM whose eps is found every k-th step and reused in between
    (parts.Reuse): the in-between steps cost SGD's passes plus two passes over
    the flat buffer, and keep no parameter-sized buffer."""
    name = "zolooksam"


class ZOSSAM(_Member):
    """ZO-SSAM: ZO-SAM whose directions are restricted to an SSAM perturbation mask."""
    name = "zossam"


SAM_ONLY = dict(beta=1.0, seed=0)   # the stochastic perturbation is ESAM's
GAMMA = (DataSelection, ("gamma", lambda gamma: gamma != 1))   # gamma = 1: every sample, no selection
RADIUS_SCHEDULE = (LearningRateRadius, ("rho_min", lambda rho_min: rho_min is not None))
QUICK_MASK = dict(update_interval=2)   # the perturbation mask remade every 2 steps

FAMILY: dict[str, Member] = {
    "sgd": Member(None),
    "sam": Member(GradientAscent, fixed=SAM_ONLY, cls=SAM),
    "zosam": Member(ZerothOrderAscent, cls=ZOSAM, quick=dict(n_dirs=2)),
    "esam": Member(GradientAscent, optional=dict([GAMMA]), paper=dict(beta=0.6), cls=ESAM,
                   quick=dict(beta=0.5, gamma=1.0, seed=1)),
    "looksam": Member(GradientAscent, (LookAhead,), fixed=SAM_ONLY, cls=LookSAM, quick=dict(k=2)),
    "gsam": Member(GradientAscent, (SurrogateGap,), optional=dict([RADIUS_SCHEDULE]), fixed=SAM_ONLY, cls=GSAM,
                   quick=dict(alpha=0.3, rho_min=0.01)),
    "ssam-f": Member(GradientAscent, (PerturbationMasking,), paper=dict(rho=0.1), fixed=dict(beta=1.0),
                     cls=SSAM, quick=QUICK_MASK),
    "ssam-d": Member(GradientAscent, (PerturbationMasking,), paper=dict(rho=0.1, mask="dynamic"),
                     fixed=dict(beta=1.0), needs_total_steps=True, cls=SSAM, quick=QUICK_MASK | dict(total_steps=6)),
    "zolooksam": Member(ZerothOrderAscent, (Reuse,), cls=ZOLookSAM, quick=dict(n_dirs=2, k=2)),
    "zossam": Member(ZerothOrderAscent, (PerturbationMasking,), cls=ZOSSAM, quick=QUICK_MASK | dict(n_dirs=2)),
    # ZO-GSAM: GSAM's surgery on the zeroth-order estimate g_hat
    "zogsam": Member(ZerothOrderAscent, (SurrogateGap,), quick=dict(n_dirs=2, alpha=0.3)),
    # ZO-ESAM: ESAM's data selection after the zeroth-order ascent
    "zoesam": Member(ZerothOrderAscent, (DataSelection,), quick=dict(n_dirs=2)),
    # MSAM (Becker et al. 2024): eps along the base optimizer's momentum, no extra pass
    "msam": Member(MomentumAscent),
    # random weight perturbation (Li et al. 2024) as published: filter-scaled noise, the gradient mixed with
    # the one at theta (alpha = 0.5), each on its half of the batch
    "rwp": Member(FilterNoiseAscent, quick=dict(rho=0.05)),
    # LPF-SGD (Bisla et al. 2022): filter-scaled noise, M draws on M parts of the batch, no gradient at theta
    "lpf-sgd": Member(FilterNoiseAscent, paper=dict(rho=0.001, alpha=1.0), quick=dict(rho=0.05, draws=2)),
    # an isotropic random direction of norm rho (before the published RWP was here, "rwp" named this one)
    "random-direction": Member(RandomAscent),
    # SAM-ON (Mueller et al., NeurIPS 2023): ASAM on the normalization layers only, as its authors' code
    # (eta = 0.01, biases unscaled, rho 0.5 its default); the first backward stops below the lowest one
    "sam-on": Member(GradientAscent, paper=dict(rho=0.5, adaptive=True, eta=0.01, perturb="norm", unscaled="biases"),
                     fixed=SAM_ONLY, quick=dict(rho=0.05)),
    # SAM on part of the network (perturb: "last:k", "norm" or a predicate on names; selection.py)
    "sam-partial": Member(GradientAscent, paper=dict(perturb="last:1"), fixed=SAM_ONLY),
    # ZO-SAM's control: its own passes and directions, each coefficient given a coin-flip sign
    "zosam-coin": Member(CoinFlipAscent, quick=dict(n_dirs=2)),
    # an instrument: SAM's eps mixed with a random orthogonal direction, cos(eps, grad) = cosine
    "oracle": Member(NoisyOracleAscent, quick=dict(cosine=0.3)),
    # the guided zeroth-order ascent: finite differences along a free prior and n_dirs directions
    "zosam-guided": Member(GuidedAscent, quick=dict(n_dirs=2)),
}


def _signature(member: Member) -> inspect.Signature:
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("base_optimizer", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=SGD)]
    params += [inspect.Parameter(n, keyword, default=v) for n, v in member.defaults.items()]
    params += [inspect.Parameter(n, keyword, default=None) for n in ENGINE_OPTIONS
               if n not in member.defaults]
    return inspect.Signature(params + [inspect.Parameter("base_kwargs", inspect.Parameter.VAR_KEYWORD)])


for _cls in _Member.__subclasses__():   # help(SAM) shows SAM's options and their defaults
    _cls.__signature__ = _signature(FAMILY[_cls.name])  # type: ignore[attr-defined]
