"""The engine: the family's one step skeleton (docs/DESIGN.md, "The engine").

    begin -> ascent (eps) -> gradient pass at theta + eps -> gradient surgery -> restore -> base step

An optimizer of the family is an Engine with an ascent (gradient_ascent.py, stream_ascents.py, ...: how eps
is found) and optional parts (parts.py: a perturbation mask, reuse every k
steps, gradient surgery, data selection). The engine is the torch
optimizer: it wraps a base optimizer and shares its param_groups and state
(so LR schedulers, state_dict and load_state_dict see one optimizer), and it
holds the loop's machinery, which ascents and parts never see: the closure
runner (passes.Passes: common random numbers, micro-batches, the GradScaler,
BatchNorm freezing, profiler phases), clipping, the ranks of a DDP run
(replicas.Replicas), FSDP2's gathering, the sparse masks, the layout of the
weights and its flat buffers (flat.py). What the ascent and parts see of a
step is a `Step`.

Parameters that change under the optimizer: every step starts by comparing
the param groups with the layout it was made from. A parameter whose
requires_grad changed, or one added by add_param_group, gives a new layout
(the flat buffers are made anew, values kept): an unfrozen parameter is
perturbed and stepped like the rest from this step on, a frozen one is left
alone (its gradient, which the optimizer made, is dropped). Parameters on
one storage (`.data` tying, a reshaped view) are one weight (flat.Layout):
perturbed once, their gradients summed into the first one's, stepped once,
as if tied with `a.weight = b.weight`.

A step that raises leaves the weights as they were (the ascent restores
them), the BatchNorm statistics too, and no gradient; a step with a
non-finite loss or (with a GradScaler) non-finite gradients is skipped the
same way, with a warning for the loss. The base step, the step count and
the parts' updates happen only for a step that is taken.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence, TypeGuard, cast

import torch
from torch.amp.grad_scaler import GradScaler  # from its module: torch 2.11's torch.amp does not export it to mypy

from ..flat import FlatParams, InPlaceParams, Layout, dense_strides
from ..masks import Masks
from ..sharded import ShardedParams, is_sharded
from .checks import check_nonnegative, check_positive
from .components import Ascent, Component, Part, Plan, same_in_every_group
from .passes import ADAPTERS, Passes, mean_loss, phase
from .replicas import Replicas

if TYPE_CHECKING:
    from torch.optim.optimizer import ParamsT

LOOP_OPTIONS = ("grad_scaler", "max_grad_norm", "micro_batches", "common_random_numbers", "process_group")

Closure = Callable[..., torch.Tensor]


class Step:
    """One step as the ascent and the parts see it.

    plan: a components.Plan (FULL, REUSE or NONE); a part that decides_plan
    sets it in `plan`. can_reuse: whether the ascent holds a kept eps.
    first_order: whether the ascent takes the gradient at theta. losses:
    every loss of the step by name (all must be finite for it to be taken).
    loss: what step() returns, the loss at theta when a pass measured it,
    else the update pass's. theta_grads: the gradient at theta, where a pass
    took one. restriction: a perturbation mask (one flat bool buffer per
    bucket, within the sparse masks) that the ascent keeps eps to. indices:
    the samples of the update's gradient pass (None: all).
    per_sample_at_theta: whether a part needs per-sample losses at theta
    (`at_theta`)."""

    def __init__(self, engine: "Engine", closure: Closure):
        self._engine = engine
        self.closure = closure
        self.index = engine.step_count
        self.params = engine.layout.params
        self.groups = engine.param_groups
        self.masks = engine.masks
        self.plan = Plan.FULL
        self.can_reuse = engine.ascent.can_reuse()
        self.first_order = engine.ascent.first_order
        self.losses: dict[str, torch.Tensor] = {}
        self.loss: Optional[torch.Tensor] = None
        self.at_theta: Optional[torch.Tensor] = None
        self.per_sample_at_theta = False
        self.theta_grads: Optional[list[Optional[torch.Tensor]]] = None
        self.restriction: Optional[list[torch.Tensor]] = None
        self.indices: Optional[torch.Tensor | slice] = None
        self.returned: Optional[torch.Tensor] = None
        self.keep_eps = False
        self._moved_batchnorm = False

    def gradient(self, name: str, indices: Optional[torch.Tensor | slice] = None, local: bool = False,
                 mask: bool = True) -> torch.Tensor:
        """A gradient pass at the weights as they are now: the first of a step
        moves BatchNorm's statistics, later ones leave them. Gradients of tied
        parameters are summed into their owners', and masked unless mask=False
        (the update's gradient stays dense until the base step: a masking
        object may read it, RigL's growth). Returns what the closure returned
        (per-sample losses or the loss), detached."""
        e = self._engine
        with e.flat.gathering():
            returned = e.passes.gradient(self.closure, e.trainable, freeze_batchnorm=self._moved_batchnorm,
                                         indices=indices, reduce=False, replay=True, local=local)
        self._moved_batchnorm = True
        e.fold_tied_gradients_()
        if mask:
            e.masks.mask_grads_()
        self.losses[name] = mean_loss(returned)
        return returned

    def extra(self, name: str, reduce: bool = True) -> torch.Tensor:
        """An extra pass (no graph, BatchNorm left alone) at the weights as they are now."""
        with self._engine.flat.gathering():
            return self._engine.passes.extra(self.closure, reduce=reduce, name=name)

    def grads(self) -> list[Optional[torch.Tensor]]:
        """The weights' gradients now (None where a weight got none), in stream order."""
        return [p.grad for p in self.params]

    def radius(self, group: Optional[dict[str, Any]] = None) -> float:
        """The perturbation radius of a param group at this step (a part may schedule
        it); group None: the one radius of an eps normalised over the whole model,
        which must then be the same in every group."""
        if group is not None:
            return self._engine.radius(group)
        rho: float = same_in_every_group([{"rho": self._engine.radius(g)} for g in self.groups], "rho")
        check_nonnegative("rho", rho)
        return rho

    def restrict(self, params: Sequence[torch.Tensor], tensors: Sequence[Any]) -> list[Optional[torch.Tensor]]:
        """tensors (one per weight of `params`, None allowed) kept to the perturbation
        restriction: new tensors, zero outside it; the same list when there is none."""
        if self.restriction is None:
            return list(tensors)
        by_param = dict(zip(map(id, self.params), self.masks.layout.views(self.restriction)))
        return [None if t is None else t * by_param[id(p)] for p, t in zip(params, tensors)]

    def ascent_direction(self) -> list[Optional[torch.Tensor]]:
        """The ascent's gradient at theta, or its estimate (gradient surgery reads it)."""
        return self._engine.ascent.direction(self)

    def mean_over_ranks_(self, t: torch.Tensor) -> torch.Tensor:
        """t = its mean over the ranks of a data-parallel run, in place (one all-reduce)."""
        return self._engine.replicas.mean_(t)

    def state(self, p: torch.Tensor) -> dict[str, Any]:
        """The optimizer state of weight p (shared with the base optimizer, saved with
        it), to read: an empty one is not created."""
        return cast(dict[str, Any], self._engine.state.get(p, {}))

    def keep(self, p: torch.Tensor, key: str, value: torch.Tensor) -> None:
        """Keep `value` in weight p's optimizer state (saved and resumed with it)."""
        self._engine.state[p][key] = value


class Engine(torch.optim.Optimizer):
    """Engine(params, base_optimizer=torch.optim.SGD, *, ascent, parts=(), masks=None,
    check_finite=True, grad_scaler=None, max_grad_norm=None, micro_batches=1,
    common_random_numbers=None, process_group=None, **base_kwargs)

    step(closure): closure() runs the forward pass on the current batch and
    returns the loss (a scalar, or a 1-D tensor of per-sample losses); it
    never calls backward() and never zeroes gradients: the optimizer calls
    it as often as its method needs, without autograd where it needs only
    the loss, and runs the one backward of each gradient pass itself.
    (torch's LBFGS closure, which zeroes and calls backward, is refused with
    that explanation.) Methods that run part of a batch need
    `closure(indices=None)` returning the losses of those samples
    (passes.py). Returns the loss at theta, detached.

    Loop options: grad_scaler (a torch.amp.GradScaler: the optimizer scales,
    unscales, skips and updates; call opt.step(closure), not scaler.step),
    max_grad_norm (clip the global norm of the gradient that is applied),
    micro_batches, common_random_numbers (None: on where the step compares
    losses) and process_group (the ranks to agree with; False: this process
    alone). The rest goes to the base optimizer."""

    # GradScaler.step(opt, closure) calls our step instead of unscaling first; step() then
    # says how a scaler is given to this optimizer
    _step_supports_amp_scaling = True

    def __init__(self, params: ParamsT, base_optimizer: type[torch.optim.Optimizer] = torch.optim.SGD, *,
                 ascent: Ascent, parts: Sequence[Part] = (), masks: Any = None, check_finite: bool = True,
                 grad_scaler: Optional[GradScaler] = None, max_grad_norm: Optional[float] = None,
                 micro_batches: int = 1, common_random_numbers: Optional[bool] = None,
                 process_group: Any = None, **base_kwargs: Any) -> None:
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise TypeError(f"base_optimizer must be a torch.optim.Optimizer subclass (e.g. "
                            f"torch.optim.SGD), got {base_optimizer!r}")
        if max_grad_norm is not None:
            check_positive("max_grad_norm", max_grad_norm)
        self.ascent, self.parts = ascent, list(parts)
        self._check_composition()
        self.max_grad_norm, self.check_finite = max_grad_norm, bool(check_finite)
        self.replicas = Replicas(process_group)
        defaults: dict[str, Any] = {}
        for component in self._components():
            defaults.update(component.group_defaults())
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.base_optimizer.state = self.state   # base state (momentum, Adam moments) is ours too
        self.defaults.update(self.base_optimizer.defaults)
        for group in self.param_groups:
            self._check_group(group)
        self.step_count = 0   # steps taken (skipped ones not counted); seeds and schedules use it
        layout = self._new_layout()
        if not layout.params:
            raise ValueError("params has no parameter that requires grad")
        self.masks = Masks(layout, masks)
        if common_random_numbers is None:
            common_random_numbers = any(c.compares_losses for c in self._components())
        self.passes = Passes(devices={p.device for p in layout.params}, grad_scaler=grad_scaler,
                             micro_batches=micro_batches, common_random_numbers=common_random_numbers,
                             **ascent.pass_options())
        self._lay_out(layout)

    # ---- composition ------------------------------------------------------------------
    def _components(self) -> list[Component]:
        return [self.ascent, *self.parts]

    def _check_composition(self) -> None:
        """Refuse, with the reason, a composition the math does not allow."""
        kinds = [type(p).__name__ for p in self.parts]
        twice = sorted({k for k in kinds if kinds.count(k) > 1})
        if twice:
            raise ValueError(f"parts: {', '.join(twice)} given twice; give each part once")
        deciders = [type(p).__name__ for p in self.parts if p.decides_plan]
        if len(deciders) > 1:
            raise ValueError(f"parts: {' and '.join(deciders)} both decide which steps are full; use one")
        if self.ascent.m_sharpness:
            for part in self.parts:
                if part.uses_theta_gradient:
                    raise ValueError(f"m_sharpness: {type(part).__name__} uses the gradient at theta for more "
                                     "than eps, and under m-sharpness it differs between the ranks (their "
                                     "states would drift apart); use m_sharpness with the ascent alone")
        for part in self.parts:
            reason = part.refuses(self.ascent, self.parts)
            if reason:
                raise ValueError(f"{type(part).__name__} cannot be combined with {type(self.ascent).__name__}"
                                 f"{' and these parts' if len(self.parts) > 1 else ''}: {reason}")
        keys = [k for c in self._components() for k in c.state_keys]
        if len(set(keys)) != len(keys):
            raise ValueError(f"parts: two parts keep the same state ({sorted(keys)}); give each once")
        shown = [n for c in self._components() for n in c.reports]
        if len(set(shown)) != len(shown):
            raise ValueError(f"parts: two components report the same name ({sorted(shown)}); give each once")
        hidden = sorted(n for n in shown if hasattr(Engine, n))
        if hidden:   # a component's report must not be hidden by an attribute of the optimizer
            raise TypeError(f"{hidden}: reported by a component and an attribute of {type(self).__name__}")

    def _check_group(self, group: dict[str, Any]) -> None:
        for component in self._components():
            for name, value in component.group_defaults().items():
                group.setdefault(name, value)
            component.check_group(group)

    def radius(self, group: dict[str, Any]) -> float:
        rho: float = group["rho"]
        for part in self.parts:
            rho = part.radius(group, rho)
        return rho

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if not hasattr(self, "layout"):   # construction: __init__ lays the parameters out
            return
        try:
            self._check_group(self.param_groups[-1])
            for component in self._components():
                component.check_groups(self.param_groups)
            layout = self._new_layout()
        except Exception:
            self.param_groups.pop()   # refused: the optimizer stays as it was
            raise
        self._relayout(layout)

    # ---- the layout, and parameters that change under the optimizer -----------------
    def _new_layout(self) -> Layout:
        for component in self._components():
            component.check_groups(self.param_groups)
        return Layout(p for g in self.param_groups for p in g["params"])

    def _lay_out(self, layout: Layout) -> None:
        """Make the flat parameters of `layout` and tell the components."""
        self.layout = layout
        self.trainable = layout.params + [a for a, _ in layout.aliases]
        sharded = [is_sharded(p) for p in layout.params]
        self.flat: InPlaceParams | FlatParams | ShardedParams
        if not self.ascent.flattens:
            self.flat = InPlaceParams(layout)
        elif any(sharded):
            if not all(sharded) or layout.aliases:
                raise NotImplementedError("params: on FSDP2 (fully_shard) every parameter must be sharded, "
                                          "none tied to another")
            if any(p.restricts_directions for p in self.parts):
                raise NotImplementedError("params: on FSDP2 (fully_shard) the directions run over all weights "
                                          "(no perturbation mask)")
            self.flat = ShardedParams(layout)
        else:
            self.flat = FlatParams(layout)
        self.masks.mask_params_()
        for component in self._components():
            component.relayout(layout, self.masks, self.flat)

    def _relayout(self, layout: Layout) -> None:
        left = {id(p) for p in self.trainable} - {id(p) for p in layout.params} - {id(a) for a, _ in layout.aliases}
        for p in self.trainable:
            if id(p) in left:
                p.grad = None   # ours, and the base step must not apply it to a frozen parameter
        self.masks.relayout_(layout)
        self.passes.batchnorm.forget()   # new parameters may come with new BatchNorm layers
        self._lay_out(layout)

    def _follow_param_changes(self) -> None:
        signature = tuple((id(p), p.requires_grad) for g in self.param_groups for p in g["params"])
        if signature != self.layout.signature:
            layout = self._new_layout()
            if not layout.params:
                raise ValueError("params: no parameter of the optimizer requires grad any more")
            self._relayout(layout)
        self.flat.check_bound()

    @torch.no_grad()
    def fold_tied_gradients_(self) -> None:
        """Each alias's gradient into its owner's (one weight, one gradient), in memory order."""
        for alias, owner in self.layout.aliases:
            g, alias.grad = alias.grad, None
            if g is None:
                continue
            if g.shape != owner.shape or g.stride() != owner.stride():
                g = _in_memory_order_of(g, alias, owner)
            owner.grad = g if owner.grad is None else owner.grad.add_(g)

    # ---- the step ---------------------------------------------------------------------
    # Never traced: called from a torch.compile'd function, the step runs eagerly (the model
    # inside the closure stays compiled), as it must to find the BatchNorm layers in one eager
    # pass and to move the weights between passes.
    @torch.compiler.disable  # type: ignore[untyped-decorator, unused-ignore]  # unannotated (only --strict minds)
    def step(self, closure: Optional[Closure] = None) -> torch.Tensor:
        """One step of the method; returns the loss at theta (detached).

        closure() must run the forward pass on the current batch and return the
        loss: a scalar, or a 1-D tensor of per-sample losses (their mean is
        used). It must NOT call backward() or zero the gradients: the optimizer
        evaluates it as often as its method needs (without autograd where only
        the loss is needed) and runs the backward of each gradient pass itself.
        This is not torch's LBFGS convention; a trainer that builds such a
        closure needs its adapter (zosam_kernels.integrations). Options that run
        part of a batch (zo_batch_fraction, micro_batches, ESAM's data
        selection) need `closure(indices=None)` returning the losses of those
        samples. Not optional, unlike most torch optimizers' closure."""
        s = self._begin(closure)
        with self._rolled_back_on_fault():
            for part in self.parts:
                part.plan(s)
            if s.plan is Plan.FULL:
                self.ascent.observe(s)             # a first-order ascent: the gradient pass at theta
            for part in self.parts:
                part.before_ascent(s)
            with self.ascent.perturbed(s):         # theta + eps; theta again when the block ends, however
                for part in self.parts:
                    part.before_update(s)
                # at theta (plan "none") the masked g, as every pass at theta gives; at theta + eps the
                # gradient stays dense until the base step
                at_theta = s.plan is Plan.NONE
                s.returned = s.gradient("the gradient pass" if at_theta else "the gradient pass at theta + eps",
                                        indices=s.indices, mask=at_theta)
            for part in self.parts:
                part.after_update(s)               # gradient surgery
            if s.loss is None:
                s.loss = s.losses[next(reversed(s.losses))]
            if self._finish(s):
                for component in self._components():
                    component.commit(s)
        return s.loss

    def _begin(self, closure: Optional[Closure]) -> Step:
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step needs a closure that runs the forward pass "
                             f"and returns the loss (it must not call backward). {ADAPTERS}")
        if getattr(self, "found_inf", None) is not None or getattr(self, "grad_scale", None) is not None:
            # GradScaler.step sets these on an optimizer that handles scaling itself, then calls step()
            raise RuntimeError(f"GradScaler.step(optimizer, closure) cannot drive {type(self).__name__}, "
                               "which runs its own backward: give the scaler to the optimizer "
                               f"({type(self).__name__}(..., grad_scaler=scaler)) and call "
                               "optimizer.step(closure); it scales, unscales, skips and updates itself")
        self.passes.check(closure)
        self._follow_param_changes()
        for group in self.param_groups:   # values set after construction (a scheduler, a user): as there
            for component in self._components():
                component.check_group(group)
        self.replicas.check_same_(self.layout.params)
        self.passes.begin_step()
        self.masks.refresh_()
        return Step(self, closure)

    @contextlib.contextmanager
    def _rolled_back_on_fault(self) -> Iterator[None]:
        """A step that raises leaves no gradient and the buffers as it found them
        (the ascent has put the weights back)."""
        try:
            yield
        except BaseException:
            self._drop_gradients()
            self.passes.roll_back()
            raise

    def _drop_gradients(self) -> None:
        for p in self.trainable:
            p.grad = None

    def _finish(self, s: Step) -> bool:
        """The base step and the step count, unless a loss of this step was not
        finite, or the unscaled gradients were not (then nothing changes but
        the grad scaler's scale). Returns whether the step was taken."""
        grads_finite = self.passes.unscale_(self.base_optimizer)   # None without a grad scaler
        if not self._all_finite(s.losses, grads_finite):
            self._drop_gradients()
            self.passes.roll_back()
            self.passes.update_scale()
            return False
        self.masks.observe_gradients()   # a masking object may keep the dense gradient (RigL)
        with phase("base_step"):
            self.masks.mask_grads_()
            if self.max_grad_norm is not None:   # the norm of the gradient that is applied
                torch.nn.utils.clip_grad_norm_(self.layout.params, self.max_grad_norm)
            self.base_optimizer.step()
            self.masks.mask_params_()
        self.passes.update_scale()
        self.passes.observe_batch(cast(torch.Tensor, s.returned))
        self.step_count += 1
        return True

    def _all_finite(self, losses: dict[str, torch.Tensor], grads_finite: Optional[torch.Tensor]) -> bool:
        """Every loss finite (check_finite) and the unscaled gradients finite (with
        a grad scaler). One host-device synchronisation; none with
        check_finite=False and no grad scaler. A non-finite loss is warned
        about; an overflow of fp16 gradients is the grad scaler's business."""
        if not self.check_finite:   # (the unscaled gradients are DDP's mean: the same on every rank)
            return grads_finite is None or bool(grads_finite)
        flags = [torch.isfinite(loss).all() for loss in losses.values()]
        if grads_finite is not None:
            flags.append(grads_finite.to(flags[0].device))
        flags = self.replicas.all_(torch.stack(flags)).tolist()   # skipped on one rank: on all
        bad = [name for name, ok in zip(losses, flags) if not ok]
        if bad:
            warnings.warn(f"{type(self).__name__}: non-finite loss in {', '.join(bad)}; the step "
                          "was skipped, weights, buffers and optimizer state are as before it",
                          RuntimeWarning, stacklevel=4)
        return all(flags)

    # ---- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        extra = {"step_count": self.step_count, "extra_passes": self.passes.state_dict(),
                 **self.ascent.kept_state()}
        for component in self._components():
            extra.update(component.state_dict())
        sd["sharpness"] = extra
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("sharpness", {})
        groups, state = self.param_groups, self.state
        super().load_state_dict(state_dict)
        # torch's load_state_dict makes a new list of groups and a new state: load them into the
        # objects we had, which the base optimizer, an LR scheduler's wrapper or an adapter's stand-in
        # (integrations/hf.py) may hold, so none of them is left with the groups of before
        groups[:], self.param_groups = self.param_groups, groups
        state.clear()
        state.update(self.state)
        self.state = self.base_optimizer.state = state
        self.base_optimizer.param_groups = groups
        self.step_count = int(extra.get("step_count", 0))
        self.passes.load_state_dict(extra.get("extra_passes", {}))
        for component in self._components():
            component.load_state_dict(extra)
        self.ascent.load_kept_state(extra)

    @property
    def params(self) -> list[torch.Tensor]:
        """The trainable weights, tied ones once, in the layout's (the direction stream's) order."""
        return self.layout.params

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none)

    def __getattr__(self, name: str) -> Any:
        """What the components report (components.Component.reports), read on the optimizer:
        `opt.n_dirs`, `opt.k`, `opt.last_seeds`, `opt.perturbation_mask`, ..."""
        for component in [self.__dict__.get("ascent"), *self.__dict__.get("parts", ())]:
            if component is not None and name in component.reports:
                return getattr(component, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def is_engine(optimizer: object) -> TypeGuard[Engine]:
    """Whether `optimizer` is a member of the family (it takes a closure, runs its own
    backward and applies its masks) rather than a plain torch optimizer."""
    return isinstance(optimizer, Engine)


def _in_memory_order_of(g: torch.Tensor, alias: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """The gradient g of `alias` as a tensor of `owner`'s shape and strides whose
    memory holds the same elements: alias and owner cover the same memory."""
    as_alias = torch.empty_strided(alias.shape, dense_strides(alias), dtype=g.dtype, device=g.device)
    as_alias.copy_(g)
    out = torch.empty_strided(owner.shape, dense_strides(owner), dtype=g.dtype, device=g.device)
    out.as_strided((out.numel(),), (1,)).copy_(as_alias.as_strided((g.numel(),), (1,)))
    return out
