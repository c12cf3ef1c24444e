"""The shared base of ZOSAM and the SAM family: a torch.optim.Optimizer that
wraps a base optimizer, shares its param_groups and its state (so LR
schedulers, state_dict and load_state_dict see one optimizer), owns the
layout of the parameters (flat.Layout), their sparsity masks and the policy
of extra passes, and finishes every step the same way: a finiteness guard,
the sparse masks, the base step.
"""
import warnings

import torch

from ..flat import Layout
from ..masks import Masks
from .passes import ExtraPasses, phase


class SharpnessAwareOptimizer(torch.optim.Optimizer):

    def __init__(self, params, base_optimizer, defaults, base_kwargs, masks=None, check_finite=True):
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
        self.extra = ExtraPasses()   # how extra passes run (ZOSAM sets its options)

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
        self.extra.check(closure)
        self.masks.refresh_()

    def _finish(self, losses):
        """The base step and the step count, unless a loss of this step was not
        finite (then nothing changes). Returns whether the step was taken.

        The check costs one host-device synchronisation; check_finite=False removes it."""
        if self.check_finite:
            finite = torch.stack([torch.isfinite(l).all() for l in losses.values()])
            if not bool(finite.all()):
                bad = [name for name, ok in zip(losses, finite.tolist()) if not ok]
                warnings.warn(f"{type(self).__name__}: non-finite loss in {', '.join(bad)}; the step "
                              "was skipped, weights and optimizer state are as before it",
                              RuntimeWarning, stacklevel=3)
                for p in self.params:
                    p.grad = None
                return False
        self.masks.observe_gradients()   # a masking object may keep the dense gradient (RigL)
        with phase("base_step"):
            self.masks.mask_grads_()
            self.base_optimizer.step()
            self.masks.mask_params_()
        self.step_count += 1
        return True

    def _extra_state(self):
        return {"step_count": self.step_count, "extra_passes": self.extra.state_dict()}

    def _load_extra_state(self, extra):
        self.step_count = int(extra.get("step_count", 0))
        self.extra.load_state_dict(extra.get("extra_passes", {}))

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


def check_positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
