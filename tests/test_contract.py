"""The contract every composition of the family keeps (family_cases.CASES, every
member of the registry FAMILY): its first step equals its equations in
float64; a resumed run continues bit for bit; a closure that raises at any
pass, or a non-finite loss, leaves weights, buffers and optimizer state as
they were; two DDP ranks stay bit-identical."""
import copy

import pytest
import torch
import torch.nn.functional as F

from f64 import Float64Model, adamw_step, directions, sam_eps, sgd_step, zosam_eps
from family_cases import CASES, build
from test_behaviour import assert_equal_trees
from zosam_kernels.seeds import derived_seed

pytestmark = pytest.mark.filterwarnings("ignore:.*non-finite loss:RuntimeWarning")


def problem(seed=0, batchnorm=False):
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)]
    if batchnorm:
        layers.insert(1, torch.nn.BatchNorm1d(8))
    return torch.nn.Sequential(*layers), torch.randn(16, 5), torch.randint(0, 3, (16,))


def closure_of(model, x, y):
    def closure(indices=None):
        xi, yi = (x, y) if indices is None else (x[indices], y[indices])
        return F.cross_entropy(model(xi), yi, reduction="none")
    return closure


def top_k_mask(scores, k):
    out = torch.zeros_like(scores, dtype=torch.float64)
    out[torch.topk(scores, k).indices] = 1.0
    return out


def perturbation_mask_of(opt, model):
    views = dict(zip(map(id, opt.params), opt.perturbation_mask.views()))
    return torch.cat([views[id(p)].reshape(-1) for p in model.parameters()]).double()


def tensor_mask(model, chosen):
    return torch.cat([torch.full((p.numel(),), float(c), dtype=torch.float64)
                      for p, c in zip(model.parameters(), chosen)])


def orth(a, b):
    return a - (a @ b) / (b @ b) * b


def filter_noise_gradient(opt, model, f, theta, rho):
    """RWP's and LPF-SGD's gradient (noise_ascents.py): draw j's noise rho ||W[f]|| u_j per
    output filter (rho (||p|| + 1e-16) for one dimension), each gradient on its strided part
    of the batch ("split") or on all of it, mixed (1 - alpha) g(theta) + alpha/M sum_j g(theta + n_j)."""
    scale, i = [], 0
    for p in model.parameters():
        w = theta[i:i + p.numel()].view(p.shape)
        rows = w.reshape(p.shape[0], -1) if p.dim() > 1 else None
        s = rows.norm(dim=1, keepdim=True).expand_as(rows) if rows is not None else (w.norm() + 1e-16).expand(p.numel())
        scale.append(s.reshape(-1))
        i += p.numel()
    scale = torch.cat(scale)
    count = opt.draws + (opt.alpha < 1)
    parts = [slice(k, None, count) if opt.batch == "split" else slice(None) for k in range(count)]
    at = [Float64Model(model, f.x[k].float(), f.y[k], F.cross_entropy) for k in parts]
    noise = [rho * scale * u for u in directions([derived_seed(opt.seed, 0, j) for j in range(opt.draws)],
                                                 theta.numel())]
    drawn = at[1:] if opt.alpha < 1 else at
    update = sum(opt.alpha / opt.draws * g.grad(theta + n) for g, n in zip(drawn, noise))
    return update + (1 - opt.alpha) * at[0].grad(theta) if opt.alpha < 1 else update


def partial_update(case, opt, model, f, theta, rho):
    """The partial ascents (selection.py): eps on the last layer only. SAM there: rho g_S/||g_S||;
    SAM-ON's ASAM: T = |theta| + eta on weights, 1 on biases, eps = rho T (T g_S)/||T g_S||;
    the zeroth-order ascent with its directions kept to the last layer."""
    numels = [p.numel() for p in model.parameters()]
    last = torch.cat([torch.full((n,), float(i >= len(numels) - 2), dtype=torch.float64)
                      for i, n in enumerate(numels)])
    if case == "zosam-partial":
        eps, _ = zosam_eps(f, theta, opt.last_seeds, rho, opt.param_groups[0]["delta"], last)
        return f.grad(theta + eps)
    g = f.grad(theta) * last
    if case == "sam-on":
        bias = torch.cat([torch.full((n,), float(i == len(numels) - 1), dtype=torch.float64)
                          for i, n in enumerate(numels)])
        t = torch.where(bias > 0, torch.ones_like(theta), theta.abs() + opt.ascent.eta) * last
        return f.grad(theta + rho * t * (t * g) / (t * g).norm())
    return f.grad(theta + rho * g / g.norm())


def expected_first_step(case, opt, model, f, per_sample, theta):
    """theta after the first step of `case`, from its equations in float64."""
    member, _, (base, base_kwargs) = CASES[case]
    o = opt.param_groups[0]                         # rho, delta, alpha, adaptive: the group's
    rho, adaptive = o["rho"], o.get("adaptive", False)
    if member in ("sam", "looksam"):
        update = f.grad(theta + sam_eps(f, theta, rho))
    elif member == "esam":
        s = tensor_mask(model, opt.last_perturbed)
        g_s = f.grad(theta) * s
        update = f.grad(theta + rho * g_s / (opt.beta * (g_s.norm() + 1e-12)))
    elif member == "gsam":                          # at step 0 rho_t = rho: lr is lr_max
        g = f.grad(theta)
        g_p = f.grad(theta + rho * g / g.norm())
        update = g_p - o["alpha"] * orth(g, g_p)
    elif member in ("ssam-f", "ssam-d"):
        g = f.grad(theta)
        k = round((1 - opt.perturbation_mask.sparsity) * theta.numel())
        mask = top_k_mask(g * g, k) if member == "ssam-f" else perturbation_mask_of(opt, model)
        assert int(mask.sum()) == k
        update = f.grad(theta + rho * g / g.norm() * mask)
    elif member == "msam":                          # no momentum before the first step: no eps
        update = f.grad(theta)
    elif member == "random-direction":
        (u,) = directions(opt.last_seeds, theta.numel())
        update = f.grad(theta + rho * u / u.norm())
    elif member in ("sam-on", "sam-partial") or case == "zosam-partial":
        update = partial_update(case, opt, model, f, theta, rho)
    elif member in ("rwp", "lpf-sgd"):
        update = filter_noise_gradient(opt, model, f, theta, rho)
    elif member == "oracle":
        g = f.grad(theta)
        (u,) = directions([derived_seed(opt.seed, 0, 0)], theta.numel())
        g_unit = g / g.norm()
        u_perp = u - (u @ g_unit) * g_unit
        c = opt.cosine
        update = f.grad(theta + rho * (c * g_unit + (1 - c * c) ** 0.5 * u_perp / u_perp.norm()))
    elif member == "zosam-guided" and opt.n_dirs == 0:   # no prior and no direction: no eps
        update = f.grad(theta)
    elif member == "zosam-coin":
        _, c = zosam_eps(f, theta, opt.last_seeds, rho, o["delta"])
        signed = torch.sign(opt.last_coefficients.double()) * c.abs()
        us = directions(opt.last_seeds, theta.numel())
        g_hat = sum(ci * u for ci, u in zip(signed, us)) / len(us)
        update = f.grad(theta + rho * g_hat / g_hat.norm())
    else:                                           # the zeroth-order ascent (the guided one: no prior yet)
        mask = perturbation_mask_of(opt, model) if member == "zossam" else None   # step 0's: random
        eps, c = zosam_eps(f, theta, opt.last_seeds, rho, o["delta"], mask, adaptive)
        update = f.grad(theta + eps)
        if member == "zogsam":
            g_hat = sum(ci * u for ci, u in zip(c, directions(opt.last_seeds, theta.numel()))) / len(c)
            update = update - o["alpha"] * orth(g_hat, update)
        elif member == "zoesam":
            us = directions(opt.last_seeds, theta.numel())
            with torch.no_grad():
                before = sum(per_sample.loss(theta + o["delta"] * u) + per_sample.loss(theta - o["delta"] * u)
                             for u in us) / (2 * len(us))
                after = per_sample.loss(theta + eps)
            top = torch.topk(after - before, max(1, int(opt.gamma * len(before)))).indices
            assert sorted(opt.last_indices.tolist()) == sorted(top.tolist())
            update = Float64Model(model, f.x[top].float(), f.y[top], F.cross_entropy).grad(theta + eps)
    if base is torch.optim.AdamW:
        return adamw_step(theta, update, base_kwargs["lr"])
    return sgd_step(theta, update, base_kwargs["lr"])


@pytest.mark.parametrize("case", list(CASES))
def test_first_step_matches_float64(case):
    model, x, y = problem(1)
    f = Float64Model(model, x, y, F.cross_entropy)
    per_sample = Float64Model(model, x, y, lambda out, t: F.cross_entropy(out, t, reduction="none"))
    theta = f.flat()
    opt = build(case, model.parameters())
    opt.step(closure_of(model, x, y))
    expected = expected_first_step(case, opt, model, f, per_sample, theta)
    torch.testing.assert_close(f.flat(), expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_resume_continues_bit_for_bit(case, tmp_path):
    def run(model, opt, x, y, steps):
        for _ in range(steps):
            opt.step(closure_of(model, x, y))

    model, x, y = problem(2, batchnorm=True)
    run(model, build(case, model.parameters()), x, y, 5)
    straight = copy.deepcopy(model.state_dict())
    model, x, y = problem(2, batchnorm=True)
    opt = build(case, model.parameters())
    run(model, opt, x, y, 2)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    model, _, _ = problem(9, batchnorm=True)           # other weights: the checkpoint's replace them
    opt = build(case, model.parameters())
    ckpt = torch.load(tmp_path / "ckpt.pt")
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    run(model, opt, x, y, 3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, straight[k]), k


def assert_as_before(model, opt, before):
    params, buffers, state = before
    for a, (n, b) in zip(params, model.named_parameters()):   # the walk back is exact to float32 rounding
        torch.testing.assert_close(b.detach(), a, rtol=0, atol=1e-6, msg=n)
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert_equal_trees(opt.state_dict(), state)
    assert all(p.grad is None for p in model.parameters())


def snapshot(model, opt):
    return ([p.detach().clone() for p in model.parameters()],
            {n: b.clone() for n, b in model.named_buffers()}, copy.deepcopy(opt.state_dict()))


def passes_of_step(make, index):
    """How many times step `index` calls its closure, on a twin run: make(params) builds the optimizer."""
    model, x, y = problem(3, batchnorm=True)
    opt = make(model.parameters())
    calls, closure = [0], closure_of(model, x, y)

    def counting(indices=None):
        calls[0] += 1
        return closure(indices)
    for _ in range(index + 1):
        calls[0] = 0
        opt.step(counting)
    return calls[0]


def fail_at_every_pass(model, opt, closure, passes):
    """The next step, `passes` times with its closure raising at one pass and `passes`
    times with a non-finite loss at one pass: each leaves everything as before."""
    for fail_at in range(1, passes + 1):
        for fault in ("raise", "nan"):
            before, calls = snapshot(model, opt), [0]

            def faulty(indices=None):
                calls[0] += 1
                if calls[0] == fail_at and fault == "raise":
                    raise RuntimeError("the data loader died")
                loss = closure(indices)
                return loss * float("nan") if calls[0] == fail_at else loss
            if fault == "raise":
                with pytest.raises(RuntimeError, match="the data loader died"):
                    opt.step(faulty)
            else:
                with pytest.warns(RuntimeWarning, match="non-finite loss"):
                    opt.step(faulty)
            assert_as_before(model, opt, before)


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("case", list(CASES))
def test_a_fault_at_any_pass_leaves_everything_as_before(case, index):
    """Step 0 (the first pass finds the BatchNorm layers) and step 1 (for the
    methods that reuse, an in-between step), failing at each of their passes."""
    model, x, y = problem(3, batchnorm=True)
    opt = build(case, model.parameters())
    closure = closure_of(model, x, y)
    for _ in range(index):
        opt.step(closure)
    fail_at_every_pass(model, opt, closure, passes_of_step(lambda params: build(case, params), index))
    assert opt.step_count == index
    opt.step(closure)
    assert int(model[1].num_batches_tracked) == index + 1


def weights_on_ranks(rank, world, makers, steps=3):
    """Each optimizer of `makers` (name -> (make(params), find_unused_parameters)) over DDP,
    on this rank's half of each batch; the weights after, by name."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    out = {}
    for name, (make, find_unused) in makers.items():
        model, _, _ = problem(4)
        net = DDP(model, find_unused_parameters=find_unused)
        opt = make(list(net.parameters()))
        for step in range(steps):
            g = torch.Generator().manual_seed(step)
            xs = torch.randn(16, 5, generator=g).chunk(world)[rank]
            ys = torch.randint(0, 3, (16,), generator=g).chunk(world)[rank]
            opt.step(closure_of(net, xs, ys))
        out[name] = [p.detach().clone() for p in model.parameters()]
    return out


def assert_ranks_identical(ranks, names):
    assert "error" not in ranks[0] and "error" not in ranks[1], ranks[0].get("error") or ranks[1].get("error")
    assert set(ranks[0]) == set(names)
    for name in names:
        for a, b in zip(ranks[0][name], ranks[1][name]):
            assert torch.equal(a, b), name


def ddp_run(rank, world):
    """Every case; ESAM's beta and the partial ascents leave tensors out of the backward at theta
    (DDP needs find_unused_parameters=True for them, as for any parameter a pass leaves out)."""
    makers = {case: (lambda params, case=case: build(case, params),
                     CASES[case][0] == "esam" or "perturb" in CASES[case][1]) for case in CASES}
    return weights_on_ranks(rank, world, makers)


def test_two_ddp_ranks_stay_bit_identical(tmp_path):
    from test_distributed import spawn
    assert_ranks_identical(spawn(ddp_run, tmp_path), list(CASES))
