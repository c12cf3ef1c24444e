"""Lottery tickets: iterative magnitude pruning with rewinding (Frankle & Carbin
2019; rewinding to step k as in Frankle et al. 2020, k = 0 is the original LTH).

The user's loop trains a round, calling `step()` after every optimizer step
(the weights of step `rewind_step` are saved on the way), then calls
`prune_and_rewind_()`: the `prune_fraction` (default 0.2, the paper's rate for
convolutional networks) of the remaining masked weights with the smallest |θ|
are pruned, one ranking over all masked layers, and the model's parameters and
buffers go back to their values at step k with the new mask applied; the state
of the attached optimizers is cleared, so the next round starts as the first did.
Start from a dense Masking (density=1.0) to find a ticket from scratch.
"""
import math

import torch

from ..masks import keep_top_across
from .schedule import check_fraction


class LotteryTicket:
    """LotteryTicket(masking, prune_fraction=0.2, rewind_step=0)"""

    def __init__(self, masking, prune_fraction=0.2, rewind_step=0):
        check_fraction("prune_fraction", prune_fraction, low_open=True)
        if isinstance(rewind_step, bool) or not isinstance(rewind_step, int) or rewind_step < 0:
            raise ValueError(f"rewind_step must be an int >= 0, got {rewind_step!r}")
        self.masking = masking
        self.prune_fraction = prune_fraction
        self.rewind_step = rewind_step
        self.step_count = 0
        self.rounds = 0
        self.saved = self._snapshot() if rewind_step == 0 else None

    def _snapshot(self):
        return {n: t.detach().clone() for n, t in self.masking.model.state_dict().items()}

    def step(self):
        """Call once after every optimizer step."""
        self.step_count += 1
        if self.step_count == self.rewind_step and self.saved is None:
            self.saved = self._snapshot()

    @torch.no_grad()
    def prune_and_rewind_(self):
        """End a round: prune by magnitude, rewind to step k. Returns the new density."""
        if self.saved is None:
            raise RuntimeError(f"the weights of step rewind_step={self.rewind_step} were never seen: "
                               f"call step() after every optimizer step, for at least that many steps")
        masking = self.masking
        active = {n: int(m.sum()) for n, m in masking.masks.items()}
        keep = sum(active.values()) - math.floor(self.prune_fraction * sum(active.values()))
        new = dict(zip(masking.names, keep_top_across([p.detach().abs() for p in masking.params.values()],
                                                       keep, list(masking.masks.values()))))
        for n, t in masking.model.state_dict().items():
            t.copy_(self.saved[n])
        masking.update_(new)
        masking.apply_()
        for opt in masking.optimizers:
            opt.state.clear()
        self.step_count = self.rewind_step
        self.rounds += 1
        return masking.density()

    def state_dict(self):
        """Round, step counter and the saved weights of the rewind step."""
        return {"step_count": self.step_count, "rounds": self.rounds, "saved": self.saved}

    def load_state_dict(self, state):
        self.step_count = int(state["step_count"])
        self.rounds = int(state["rounds"])
        self.saved = state["saved"]
