"""SAM and ZO-SAM under RigL, many steps and several topology updates, against a
float64 loop written here: the ascent on the active weights, the dense
gradient at theta + eps for the growth, momentum and weight decay, and RigL's
drop and grow (ranked independently, in float64) with zeroed weights and
momentum for what changed. The one input taken from the package is the
initial random topology (like a seed); every later mask is the reference's own.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import zosam_kernels as zk
from f64 import Float64Model, sam_eps, zosam_eps
from zosam_kernels import sparse
from zosam_kernels.seeds import derived_seed

LR, MOMENTUM, WD, RHO, DELTA, N_DIRS, SEED = 0.1, 0.9, 5e-4, 0.1, 1e-3, 2, 11
STEPS, INTERVAL = 16, 3                 # RigL updates after steps 3, 6, 9, 12 (stop at 75 %)


def conv_problem(seed):
    """A 1-D CNN (two convolutions, a linear head: every weight masked, biases dense)."""
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 6, 5, padding=2), torch.nn.ReLU(),
                                torch.nn.Conv1d(6, 6, 5, padding=2), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(6 * 12, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    x = torch.randn(32, 1, 12, generator=g)
    y = torch.randint(0, 4, (32,), generator=g)
    return model, x, y


def top(scores, count):
    """The `count` largest scores (a float64 vector) as a bool vector; the choice must
    not hang on float32 rounding, so the count-th and the next differ clearly."""
    values, order = torch.sort(scores, descending=True)
    if 0 < count < scores.numel() and math.isfinite(values[count]):
        gap = float(values[count - 1] - values[count])
        assert gap > 1e-6 * max(float(values[count - 1].abs()), 1e-3), "an ambiguous ranking: change the seed"
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[order[:count]] = True
    return keep


class RigLReference:
    """RigL's rule (Evci et al. 2020) on float64 slices of the flat weights."""

    def __init__(self, slices, total):
        self.slices = slices                   # masked layer -> slice of the flat vector
        self.end = math.floor(0.75 * total)

    def is_update(self, t):
        return t % INTERVAL == 0 and t <= self.end

    def update(self, t, theta, grad, mask):
        fraction = 0.3 / 2 * (1 + math.cos(math.pi * t / self.end))
        new = mask.clone()
        for s in self.slices:
            m, active = mask[s].bool(), int(mask[s].sum())
            k = math.floor(fraction * active)
            kept = top(torch.where(m, theta[s].abs(), -math.inf), active - k)
            grown = top(torch.where(kept, -math.inf, grad[s].abs()), k)
            new[s] = (kept | grown).double()
        return new


OPTIMIZERS = {
    "sam": lambda params, masking: zk.SAM(params, torch.optim.SGD, rho=RHO, masks=masking, lr=LR,
                                          momentum=MOMENTUM, weight_decay=WD),
    "zosam": lambda params, masking: zk.ZOSAM(params, torch.optim.SGD, rho=RHO, delta=DELTA, n_dirs=N_DIRS,
                                              seed=SEED, masks=masking, lr=LR, momentum=MOMENTUM,
                                              weight_decay=WD),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_rigl_trajectory_matches_float64(name):
    model, x, y = conv_problem(3)
    masking = sparse.Masking(model, 0.3, "erk", seed=5)
    opt = masking.attach(OPTIMIZERS[name](model.parameters(), masking))
    rigl = sparse.RigL(masking, STEPS, update_interval=INTERVAL)
    f = Float64Model(model, x, y, F.cross_entropy)

    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    slices = [slice(starts[i], starts[i] + sizes[i]) for i, n in enumerate(names) if n in masking.params]
    assert len(slices) == 3
    mask = torch.cat([masking.masks[n].reshape(-1).double() if n in masking.params
                      else torch.ones(p.numel(), dtype=torch.float64)
                      for n, p in model.named_parameters()])
    reference = RigLReference(slices, STEPS)
    theta, buf, changes = f.flat(), None, 0
    dropped = torch.zeros_like(mask)                  # ever dropped: its momentum went stale
    regrown = 0                                       # grown again after a drop: the stale momentum would show
    assert (theta * (1 - mask) == 0).all()          # the attach zeroed the pruned weights

    for t in range(1, STEPS + 1):
        if name == "sam":
            eps = sam_eps(f, theta, RHO, mask)
        else:
            eps, _ = zosam_eps(f, theta, [derived_seed(SEED, t - 1, i) for i in range(N_DIRS)], RHO, DELTA, mask)
        g = f.grad(theta + eps)                       # dense: RigL grows by it
        d = g * mask + WD * theta
        buf = d if buf is None else MOMENTUM * buf + d
        theta = (theta - LR * buf) * mask
        if reference.is_update(t):
            new = reference.update(t, theta, g, mask)
            same = mask * new                         # what changed restarts from 0, momentum too
            regrown += int((dropped * (1 - mask) * new).sum())
            dropped = torch.maximum(dropped, mask * (1 - new))
            theta, buf, changes = theta * same, buf * same, changes + (not torch.equal(new, mask))
            mask = new

        opt.step(lambda: F.cross_entropy(model(x), y))
        rigl.step()
        ours = torch.cat([masking.masks[n].reshape(-1).double() if n in masking.params
                          else torch.ones(p.numel(), dtype=torch.float64)
                          for n, p in model.named_parameters()])
        assert torch.equal(ours, mask), f"step {t}: the topology differs from RigL's rule"
        torch.testing.assert_close(f.flat(), theta, rtol=0, atol=2e-5, msg=f"step {t}")
    # the update at step 12 = 75 % drops a fraction 0.15 (1 + cos(pi)) = 0: the topology moved three times
    assert rigl.updates == 4 and changes == 3 and masking.version == changes
    assert regrown > 0
