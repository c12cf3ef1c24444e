"""The SAM family (ESAM, LookSAM, GSAM, SSAM, ZO-LookSAM, ZO-SSAM) against
their equations computed independently in float64."""
import pytest
import torch
import torch.nn.functional as F

import zosam_kernels as zk
from f64 import Float64Model, sam_eps, sgd_step
from test_zosam import flat_mask, make_problem, random_masks

LR = 0.1


def per_sample_closure(model, x, y):
    """A closure with per-sample losses and the optional subset argument."""
    def closure(indices=None):
        xi, yi = (x, y) if indices is None else (x[indices], y[indices])
        return F.cross_entropy(model(xi), yi, reduction="none")
    return closure


def tensor_mask(model, chosen):
    """Float64 vector: 1 on the weights of the chosen parameter tensors."""
    return torch.cat([torch.full((p.numel(),), float(c), dtype=torch.float64)
                      for p, c in zip(model.parameters(), chosen)])


# ---------------------------------------------------------------- ESAM

@pytest.mark.parametrize("masked", [False, True])
def test_esam_beta_gamma_one_is_sam_exactly(masked):
    runs = []
    for cls in ("SAM", "ESAM"):
        model, x, y = make_problem(30)
        masks = random_masks(model, 0.5, 30) if masked else None
        kw = dict(beta=1.0, gamma=1.0) if cls == "ESAM" else {}
        opt = getattr(zk, cls)(model.parameters(), torch.optim.SGD, rho=0.1, masks=masks, lr=LR,
                               momentum=0.9, **kw)
        for _ in range(3):
            opt.step(per_sample_closure(model, x, y))
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_esam_weight_perturbation_matches_float64():
    model, x, y = make_problem(31)
    f = Float64Model(model, x, y, F.cross_entropy)
    theta0 = f.flat()
    opt = zk.ESAM(model.parameters(), torch.optim.SGD, rho=0.1, beta=0.5, gamma=1.0, seed=3, lr=LR)
    opt.step(per_sample_closure(model, x, y))
    chosen = opt.last_perturbed
    assert 0 < sum(chosen) < len(chosen)          # the seed leaves some tensors out
    s = tensor_mask(model, chosen)
    g_s = f.grad(theta0) * s
    eps = 0.1 * g_s / (0.5 * (g_s.norm() + 1e-12))
    expected = sgd_step(theta0, f.grad(theta0 + eps), LR)
    torch.testing.assert_close(f.flat(), expected, rtol=0, atol=1e-5)


def test_esam_data_selection_matches_float64():
    model, x, y = make_problem(32)
    f = Float64Model(model, x, y, F.cross_entropy)
    per_sample = Float64Model(model, x, y, lambda out, t: F.cross_entropy(out, t, reduction="none"))
    theta0 = f.flat()
    closure = per_sample_closure(model, x, y)
    seen = []

    def recording(indices=None):
        seen.append(indices)
        return closure(indices)
    opt = zk.ESAM(model.parameters(), torch.optim.SGD, rho=0.5, beta=1.0, gamma=0.25, lr=LR)
    opt.step(recording)

    eps = sam_eps(f, theta0, 0.5)
    with torch.no_grad():
        rise = per_sample.loss(theta0 + eps) - per_sample.loss(theta0)
    top = torch.topk(rise, 4).indices                     # floor(0.25 * 16) samples
    assert seen[:2] == [None, None] and sorted(seen[2].tolist()) == sorted(top.tolist())
    subset = Float64Model(model, x[top], y[top], F.cross_entropy)
    expected = sgd_step(theta0, subset.grad(theta0 + eps), LR)
    torch.testing.assert_close(f.flat(), expected, rtol=0, atol=1e-5)


def test_esam_draws_are_seeded_and_about_beta():
    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2, bias=False) for _ in range(50)])
    x = torch.randn(4, 2)

    def draws(seed):
        opt = zk.ESAM(model.parameters(), torch.optim.SGD, beta=0.3, gamma=1.0, seed=seed, lr=0.0)
        out = []
        for _ in range(4):
            opt.step(lambda: model(x).pow(2).mean())
            out.append(opt.last_perturbed)
        return out
    a, b, c = draws(1), draws(1), draws(2)
    assert a == b and a != c and a[0] != a[1]
    frac = sum(map(sum, a)) / (4 * 50)
    assert 0.2 < frac < 0.4


@pytest.mark.parametrize("kw,error,words", [
    (dict(beta=0.0), ValueError, "beta"), (dict(beta=1.5), ValueError, "beta"),
    (dict(gamma=0.0), ValueError, "gamma"), (dict(gamma="1"), ValueError, "gamma"),
    (dict(seed=-1), ValueError, "seed"), (dict(rho=-1.0), ValueError, "rho"),
])
def test_esam_bad_arguments(kw, error, words):
    model, _, _ = make_problem(0)
    with pytest.raises(error, match=words):
        zk.ESAM(model.parameters(), torch.optim.SGD, lr=0.1, **kw)


def test_esam_data_selection_needs_per_sample_losses_and_indices():
    model, x, y = make_problem(0)
    opt = zk.ESAM(model.parameters(), torch.optim.SGD, gamma=0.5, lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TypeError, match="indices"):
        opt.step(lambda: F.cross_entropy(model(x), y, reduction="none"))
    with pytest.raises(ValueError, match="per-sample losses"):
        opt.step(lambda indices=None: F.cross_entropy(model(x), y))
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)


def test_esam_data_selection_faults_batchnorm_and_resume(tmp_path):
    """The behaviour tests of test_behaviour.py for the three-pass SDS step,
    whose closure returns per-sample losses and takes indices."""
    from test_behaviour import assert_same, bn_first_problem, snapshot

    def make(model):
        return zk.ESAM(model.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9, beta=0.5,
                       gamma=0.5, seed=4)

    model, x, y = bn_first_problem()
    opt = make(model)
    closure = per_sample_closure(model, x, y)
    opt.step(closure)
    assert int(model[0].num_batches_tracked) == 1 and int(model[3].num_batches_tracked) == 1
    for fail_at in (1, 2, 3):
        for bad in ("raise", float("nan")):
            before = snapshot(model, opt)
            calls = [0]

            def faulty(indices=None):
                calls[0] += 1
                if calls[0] == fail_at and bad == "raise":
                    raise RuntimeError("data loader died")
                loss = closure(indices)
                return loss * bad if calls[0] == fail_at else loss
            if bad == "raise":
                with pytest.raises(RuntimeError, match="data loader died"):
                    opt.step(faulty)
            else:
                with pytest.warns(RuntimeWarning, match="non-finite loss"):
                    opt.step(faulty)
            assert_same(before, model, opt, atol=0)
    tracked = int(model[0].num_batches_tracked)
    opt.step(closure)
    assert int(model[0].num_batches_tracked) == tracked + 1

    def run(steps, model, opt):
        for _ in range(steps):
            opt.step(per_sample_closure(model, x, y))
    model, _, _ = bn_first_problem()
    run(4, model, make(model))
    straight = [p.detach().clone() for p in model.parameters()]
    model, _, _ = bn_first_problem()
    opt = make(model)
    run(2, model, opt)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    model, _, _ = bn_first_problem()
    opt = make(model)
    ckpt = torch.load(tmp_path / "ckpt.pt")
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    run(2, model, opt)
    for a, b in zip(straight, model.parameters()):
        assert torch.equal(a, b.detach())


# ---------------------------------------------------------------- LookSAM

@pytest.mark.parametrize("masked", [False, True])
def test_looksam_steps_match_float64(masked):
    model, x, y = make_problem(40)
    masks = random_masks(model, 0.6, 40) if masked else None
    mask = flat_mask(model, masks) if masked else torch.ones(1, dtype=torch.float64)
    f = Float64Model(model, x, y, F.cross_entropy)
    rho, alpha = 0.2, 0.7
    opt = zk.LookSAM(model.parameters(), torch.optim.SGD, rho=rho, k=2, alpha=alpha, masks=masks,
                     lr=LR)
    theta = f.flat() * mask
    g_v = None
    for step in range(5):
        opt.step(lambda: F.cross_entropy(model(x), y))
        g = f.grad(theta) * mask
        if step % 2 == 0:
            g_s = f.grad(theta + rho * g / g.norm()) * mask
            g_v = g_s - (g_s @ g) / (g @ g) * g
            d = g_s
        else:
            d = g + alpha * g.norm() / g_v.norm() * g_v
        theta = theta - LR * d
        torch.testing.assert_close(f.flat(), theta, rtol=0, atol=1e-5)


def test_looksam_in_between_steps_cost_one_forward_one_backward():
    from zosam_kernels.bench.methods import PassCounter
    model, x, y = make_problem(41)
    counter = PassCounter(model, len(x))
    opt = zk.LookSAM(model.parameters(), torch.optim.SGD, k=3, lr=LR)
    counts = []
    for _ in range(7):
        counter.forward = counter.backward = 0
        before = [p.detach().clone() for p in model.parameters()]
        opt.step(lambda: F.cross_entropy(model(x), y))
        counts.append((counter.forward, counter.backward))
        assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert counts == [(2, 2), (1, 1), (1, 1), (2, 2), (1, 1), (1, 1), (2, 2)]


# ---------------------------------------------------------------- GSAM

@pytest.mark.parametrize("scheduled", [False, True])
def test_gsam_step_matches_float64(scheduled):
    model, x, y = make_problem(50)
    f = Float64Model(model, x, y, F.cross_entropy)
    theta0 = f.flat()
    alpha = 0.3
    kw = dict(rho_min=0.02, lr_max=0.2, lr_min=0.0) if scheduled else {}
    opt = zk.GSAM(model.parameters(), torch.optim.SGD, rho=0.2, alpha=alpha, lr=LR, **kw)
    opt.step(lambda: F.cross_entropy(model(x), y))
    rho_t = 0.02 + (0.2 - 0.02) * (LR - 0.0) / (0.2 - 0.0) if scheduled else 0.2
    g = f.grad(theta0)
    g_p = f.grad(theta0 + rho_t * g / g.norm())
    g_perp = g - (g @ g_p) / (g_p @ g_p) * g_p
    expected = sgd_step(theta0, g_p - alpha * g_perp, LR)
    torch.testing.assert_close(f.flat(), expected, rtol=0, atol=1e-5)


def test_gsam_rho_follows_an_lr_scheduler():
    model, x, y = make_problem(51)
    opt = zk.GSAM(model.parameters(), torch.optim.SGD, rho=0.1, rho_min=0.01, lr=0.4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / 4)
    seen = []
    for _ in range(4):
        seen.append(opt.radius(opt.param_groups[0]))
        opt.step(lambda: F.cross_entropy(model(x), y))
        sched.step()
    assert seen == pytest.approx([0.1, 0.0775, 0.055, 0.0325])


@pytest.mark.parametrize("make,words", [
    (lambda p: zk.LookSAM(p, k=0, lr=0.1), "k"), (lambda p: zk.LookSAM(p, alpha=-1.0, lr=0.1), "alpha"),
    (lambda p: zk.GSAM(p, alpha=-0.1, lr=0.1), "alpha"),
    (lambda p: zk.GSAM(p, rho_min=-0.1, lr=0.1), "rho_min"),
    (lambda p: zk.GSAM(p, rho_min=0.0, lr_min=0.1, lr=0.1), "lr_max"),
])
def test_looksam_gsam_bad_arguments(make, words):
    model, _, _ = make_problem(0)
    with pytest.raises(ValueError, match=words):
        make(list(model.parameters()))


# ---------------------------------------------------------------- SSAM

def top_k(scores, eligible, k):
    out = torch.zeros_like(eligible)
    out[torch.topk(torch.where(eligible, scores, torch.tensor(-float("inf"), dtype=scores.dtype)),
                   k).indices] = True
    return out


def state_mask(opt, model):
    views = dict(zip(map(id, opt.params), opt.perturbation_mask.views()))
    return torch.cat([views[id(p)].reshape(-1) for p in model.parameters()]).cpu()


@pytest.mark.parametrize("masked", [False, True])
def test_ssam_fisher_trajectory_matches_float64(masked):
    model, x, y = make_problem(60)
    masks = random_masks(model, 0.6, 60) if masked else None
    numel = sum(p.numel() for p in model.parameters())
    active = flat_mask(model, masks).bool() if masked else torch.ones(numel, dtype=torch.bool)
    f = Float64Model(model, x, y, F.cross_entropy)
    rho, s = 0.3, 0.7
    opt = zk.SSAM(model.parameters(), torch.optim.SGD, rho=rho, sparsity=s, update_interval=2,
                  masks=masks, lr=LR)
    k = round((1 - s) * int(active.sum()))
    theta, fisher, mask = f.flat() * active, None, None
    for step in range(5):
        opt.step(lambda: F.cross_entropy(model(x), y))
        g = f.grad(theta) * active
        fisher = g * g if fisher is None else fisher + g * g
        if step % 2 == 0:                       # remade from the Fisher summed since the last remake
            mask, fisher = top_k(fisher, active, k), torch.zeros_like(fisher)
        assert torch.equal(state_mask(opt, model), mask) and int(mask.sum()) == k
        eps = rho * g / g.norm() * mask
        theta = theta - LR * f.grad(theta + eps) * active
        torch.testing.assert_close(f.flat(), theta, rtol=0, atol=1e-5)


def test_ssam_dynamic_mask_drops_smallest_gradients_and_grows_randomly():
    model, x, y = make_problem(61)
    masks = random_masks(model, 0.7, 61)
    active = flat_mask(model, masks).bool()
    f = Float64Model(model, x, y, F.cross_entropy)
    s, total = 0.6, 8
    opt = zk.SSAM(model.parameters(), torch.optim.SGD, rho=0.1, sparsity=s, mask="dynamic",
                  update_interval=3, total_steps=total, drop_rate=0.8, masks=masks, lr=LR)
    k = round((1 - s) * int(active.sum()))
    closure = lambda: F.cross_entropy(model(x), y)  # noqa: E731
    opt.step(closure)
    first = state_mask(opt, model)
    assert int(first.sum()) == k and not (first & ~active).any()
    for _ in range(2):                         # not due: the mask stays
        opt.step(closure)
        assert torch.equal(state_mask(opt, model), first)
    g = f.grad(f.flat())                       # the first-pass gradient of step 3
    opt.step(closure)
    new = state_mask(opt, model)
    n = round(0.8 / 2 * (1 + torch.cos(torch.tensor(torch.pi * 3 / total)).item()) * k)
    assert 0 < n < k
    dropped = top_k(-g.abs(), first, n)
    kept = first & ~dropped
    assert torch.equal(new & kept, kept)                   # everything not dropped stays
    assert int((new & ~kept).sum()) == n                   # n grown among the rest
    assert not (new & ~active).any() and int(new.sum()) == k
    assert int((new & ~first).sum()) > 0                   # growth is not just the dropped back


def test_mask_rule_on_crafted_scores():
    from zosam_kernels.flat import Layout
    from zosam_kernels.optim.perturbation_mask import PerturbationMask
    layout = Layout([torch.nn.Parameter(torch.zeros(10))])
    active = torch.tensor([True] * 8 + [False] * 2)
    fisher = PerturbationMask(0.5, "fisher", 1, None, None, seed=0)
    fisher.relayout_(layout)
    fisher.fisher = [torch.tensor([5., 1., 7., 3., 0., 2., 6., 4., 99., 99.])]
    scored = fisher.remade(0, [torch.zeros(10)], [active])
    assert scored[0].nonzero().flatten().tolist() == [0, 2, 6, 7]
    rule = PerturbationMask(0.5, "dynamic", 1, 0.5, 10, seed=0)
    rule.relayout_(layout)
    assert rule.drop_rate_at(0) == pytest.approx(0.5) and rule.drop_rate_at(10) == pytest.approx(0.0)
    assert rule.drop_rate_at(5) == pytest.approx(0.25)
    mask = torch.tensor([True, True, True, True] + [False] * 6)
    grad = torch.tensor([-3., 0.1, -0.2, 4., 9., 9., 9., 9., 9., 9.])
    (new,) = rule.drop_and_grow(0, [mask], [grad], [active])   # drops round(0.5 * 4) = 2: items 1, 2
    assert new[[0, 3]].all() and int(new.sum()) == 4 and not new[8:].any()
    assert int(new[[1, 2]].sum()) + int(new[4:8].sum()) == 2


@pytest.mark.parametrize("kw,words", [
    (dict(sparsity=1.0), "sparsity"), (dict(sparsity=-0.1), "sparsity"), (dict(mask="random"), "mask"),
    (dict(update_interval=0), "update_interval"), (dict(drop_rate=2.0), "drop_rate"),
    (dict(mask="dynamic"), "total_steps"), (dict(seed=-3), "seed"),
])
def test_ssam_bad_arguments(kw, words):
    model, _, _ = make_problem(0)
    with pytest.raises(ValueError, match=words):
        zk.SSAM(model.parameters(), torch.optim.SGD, lr=0.1, **kw)


# ---------------------------------------------------------------- ZO twins

@pytest.mark.parametrize("backend", ["fused", "unfused"])
@pytest.mark.parametrize("masked", [False, True])
def test_zolooksam_reuses_eps_and_matches_float64(backend, masked, device):
    from f64 import zosam_eps
    model, x, y = make_problem(70, device=device)
    masks = random_masks(model, 0.6, 70) if masked else None
    mask = flat_mask(model, masks) if masked else None
    f = Float64Model(model, x, y, F.cross_entropy)
    rho, delta = 0.1, 1e-2
    opt = zk.ZOLookSAM(model.parameters(), torch.optim.SGD, rho=rho, k=2, delta=delta, n_dirs=2,
                       seed=5, masks=masks, backend=backend, lr=LR)
    theta = f.flat() * (mask if masked else 1)
    for step in range(4):
        if step % 2 == 0:
            before = theta
        opt.step(lambda: F.cross_entropy(model(x), y))
        if step % 2 == 0:
            eps, _ = zosam_eps(f, before, opt.last_seeds, rho, delta, mask)
        g = f.grad(theta + eps) * (mask if masked else 1)
        theta = theta - LR * g
        torch.testing.assert_close(f.flat(), theta, rtol=0, atol=2e-5)


def test_zolooksam_in_between_steps_cost_one_forward_one_backward():
    from zosam_kernels.bench.methods import PassCounter
    model, x, y = make_problem(71)
    counter = PassCounter(model, len(x))
    opt = zk.ZOLookSAM(model.parameters(), torch.optim.SGD, k=3, n_dirs=2, lr=LR)
    counts = []
    for _ in range(4):
        counter.forward = counter.backward = 0
        opt.step(lambda: F.cross_entropy(model(x), y))
        counts.append((counter.forward, counter.backward))
    assert counts == [(5, 1), (1, 1), (1, 1), (5, 1)]


@pytest.mark.parametrize("backend", ["fused", "unfused"])
@pytest.mark.parametrize("masked", [False, True])
def test_zossam_directions_on_the_mask_match_float64(backend, masked, device):
    from f64 import zosam_eps
    model, x, y = make_problem(72, device=device)
    masks = random_masks(model, 0.6, 72) if masked else None
    active = flat_mask(model, masks) if masked else torch.ones(sum(p.numel() for p in model.parameters()),
                                                                 dtype=torch.float64)
    f = Float64Model(model, x, y, F.cross_entropy)
    rho, delta, s = 0.1, 1e-2, 0.7
    opt = zk.ZOSSAM(model.parameters(), torch.optim.SGD, rho=rho, sparsity=s, update_interval=2,
                    delta=delta, n_dirs=2, seed=3, masks=masks, backend=backend, lr=LR)
    k = round((1 - s) * int(active.sum()))
    theta, fisher, pmask = f.flat() * active, None, None
    for step in range(4):
        opt.step(lambda: F.cross_entropy(model(x), y))
        if step == 0:                            # random at first: take it from the state
            pmask = state_mask(opt, model).double()
            assert int(pmask.sum()) == k and not (pmask.bool() & ~active.bool()).any()
        eps, _ = zosam_eps(f, theta, opt.last_seeds, rho, delta, active * pmask)
        g = f.grad(theta + eps) * active
        theta = theta - LR * g
        torch.testing.assert_close(f.flat(), theta, rtol=0, atol=2e-5)
        fisher = g * g if fisher is None else fisher + g * g
        if step % 2 == 1:                        # the mask of step 2 from the Fisher of steps 0, 1
            pmask, fisher = top_k(fisher, active.bool(), k).double(), torch.zeros_like(fisher)
        assert torch.equal(state_mask(opt, model).double(), pmask)


@pytest.mark.parametrize("make,words", [
    (lambda p: zk.ZOLookSAM(p, k=0, lr=0.1), "k"), (lambda p: zk.ZOSSAM(p, sparsity=1.0, lr=0.1), "sparsity"),
    (lambda p: zk.ZOSSAM(p, mask="dynamic", lr=0.1), "total_steps"),
    (lambda p: zk.ZOSSAM(p, delta=0.0, lr=0.1), "delta"),
])
def test_zo_twins_bad_arguments(make, words):
    model, _, _ = make_problem(0)
    with pytest.raises(ValueError, match=words):
        make(list(model.parameters()))
