"""The contract between the engine (engine.py) and its components: what an
ascent and a part declare, every hook they may keep, and what each must
honour on a step (docs/DESIGN.md, "The engine"). A component sees a step
only through StepView (engine.Step implements it); the engine checks the declarations at
construction and refuses, with the reason, a composition that cannot keep
them. tests/test_compositions.py holds every ascent and every part to it.

What an ascent must honour on a Step:
- step.plan: Plan.FULL, find eps (and measure at theta when it says so);
  Plan.REUSE, put the weights at theta + the eps it kept (only asked of an
  ascent with `reusable`); Plan.NONE, leave them at theta.
- step.restriction: a perturbation mask; eps is zero outside it, in every
  pass of the step (the passes that estimate eps included).
- step.per_sample_at_theta: set step.at_theta to per-sample losses at theta
  (only asked of an ascent with `measures_at_theta`).
- step.keep_eps: keep this step's eps at commit, for the REUSE steps after
  it; `kept_state` returns it for the optimizer's state_dict and
  `load_kept_state` takes it back, so a run resumed in the middle of a reuse
  period continues as the uninterrupted one.
- perturbed(): the weights at theta again when the block ends, however it
  ends (an exception included).
"""
from __future__ import annotations

import contextlib
import enum
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Protocol, Sequence

import torch

if TYPE_CHECKING:
    from ..flat import FlatParams, InPlaceParams, Layout
    from ..masks import Masks
    from ..sharded import ShardedParams


class Plan(enum.Enum):
    """What a step does with the perturbation (a part that `decides_plan` sets it)."""
    FULL = "full"     # the ascent finds eps
    REUSE = "reuse"   # the ascent applies the eps it kept
    NONE = "none"     # no perturbation: the update's gradient is taken at theta


class StepView(Protocol):
    """One step as an ascent and a part see it (engine.Step is the engine's): what they may
    read, set and call, and nothing of the engine. Set by the components: plan (a part that
    decides_plan), restriction (a part that restricts_directions), indices (the samples of
    the update's gradient pass), per_sample_at_theta, keep_eps; loss, losses, at_theta and
    theta_grads (the ascent's measurements)."""

    closure: Callable[..., torch.Tensor]
    index: int                          # the steps taken before this one
    params: list[torch.Tensor]          # the trainable weights, in stream order
    groups: list[dict[str, Any]]        # the param groups, with this step's values
    masks: Masks                        # the sparse masks over the layout
    plan: Plan
    can_reuse: bool
    first_order: bool
    losses: dict[str, torch.Tensor]
    loss: Optional[torch.Tensor]
    at_theta: Optional[torch.Tensor]
    per_sample_at_theta: bool
    theta_grads: Optional[list[Optional[torch.Tensor]]]
    restriction: Optional[list[torch.Tensor]]
    indices: Optional[torch.Tensor | slice]
    keep_eps: bool

    def gradient(self, name: str, indices: Optional[torch.Tensor | slice] = None, local: bool = False,
                 mask: bool = True) -> torch.Tensor: ...

    def extra(self, name: str, reduce: bool = True) -> torch.Tensor: ...

    def grads(self) -> list[Optional[torch.Tensor]]: ...

    def radius(self, group: Optional[dict[str, Any]] = None) -> float: ...

    def restrict(self, params: Sequence[torch.Tensor], tensors: Sequence[Any]) -> list[Optional[torch.Tensor]]: ...

    def ascent_direction(self) -> list[Optional[torch.Tensor]]: ...

    def mean_over_ranks_(self, t: torch.Tensor) -> torch.Tensor: ...

    def state(self, p: torch.Tensor) -> dict[str, Any]: ...

    def keep(self, p: torch.Tensor, key: str, value: torch.Tensor) -> None: ...


class Component:
    compares_losses = False   # whether its passes compare losses: common random numbers by default
    state_keys: tuple[str, ...] = ()    # the keys it keeps in the optimizer's state_dict (under "sharpness")
    # attributes shown on the optimizer (opt.<name>): settings that are not per param group, and
    # what the last step used
    reports: tuple[str, ...] = ()

    @classmethod
    def needs_indices(cls, options: dict[str, Any]) -> bool:
        """Whether, built with `options`, its closure must take `indices` and return per-sample losses."""
        return False

    def group_defaults(self) -> dict[str, Any]:
        """Hyperparameters kept per param group (schedulers may change them), with their defaults."""
        return {}

    def check_group(self, group: dict[str, Any]) -> None:
        """Validate a param group's values; raise to refuse them. Called at construction,
        for a group added later, and at every step (a scheduler or a user may set them)."""

    def check_groups(self, groups: Sequence[dict[str, Any]]) -> None:
        """Validate the param groups together, at construction and when the layout changes."""

    def relayout(self, layout: Layout, masks: Masks, flat: InPlaceParams | FlatParams | ShardedParams) -> None:
        """Follow a new layout of the weights (construction, a parameter frozen,
        unfrozen or added): rebuild what depends on it. masks: the sparse masks
        (masks.Masks); flat: the weights' buffers (flat.py)."""

    def commit(self, step: StepView) -> None:
        """After a step that was taken."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """state: the optimizer's "sharpness" dict, this component's keys among others."""


class Ascent(Component):
    """How eps is found."""
    first_order = False          # it takes the gradient at theta (observe)
    flattens = False             # it moves the weights with the fused ops, over flat buffers (flat.py)
    estimates_gradient = True    # direction() estimates the gradient at theta (gradient surgery needs it)
    measures_at_theta = True     # sets step.at_theta, per sample when asked (data selection needs it)
    reusable = True              # keeps its eps and applies it again (Plan.REUSE); kept_state saves it
    m_sharpness = False          # under DDP, eps from each rank's own gradient
    batch_fraction = 1.0         # the share of the batch its extra passes see

    def describe(self) -> str:
        """The ascent as a refusal names it."""
        return type(self).__name__

    def pass_options(self) -> dict[str, Any]:
        """Options of the extra passes (passes.Passes: batch_fraction, autocast, name)."""
        return {}

    def observe(self, step: StepView) -> None:
        """Before eps, on a full step: what the ascent measures at theta."""

    def perturbed(self, step: StepView) -> contextlib.AbstractContextManager[None]:
        """A context manager: the weights at theta + eps inside (theta on a step
        whose plan is NONE), theta again when it ends, however it ends."""
        return contextlib.nullcontext()

    def direction(self, step: StepView) -> list[Optional[torch.Tensor]]:
        """The ascent's gradient at theta (a list of tensors in stream order): the
        gradient itself, or what estimates it; for gradient surgery."""
        raise NotImplementedError

    def can_reuse(self) -> bool:
        """Whether it holds a kept eps to apply (a Plan.REUSE step asks)."""
        return False

    def kept_state(self) -> dict[str, Any]:
        """The eps kept for Plan.REUSE, as state_dict entries (an ascent with `reusable` keeps one)."""
        return {}

    def load_kept_state(self, state: dict[str, Any]) -> None:
        """Take back what kept_state returned (state: the optimizer's "sharpness" dict)."""


class Part(Component):
    uses_theta_gradient = False   # reads the gradient at theta for more than eps
    decides_plan = False          # sets step.plan (one such part per composition)
    reuses_eps = False            # its Plan.REUSE steps apply a kept eps and measure nothing at theta
    restricts_directions = False  # sets step.restriction (a perturbation mask)

    def refuses(self, ascent: Ascent, parts: Sequence[Part]) -> Optional[str]:
        """Why this part cannot join `ascent` and `parts` (a sentence), or None."""
        return None

    def radius(self, group: dict[str, Any], rho: float) -> float:
        """The radius of `group` at this step, given rho from the parts before (a schedule)."""
        return rho

    def plan(self, step: StepView) -> None:
        """Set step.plan (a part that decides_plan) and what the step must measure."""

    def before_ascent(self, step: StepView) -> None:
        """After the ascent's observation at theta, before eps (a perturbation mask)."""

    def before_update(self, step: StepView) -> None:
        """At theta + eps, before the update's gradient pass (data selection)."""

    def after_update(self, step: StepView) -> None:
        """On the update's gradients, after the weights are back at theta (gradient surgery)."""


def same_in_every_group(groups: Iterable[dict[str, Any]], name: str, when: str = "at this step") -> Any:
    """A hyperparameter that must be equal in every param group (schedulers may change it)."""
    values = {g[name] for g in groups}
    if len(values) != 1:
        raise ValueError(f"{name} must be the same in every param group for this optimizer ({when}, got "
                         f"{sorted(values)}): its perturbation is one vector over the whole model")
    return values.pop()
