"""Lottery tickets: global magnitude pruning of the remaining weights, rewinding to step k."""
import math

import pytest
import torch
import torch.nn.functional as F

import zosam_kernels as zk
from zosam_kernels import sparse
from test_sparse_dynamic import tiny_problem, train_step


@pytest.mark.parametrize("opt_name", ["sgd", "zosam"])
@pytest.mark.parametrize("rewind_step", [0, 2])
def test_rounds_prune_the_smallest_remaining_and_rewind(rewind_step, opt_name):
    model, x, y = tiny_problem(7)
    masking = sparse.Masking(model, 1.0)
    if opt_name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, masks=masking, lr=0.1, momentum=0.9)
    masking.attach(opt)
    lth = sparse.LotteryTicket(masking, prune_fraction=0.2, rewind_step=rewind_step)
    closure = lambda: F.cross_entropy(model(x), y)  # noqa: E731
    total = sum(p.numel() for p in masking.params.values())
    active = total
    saved = None           # the weights after step k (before the first step for k = 0), kept here
    for _ in range(2):
        for t in range(lth.step_count + 1, 6):
            if t - 1 == rewind_step and saved is None:
                saved = {k: v.clone() for k, v in model.state_dict().items()}
            train_step(opt, model, closure)
            lth.step()
        trained = {n: p.detach().clone() for n, p in masking.params.items()}
        old = {n: m.clone() for n, m in masking.masks.items()}
        density = lth.prune_and_rewind_()
        pruned = math.floor(0.2 * active)
        active -= pruned
        assert density == active / total
        flat = torch.cat([torch.where(old[n], trained[n].abs(), math.inf).reshape(-1) for n in trained])
        kth = torch.sort(flat).values[pruned - 1]
        for n, p in masking.params.items():
            assert torch.equal(masking.masks[n], old[n] & (trained[n].abs() > kth))
            assert (p.detach()[~masking.masks[n]] == 0).all()
        for k, v in model.state_dict().items():
            want = saved[k] * masking.masks[k] if k in masking.masks else saved[k]
            assert torch.equal(v, want), k
        assert len(opt.state) == 0
        assert lth.step_count == rewind_step


def test_rewinding_needs_the_step_seen():
    model, x, y = tiny_problem(8)
    lth = sparse.LotteryTicket(sparse.Masking(model, 1.0), rewind_step=3)
    with pytest.raises(RuntimeError, match="rewind_step"):
        lth.prune_and_rewind_()
    with pytest.raises(ValueError, match="prune_fraction"):
        sparse.LotteryTicket(sparse.Masking(model, 1.0), prune_fraction=0)
