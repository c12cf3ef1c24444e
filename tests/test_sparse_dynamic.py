"""SET, DSR, RigL, MEST: budgets, exact zeros and fresh state with SGD, Adam, SAM and
ZO-SAM over many steps; the drop and grow rules on crafted weights and gradients;
the dense gradient kept on update steps only."""
import math

import pytest
import torch
import torch.nn.functional as F

import zosam_kernels as zk
from zosam_kernels import sparse


def tiny_problem(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, bias=False), torch.nn.BatchNorm2d(6),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(6 * 4 * 4, 10))
    x, y = torch.randn(16, 3, 6, 6), torch.randint(0, 10, (16,))
    return model, x, y


OPTIMIZERS = {
    "sgd": lambda params, masking: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": lambda params, masking: torch.optim.Adam(params, lr=0.01),
    "sam": lambda params, masking: zk.SAM(params, torch.optim.SGD, masks=masking, lr=0.05, momentum=0.9),
    "zosam": lambda params, masking: zk.ZOSAM(params, torch.optim.SGD, masks=masking, lr=0.05,
                                              momentum=0.9),
}
SCHEDULES = {
    "set": lambda m, total: sparse.SET(m, update_interval=3),
    "rigl": lambda m, total: sparse.RigL(m, total, update_interval=3),
    "mest": lambda m, total: sparse.MEST(m, total, update_interval=3),
    "dsr": lambda m, total: sparse.DSR(m, update_interval=3, initial_threshold=0.05),
}


def train_step(opt, model, closure):
    if zk.optim.is_engine(opt):
        return opt.step(closure)
    opt.zero_grad()
    loss = closure()
    loss.backward()
    opt.step()
    return loss


def weight_state(opt, p):
    return [v for v in opt.state.get(p, {}).values() if torch.is_tensor(v) and v.shape == p.shape]


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("method", list(SCHEDULES))
def test_budgets_zeros_and_fresh_state_over_many_steps(method, opt_name):
    model, x, y = tiny_problem(1)
    masking = sparse.Masking(model, 0.3, "erk")
    opt = masking.attach(OPTIMIZERS[opt_name](model.parameters(), masking))
    total = 24
    schedule = SCHEDULES[method](masking, total)
    closure = lambda: F.cross_entropy(model(x), y)  # noqa: E731
    budget = sum(masking.counts.values())
    for t in range(1, total + 1):
        train_step(opt, model, closure)
        masks = getattr(opt, "masks", None)
        if masks is not None:            # the topology reached the optimizer's flat mask buffer
            for n, p in masking.params.items():
                assert torch.equal(masks.get(p), masking.masks[n])
        before = {n: m.clone() for n, m in masking.masks.items()}
        schedule.step()
        for n, p in masking.params.items():
            mask = masking.masks[n]
            assert (p.detach()[~mask] == 0).all(), (t, n)
            for s in weight_state(opt, p):
                assert (s[~mask] == 0).all(), (t, n)
            grown = mask & ~before[n]
            assert (p.detach()[grown] == 0).all()
            for s in weight_state(opt, p):
                assert (s[grown] == 0).all()
            if method != "dsr":          # DSR moves parameters between layers by design
                assert int(mask.sum()) == masking.counts[n]
        assert sum(int(m.sum()) for m in masking.masks.values()) == budget
    last = 0.75 * total if method == "rigl" else total     # RigL stops at 75 % of training
    assert schedule.updates == len([t for t in range(1, total + 1) if t % 3 == 0 and t <= last])
    assert masking.version > 0
    wants_gradient = method in ("rigl", "mest")
    assert masking.dense_gradient_steps == (schedule.updates if wants_gradient else 0)
    assert masking.dense_gradients == {}          # released after the update that used it


def crafted(seed, opt_name="sgd"):
    """A 6x8 linear layer with distinct |θ|, loss <θ, G> (gradient G at every point),
    learning rate 0 so that only the schedule moves the weights."""
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(8, 6, bias=False)
    with torch.no_grad():
        magnitudes = (torch.randperm(48, generator=g).float() + 1) / 48
        signs = torch.where(torch.rand(48, generator=g) < 0.5, -1.0, 1.0)
        lin.weight.copy_((magnitudes * signs).view(6, 8))
    G = ((torch.randperm(48, generator=g).float() + 1) * torch.where(
        torch.rand(48, generator=g) < 0.5, -1.0, 1.0)).view(6, 8)
    masking = sparse.Masking(lin, 0.5, "uniform", seed=seed)
    opt = {"sgd": lambda: torch.optim.SGD(lin.parameters(), lr=0.0),
           "sam": lambda: zk.SAM(lin.parameters(), torch.optim.SGD, masks=masking, lr=0.0),
           "zosam": lambda: zk.ZOSAM(lin.parameters(), torch.optim.SGD, masks=masking, lr=0.0)}[opt_name]()
    masking.attach(opt)
    return lin, G, masking, opt, lambda: (lin.weight * G).sum()


def smallest(values, among, k):
    """Positions (flat) of the k smallest values among the positions `among`, by sorting in
    Python; on ties the higher position goes first (the lower one is kept, as documented)."""
    cands = sorted((float(values[i]), -i) for i in range(values.numel()) if among[i])
    return {-i for _, i in cands[:k]}


def as_set(mask):
    return set(torch.nonzero(mask.reshape(-1)).flatten().tolist())


@pytest.mark.parametrize("opt_name", ["sgd", "sam", "zosam"])
def test_rigl_drops_smallest_weights_and_grows_largest_dense_gradients(opt_name):
    lin, G, masking, opt, closure = crafted(2, opt_name)
    total = 8
    rigl = sparse.RigL(masking, total, update_interval=1)
    for t in range(1, 7):                         # updates at 1..6 = 75 % of 8
        mask = masking.masks["weight"].reshape(-1).clone()
        train_step(opt, lin, closure)
        w = lin.weight.detach().reshape(-1).clone()      # the weights the update sees
        rigl.step()
        k = math.floor(0.3 / 2 * (1 + math.cos(math.pi * t / 6)) * int(mask.sum()))
        dropped = smallest(w.abs(), mask, k)
        after_drop = mask.clone()
        after_drop[list(dropped)] = False
        grown = smallest(-G.reshape(-1).abs(), ~after_drop, k)
        assert as_set(rigl.last_dropped["weight"]) == dropped
        assert as_set(rigl.last_grown["weight"]) == grown
        assert as_set(masking.masks["weight"]) == (as_set(after_drop) | grown)
    for _ in range(2):                            # past 75 %: no more updates
        version = masking.version
        train_step(opt, lin, closure)
        rigl.step()
        assert masking.version == version
    assert masking.dense_gradient_steps == 6


def test_set_drops_smallest_weights_and_grows_at_random():
    lin, G, masking, opt, closure = crafted(3)
    set_ = sparse.SET(masking, update_interval=2)
    grown_sets = []
    for t in range(1, 9):
        mask = masking.masks["weight"].reshape(-1).clone()
        train_step(opt, lin, closure)
        w = lin.weight.detach().reshape(-1).clone()      # the weights the update sees
        set_.step()
        if t % 2:
            assert torch.equal(masking.masks["weight"].reshape(-1), mask)
            continue
        k = math.floor(0.3 * int(mask.sum()))
        dropped = smallest(w.abs(), mask, k)
        assert as_set(set_.last_dropped["weight"]) == dropped
        grown = as_set(set_.last_grown["weight"])
        assert len(grown) == k and not grown & (as_set(mask) - dropped)
        grown_sets.append(grown)
    assert len({frozenset(s) for s in grown_sets}) > 1
    assert masking.dense_gradient_steps == 0


def test_mest_drops_by_weight_plus_gradient_in_elastic_phases():
    lin, G, masking, opt, closure = crafted(4)
    lam = 0.02      # |G| up to 48: the gradient term changes the ranking of |θ| alone
    mest = sparse.MEST(masking, 10, lam=lam, mutation=(0.5, 0.25, 0.0), milestones=(0.3, 0.6),
                       update_interval=1)
    fractions = {1: 0.5, 2: 0.5, 3: 0.25, 4: 0.25, 5: 0.25, 6: 0.0, 7: 0.0}
    changed_ranking = False
    for t, f in fractions.items():
        mask = masking.masks["weight"].reshape(-1).clone()
        train_step(opt, lin, closure)
        w = lin.weight.detach().reshape(-1).clone()      # the weights the update sees
        mest.step()
        k = math.floor(f * int(mask.sum()))
        dropped = smallest(w.abs() + lam * G.reshape(-1).abs(), mask, k)
        changed_ranking |= dropped != smallest(w.abs(), mask, k)
        if k == 0:
            assert torch.equal(masking.masks["weight"].reshape(-1), mask)
            continue
        assert as_set(mest.last_dropped["weight"]) == dropped
        grown = as_set(mest.last_grown["weight"])
        assert len(grown) == k and not grown & (as_set(mask) - dropped)
        assert int(masking.masks["weight"].sum()) == int(mask.sum())
    assert changed_ranking
    assert masking.dense_gradient_steps == 7


def test_dsr_threshold_and_reallocation():
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(10, 20, bias=False), torch.nn.Linear(20, 30, bias=False))
    masking = sparse.Masking(model, 0.4, "uniform")
    with torch.no_grad():
        model[0].weight.uniform_(-1, 1)
        model[1].weight.uniform_(-0.3, 0.3)     # smaller weights: this layer loses more
    masking.apply_()
    dsr = sparse.DSR(masking, update_interval=1, initial_threshold=0.1, target_fraction=0.1)
    budget = sum(masking.counts.values())
    for _ in range(6):
        H = dsr.threshold
        masks = {n: m.clone() for n, m in masking.masks.items()}
        weights = {n: p.detach().clone() for n, p in masking.params.items()}
        dsr.step()
        kept = {n: masks[n] & (weights[n].abs() >= H) for n in masks}
        K = budget - sum(int(m.sum()) for m in kept.values())
        assert dsr.last_pruned == K
        target = 0.1 * budget
        assert dsr.threshold == (2 * H if K < 0.9 * target else H / 2 if K > 1.1 * target else H)
        nonzero = {n: int(m.sum()) for n, m in kept.items()}
        for n, m in masking.masks.items():
            grown = m & ~kept[n]
            assert torch.equal(m & kept[n], kept[n])               # survivors stay
            assert int(grown.sum()) == dsr.last_shares[n]
            assert abs(dsr.last_shares[n] - K * nonzero[n] / sum(nonzero.values())) < 1
            assert (masking.params[n].detach()[~m] == 0).all()
        assert sum(int(m.sum()) for m in masking.masks.values()) == budget
    densities = masking.layer_densities()
    assert densities["0.weight"] > 0.4 > densities["1.weight"]    # reallocated to the larger weights


def test_attach_and_update_zero_the_state_of_pruned_and_grown_weights():
    model, x, y = tiny_problem(3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):                              # dense training: state everywhere
        train_step(opt, model, lambda: F.cross_entropy(model(x), y))
    masking = sparse.Masking(model, 0.3)
    masking.attach(opt)
    for n, p in masking.params.items():
        assert len(weight_state(opt, p)) == 2
        for s in weight_state(opt, p):
            assert (s[~masking.masks[n]] == 0).all() and (s[masking.masks[n]] != 0).all()
    with torch.no_grad():                           # whatever sits at inactive weights ...
        for n, p in masking.params.items():
            p.add_(1.0)
            for s in weight_state(opt, p):
                s.add_(1.0)
    old = {n: m.clone() for n, m in masking.masks.items()}
    masking.update_({n: ~m for n, m in old.items()})  # ... is gone when they are grown
    for n, p in masking.params.items():
        assert (p.detach() == 0).all()
        for s in weight_state(opt, p):
            assert (s == 0).all()


def test_regrowth_shares_respect_room():
    shares = sparse.dsr.regrowth_shares({"a": 90, "b": 10, "c": 0}, {"a": 3, "b": 50, "c": 7}, 20)
    assert shares == {"a": 3, "b": 17, "c": 0}
    assert sum(sparse.dsr.regrowth_shares({"a": 1, "b": 2}, {"a": 5, "b": 5}, 10).values()) == 10


def test_bad_arguments_are_named():
    lin, G, masking, opt, closure = crafted(0)
    with pytest.raises(ValueError, match="density"):
        sparse.Masking(lin, 0.0)
    with pytest.raises(ValueError, match="distribution"):
        sparse.Masking(lin, 0.5, "normal")
    with pytest.raises(ValueError, match="masks"):
        masking.update_({"weight": torch.ones(8, 6, dtype=torch.bool)})
    with pytest.raises(TypeError, match="masks"):
        masking.update_({"weight": torch.ones(6, 8)})
    with pytest.raises(ValueError, match="masks"):
        masking.update_({"bias": torch.ones(6, dtype=torch.bool)})
    with pytest.raises(ValueError, match="update_interval"):
        sparse.SET(masking, update_interval=0)
    with pytest.raises(ValueError, match="drop_fraction"):
        sparse.RigL(masking, 10, drop_fraction=1.5)
    with pytest.raises(ValueError, match="total_steps"):
        sparse.RigL(masking, 0)
    with pytest.raises(ValueError, match="mutation"):
        sparse.MEST(masking, 10, mutation=(0.2, 0.1))
    with pytest.raises(ValueError, match="initial_threshold"):
        sparse.DSR(masking, initial_threshold=0)
