"""Drop-and-grow methods that keep every layer's number of active weights:
SET, RigL and MEST. Each is a Schedule: call `step()` after every optimizer step.

At an update, in every masked layer with a active weights, k = floor(f · a)
active weights with the lowest drop score are pruned, then the k weights with
the highest grow score among all weights inactive after the drop are grown
(a weight just dropped may come back, as in RigL's public code). Grown weights
start at 0 with zeroed optimizer state (Masking.update_). `last_dropped` and
`last_grown` (name -> bool tensor) tell what the last update did.

    SET  (Mocanu et al. 2018)  drop |θ|, grow at random, f = zeta = 0.3 constant.
         The paper drops the zeta fraction of the smallest positive and of the largest
         negative weights separately and updates once per epoch; we drop by |θ| (as the
         issue and the later literature do) every `update_interval` steps (default 100,
         the interval RigL's code uses for its SET baseline; set it to the steps per
         epoch for the paper's schedule).
    RigL (Evci et al. 2020)    drop |θ|, grow the largest |dense gradient|,
         f = 0.3/2 · (1 + cos(π t / T_end)), every 100 steps, T_end = 75 % of total_steps
         (paper and code agree). Only the gradient passes of update steps keep a dense
         gradient (Masking.keep_dense_gradient); with SAM and ZO-SAM it is the gradient
         at θ + ε, the one the update step uses.
    MEST (Yuan et al. 2021)    drop |θ| + λ|g| with g the gradient of the update step
         (kept for that step, so the term is really computed), grow at random.
         Elastic mutation as in the public code's EM scripts: the layer is pruned to a
         lower bound and grown back to its budget (the upper bound), the mutated
         fraction falling in phases: `mutation` = (0.2, 0.1, 0.0) of the active weights
         before 56.25 % / 75 % / after of training (the code's 160-epoch ResNet-32 run
         prunes 90 %-sparse layers to 92 %, then 91 %, then 90 % sparsity, at epochs
         < 90, < 120, after; we express the bounds relative to the budget so they carry
         to any density). The code updates every 5 epochs; `update_interval` defaults to
         100 steps here. λ = 1 is our choice.
"""
import math

import torch

from ..masks import keep_top
from .schedule import Schedule, check_fraction


class DropAndGrow(Schedule):

    def drop_fraction(self, t):
        raise NotImplementedError

    def drop_scores(self, p, grad):
        return p.detach().abs()

    def grow_scores(self, p, grad):
        return self.masking.random_scores(p)

    @torch.no_grad()
    def update(self, t):
        masking = self.masking
        grads = masking.take_dense_gradients() if self.needs_gradient else {}
        fraction = self.drop_fraction(t)
        new, self.last_dropped, self.last_grown = {}, {}, {}
        for n, p in masking.params.items():
            mask = masking.masks[n]
            active = int(mask.sum())
            k = math.floor(fraction * active)
            grad = grads.get(n)
            kept = keep_top(torch.where(mask, self.drop_scores(p, grad), -math.inf), active - k)
            grown = keep_top(torch.where(kept, -math.inf, self.grow_scores(p, grad)), k)
            self.last_dropped[n] = mask & ~kept
            self.last_grown[n] = grown
            new[n] = kept | grown
        masking.update_(new)


class SET(DropAndGrow):
    """SET(masking, zeta=0.3, update_interval=100, total_steps=None, stop=1.0)"""

    def __init__(self, masking, zeta=0.3, update_interval=100, total_steps=None, stop=1.0):
        check_fraction("zeta", zeta)
        self.zeta = zeta
        super().__init__(masking, update_interval, total_steps, stop)

    def drop_fraction(self, t):
        return self.zeta


class RigL(DropAndGrow):
    """RigL(masking, total_steps, drop_fraction=0.3, update_interval=100, stop=0.75)"""

    needs_gradient = True

    def __init__(self, masking, total_steps, drop_fraction=0.3, update_interval=100, stop=0.75):
        check_fraction("drop_fraction", drop_fraction)
        self.initial_fraction = drop_fraction
        super().__init__(masking, update_interval, total_steps, stop)
        self.end = max(self.last_update, 1)

    def drop_fraction(self, t):
        return self.initial_fraction / 2 * (1 + math.cos(math.pi * t / self.end))

    def grow_scores(self, p, grad):
        return grad.abs()


class MEST(DropAndGrow):
    """MEST(masking, total_steps, lam=1.0, mutation=(0.2, 0.1, 0.0),
    milestones=(0.5625, 0.75), update_interval=100, stop=1.0)"""

    needs_gradient = True

    def __init__(self, masking, total_steps, lam=1.0, mutation=(0.2, 0.1, 0.0),
                 milestones=(0.5625, 0.75), update_interval=100, stop=1.0):
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0:
            raise ValueError(f"lam must be a non-negative number, got {lam!r}")
        for r in mutation:
            check_fraction("mutation", r)
        if len(mutation) != len(milestones) + 1 or list(milestones) != sorted(milestones):
            raise ValueError(f"mutation must have one more entry than milestones, and milestones must "
                             f"increase; got mutation={mutation!r}, milestones={milestones!r}")
        for m in milestones:
            check_fraction("milestones", m)
        self.lam = lam
        self.mutation = tuple(mutation)
        super().__init__(masking, update_interval, total_steps, stop)
        self.milestones = [m * total_steps for m in milestones]

    def drop_fraction(self, t):
        return self.mutation[sum(t >= m for m in self.milestones)]

    def drop_scores(self, p, grad):
        return p.detach().abs() + self.lam * grad.abs()
