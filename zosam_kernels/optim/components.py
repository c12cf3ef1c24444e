"""What the engine asks of an ascent and of a part (engine.py): every hook,
with the no-op that most of them keep. A component sees a step only through
engine.Step."""
import contextlib


class Component:
    compares_losses = False   # whether its passes compare losses: common random numbers by default
    state_keys = ()           # the keys it keeps in the optimizer's state_dict (under "sharpness")

    def group_defaults(self):
        """Hyperparameters kept per param group (schedulers may change them), with their defaults."""
        return {}

    def check_group(self, group):
        """Complete and validate a param group; raise to refuse it."""

    def check_groups(self, groups):
        """Validate the param groups together (raise to refuse a new one)."""

    def relayout(self, engine, layout):
        """Follow a new layout of the weights (construction, a parameter frozen,
        unfrozen or added): rebuild what depends on it."""

    def commit(self, step):
        """After a step that was taken."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        """state: the optimizer's "sharpness" dict, this component's keys among others."""


class Ascent(Component):
    """How eps is found. first_order: it takes the gradient at theta (observe);
    flattens: it moves the weights with the fused ops, over flat buffers (flat.py)."""
    first_order = False
    flattens = False
    estimates_gradient = True   # direction() estimates the gradient at theta (gradient surgery needs it)
    measures_at_theta = True    # sets step.at_theta, per sample when asked (data selection needs it)
    reusable = True             # can keep its eps and apply it again (Reuse)

    def pass_options(self):
        """Options of the extra passes (passes.Passes: batch_fraction, autocast, name)."""
        return {}

    def observe(self, step):
        """Before eps, on a full step: what the ascent measures at theta."""

    def perturbed(self, step):
        """A context manager: the weights at theta + eps inside (theta on a step
        whose plan is "none"), theta again when it ends, however it ends."""
        return contextlib.nullcontext()

    def direction(self, step):
        """The ascent's gradient at theta (a list of tensors in stream order): the
        gradient itself, or what estimates it; for gradient surgery."""
        raise NotImplementedError


class Part(Component):
    uses_theta_gradient = False   # reads the gradient at theta for more than eps

    def refuses(self, ascent, parts):
        """Why this part cannot join `ascent` and `parts` (a sentence), or None."""
        return None

    def plan(self, step):
        """Set step.plan ("full", "reuse" or "none") and what the step must measure."""

    def before_ascent(self, step):
        """After the ascent's observation at theta, before eps (a perturbation mask)."""

    def before_update(self, step):
        """At theta + eps, before the update's gradient pass (data selection)."""

    def after_update(self, step):
        """On the update's gradients, after the weights are back at theta (gradient surgery)."""


def same_in_every_group(groups, name, when="at this step"):
    """A hyperparameter that must be equal in every param group (schedulers may change it)."""
    values = {g[name] for g in groups}
    if len(values) != 1:
        raise ValueError(f"{name} must be the same in every param group for this optimizer ({when}, got "
                         f"{sorted(values)}): its perturbation is one vector over the whole model")
    return values.pop()
