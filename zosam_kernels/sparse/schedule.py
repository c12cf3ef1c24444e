"""What every dynamic sparse-training method shares: a step counter advanced
by `step()` after each optimizer step, topology updates every `update_interval`
steps up to `stop` (a fraction of `total_steps`), and the request for the dense
gradient of exactly the gradient passes whose update needs it.
"""
import math

from ..optim.checks import check_positive_int




def check_fraction(name, value, low_open=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        0 < value <= 1 if low_open else 0 <= value <= 1)
    if not ok:
        raise ValueError(f"{name} must be a number in {'(0' if low_open else '[0'}, 1], got {value!r}")


class Schedule:
    """Subclasses define `update(t)` (change the masks at step t) and set
    `needs_gradient` when the update reads the gradient of step t."""

    needs_gradient = False

    def __init__(self, masking, update_interval, total_steps=None, stop=1.0):
        check_positive_int("update_interval", update_interval)
        if total_steps is not None:
            check_positive_int("total_steps", total_steps)
        check_fraction("stop", stop)
        self.masking = masking
        self.update_interval = update_interval
        self.total_steps = total_steps
        self.last_update = None if total_steps is None else math.floor(stop * total_steps)
        self.step_count = 0
        self.updates = 0
        self._request_gradient()

    def is_update_step(self, t):
        return t % self.update_interval == 0 and (self.last_update is None or t <= self.last_update)

    def _request_gradient(self):
        self.masking.keep_dense_gradient = self.needs_gradient and self.is_update_step(self.step_count + 1)

    def step(self):
        """Call once after every optimizer step."""
        self.step_count += 1
        if self.is_update_step(self.step_count):
            self.update(self.step_count)
            self.updates += 1
        self._request_gradient()

    def update(self, t):
        raise NotImplementedError

    def state_dict(self):
        return {"step_count": self.step_count, "updates": self.updates}

    def load_state_dict(self, state):
        self.step_count = int(state["step_count"])
        self.updates = int(state["updates"])
        self._request_gradient()
