"""DSR, dynamic sparse reparameterisation (Mostafa & Wang 2019).

At every update, every active weight with |θ| < H is pruned (one global
threshold H over all masked layers); H then adapts to the number K pruned:
doubled if K < (1 − tolerance) N_p, halved if K > (1 + tolerance) N_p. The K
weights are regrown at random among the inactive weights, shared out between
layers in proportion to each layer's active weights after the pruning (largest
remainders get the rounding; a layer that runs out of inactive weights passes
its share on), so the total stays exact while layer densities move: the
parameters go where the surviving weights are.

Defaults: H0 = 0.001 and tolerance 0.1 as we read the paper; the paper gives
N_p as an absolute count per model, here `target_fraction` sets it to a
fraction of the active weights (0.1, our choice); `update_interval` 100 steps.
"""
import math

import torch

from ..masks import keep_top
from .schedule import Schedule, check_fraction


class DSR(Schedule):
    """DSR(masking, update_interval=100, initial_threshold=0.001, target_fraction=0.1,
    tolerance=0.1, total_steps=None, stop=1.0)"""

    def __init__(self, masking, update_interval=100, initial_threshold=0.001, target_fraction=0.1,
                 tolerance=0.1, total_steps=None, stop=1.0):
        if isinstance(initial_threshold, bool) or not isinstance(initial_threshold, (int, float)) \
                or not initial_threshold > 0:
            raise ValueError(f"initial_threshold must be a positive number, got {initial_threshold!r}")
        check_fraction("target_fraction", target_fraction, low_open=True)
        check_fraction("tolerance", tolerance)
        self.threshold = float(initial_threshold)
        self.target_fraction = target_fraction
        self.tolerance = tolerance
        super().__init__(masking, update_interval, total_steps, stop)

    @torch.no_grad()
    def update(self, t):
        masking = self.masking
        kept = {n: masking.masks[n] & (p.detach().abs() >= self.threshold)
                for n, p in masking.params.items()}
        active = sum(int(m.sum()) for m in masking.masks.values())
        pruned = active - sum(int(m.sum()) for m in kept.values())
        target = self.target_fraction * active
        if pruned < (1 - self.tolerance) * target:
            self.threshold *= 2
        elif pruned > (1 + self.tolerance) * target:
            self.threshold /= 2
        self.last_pruned = pruned
        self.last_shares = regrowth_shares(
            {n: int(m.sum()) for n, m in kept.items()},
            {n: m.numel() - int(m.sum()) for n, m in kept.items()}, pruned)
        new = {}
        for n, p in masking.params.items():
            grown = keep_top(torch.where(kept[n], -math.inf, masking.random_scores(p)),
                             self.last_shares[n])
            new[n] = kept[n] | grown
        masking.update_(new)

    def state_dict(self):
        return {**super().state_dict(), "threshold": self.threshold}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.threshold = float(state["threshold"])


def regrowth_shares(nonzeros, room, total):
    """Split `total` regrown weights between layers in proportion to `nonzeros`,
    no layer getting more than its `room` (inactive weights); exact sum."""
    shares = dict.fromkeys(nonzeros, 0)
    left = total
    open_layers = [n for n in nonzeros if room[n] > 0]
    while left > 0 and open_layers:
        weight = sum(nonzeros[n] for n in open_layers)
        ideal = {n: left * (nonzeros[n] / weight if weight else 1 / len(open_layers))
                 for n in open_layers}
        give = {n: min(math.floor(ideal[n]), room[n] - shares[n]) for n in open_layers}
        rest = left - sum(give.values())
        for n in sorted(open_layers, key=lambda n: ideal[n] - math.floor(ideal[n]), reverse=True):
            if rest == 0:
                break
            if ideal[n] > give[n] and shares[n] + give[n] < room[n]:
                give[n] += 1
                rest -= 1
        for n in open_layers:
            shares[n] += give[n]
        left -= sum(give.values())
        open_layers = [n for n in open_layers if shares[n] < room[n]]
    return shares
