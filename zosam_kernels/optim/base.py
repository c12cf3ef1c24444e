"""The shared base of ZOSAM and the SAM family: a torch.optim.Optimizer that
wraps a base optimizer, shares its param_groups and its state (so LR
schedulers, state_dict and load_state_dict see one optimizer), owns the
layout of the parameters (flat.Layout), their sparsity masks and the policy
of extra passes, and finishes every step the same way: a finiteness guard,
the sparse masks, clipping, the base step.

Every optimizer also takes these options of the training loop (keyword
arguments, taken out before the rest goes to the base optimizer):
grad_scaler (a torch.amp.GradScaler for fp16 autocast: the optimizer scales
the gradient pass's loss, unscales once, skips the step on an overflow and
updates the scale; call opt.step(closure), not scaler.step), max_grad_norm
(clip the gradient's global norm after unscaling, before the base step),
micro_batches (passes.Passes), common_random_numbers (passes.Passes; on by
default for the methods whose passes compare losses: ZO-SAM's family, ESAM)
and process_group (replicas.Replicas: the ranks of a DDP run, by default the
default group when torch.distributed is initialised; False: this process alone).
"""
import warnings

import torch

from ..flat import Layout
from ..masks import Masks
from .passes import Passes, phase
from .replicas import Replicas


LOOP_OPTIONS = ("grad_scaler", "max_grad_norm", "micro_batches", "common_random_numbers", "process_group")


class SharpnessAwareOptimizer(torch.optim.Optimizer):
    compares_losses = False   # whether passes of a step compare losses: then common random numbers by default
    # GradScaler.step(opt, closure) then calls our step, which says how to use a scaler here
    _step_supports_amp_scaling = True

    def __init__(self, params, base_optimizer, defaults, base_kwargs, masks=None, check_finite=True):
        loop = {name: base_kwargs.pop(name) for name in LOOP_OPTIONS if name in base_kwargs}
        self.max_grad_norm = loop.pop("max_grad_norm", None)
        if self.max_grad_norm is not None:
            check_positive("max_grad_norm", self.max_grad_norm)
        loop.setdefault("common_random_numbers", self.compares_losses)
        self.replicas = Replicas(loop.pop("process_group", None))
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise TypeError(f"base_optimizer must be a torch.optim.Optimizer subclass (e.g. "
                            f"torch.optim.SGD), got {base_optimizer!r}")
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.base_optimizer.state = self.state   # base state (momentum, Adam moments) is ours too
        self.defaults.update(self.base_optimizer.defaults)
        self.check_finite = bool(check_finite)
        self.step_count = 0   # steps taken (skipped ones not counted); seeds and schedules use it
        self.layout = Layout(p for g in self.param_groups for p in g["params"])
        if not self.layout.params:
            raise ValueError("params has no parameter that requires grad")
        self.masks = Masks(self.layout, masks)
        self.masks.mask_params_()
        self._loop = loop
        self.passes = self._new_passes()   # how the closure is evaluated (ZOSAM adds its options)

    def _new_passes(self, **options):
        devices = {p.device for p in self.params}
        return Passes(devices=devices, **self._loop, **options)

    @property
    def params(self):
        """The trainable parameters, tied ones once, in the layout's (the direction stream's) order."""
        return self.layout.params

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        if not hasattr(self, "layout"):   # construction: __init__ lays the parameters out
            return
        try:
            self._check_group(self.param_groups[-1])
        except Exception:
            self.param_groups.pop()   # refused: the optimizer stays as it was
            raise
        self._relayout(Layout(p for g in self.param_groups for p in g["params"]))

    def _group_defaults(self, **values):
        """Hyperparameters a subclass keeps per group: set in every group, and in the
        defaults, from which a group added later takes them."""
        self.defaults.update(values)
        for group in self.param_groups:
            for name, value in values.items():
                group.setdefault(name, value)
            self._check_group(group)

    def _check_group(self, group):
        """Complete and validate a param group; raise to refuse it. Subclasses add checks."""

    def _relayout(self, layout):
        """Follow a new layout: subclasses rebuild what depends on it."""
        self.layout = layout
        self.masks.relayout_(layout)
        self.passes.batchnorm.forget()   # new parameters may come with new BatchNorm layers

    def _hyper(self, name):
        """A hyperparameter that must be the same in every param group (schedulers may change it)."""
        values = {g[name] for g in self.param_groups}
        if len(values) != 1:
            raise ValueError(f"{name} must be equal in every param group, got {sorted(values)}")
        return values.pop()

    def _start(self, closure):
        """What every step does first: check the closure, follow a topology change."""
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step needs a closure that runs the forward pass "
                             "and returns the loss")
        if hasattr(self, "found_inf"):   # set by GradScaler.step around its call of ours
            raise RuntimeError(f"GradScaler.step(optimizer, closure) cannot drive {type(self).__name__}, "
                               "which runs its own backward: give the scaler to the optimizer "
                               f"({type(self).__name__}(..., grad_scaler=scaler)) and call "
                               "optimizer.step(closure); it scales, unscales, skips and updates itself")
        self.passes.check(closure)
        self.replicas.check_same_(self.params)
        self.passes.begin_step()
        self.masks.refresh_()

    def _finish(self, losses):
        """The base step and the step count, unless a loss of this step was not
        finite, or the unscaled gradients were not (then nothing changes but
        the grad scaler's scale). Returns whether the step was taken."""
        grads_finite = self.passes.unscale_(self.base_optimizer)   # None without a grad scaler
        if not self._all_finite(losses, grads_finite):
            for p in self.params:
                p.grad = None
            self.passes.update_scale()
            return False
        self.masks.observe_gradients()   # a masking object may keep the dense gradient (RigL)
        with phase("base_step"):
            self.masks.mask_grads_()
            if self.max_grad_norm is not None:   # the norm of the gradient that is applied
                torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            self.base_optimizer.step()
            self.masks.mask_params_()
        self.passes.update_scale()
        self.step_count += 1
        return True

    def _all_finite(self, losses, grads_finite):
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
                          "was skipped, weights and optimizer state are as before it",
                          RuntimeWarning, stacklevel=4)
        return all(flags)

    def _extra_state(self):
        return {"step_count": self.step_count, "extra_passes": self.passes.state_dict()}

    def _load_extra_state(self, extra):
        self.step_count = int(extra.get("step_count", 0))
        self.passes.load_state_dict(extra.get("extra_passes", {}))

    def state_dict(self):
        sd = super().state_dict()
        sd["sharpness"] = self._extra_state()
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        extra = state_dict.pop("sharpness", {})
        super().load_state_dict(state_dict)
        self.base_optimizer.param_groups = self.param_groups
        self.base_optimizer.state = self.state
        self._load_extra_state(extra)

    def zero_grad(self, set_to_none=True):
        self.base_optimizer.zero_grad(set_to_none)


def check_nonnegative(name, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")


def check_positive(name, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def check_positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
