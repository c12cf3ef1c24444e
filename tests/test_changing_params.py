"""Parameters that change under the optimizer, and the loop's corner cases a
new user meets: requires_grad changed after the optimizer is built, weights
tied by `.data`, a skipped step's BatchNorm statistics, channels_last
weights, per-group radii, GradScaler.step and a parameter listed twice.
Each was a silent wrong result (or torch's own assertion) before the engine."""
import pytest
import torch
import torch.nn.functional as F

import zosam_kernels as zk
from f64 import Float64Model, sam_eps, sgd_step, zosam_eps
from family_cases import CASES, build, plain_closure_cases
from zosam_kernels.ops import reference

LR, RHO, DELTA = 0.1, 0.2, 1e-2


def two_layers(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    return model, torch.randn(16, 5), torch.randint(0, 3, (16,))


def make(name, params):
    if name == "sam":
        return zk.SAM(params, torch.optim.SGD, rho=RHO, lr=LR)
    return zk.ZOSAM(params, torch.optim.SGD, rho=RHO, delta=DELTA, n_dirs=2, seed=4, lr=LR)


def expected_step(name, f, theta, opt):
    """theta after one step of `name` from theta, in float64 (plain SGD)."""
    if name == "sam":
        eps = sam_eps(f, theta, RHO)
    else:
        eps, _ = zosam_eps(f, theta, opt.last_seeds, RHO, DELTA)
    return sgd_step(theta, f.grad(theta + eps), LR)


@pytest.mark.parametrize("name", ["sam", "zosam"])
def test_a_parameter_unfrozen_later_is_perturbed_and_stepped(name):
    model, x, y = two_layers()
    model[0].requires_grad_(False)
    opt = make(name, model.parameters())
    closure = lambda: F.cross_entropy(model(x), y)  # noqa: E731
    frozen = [p.detach().clone() for p in model[0].parameters()]
    for _ in range(2):
        f = Float64Model(model, x, y, F.cross_entropy)     # the trainable layer only
        theta = f.flat()
        opt.step(closure)
        torch.testing.assert_close(f.flat(), expected_step(name, f, theta, opt), rtol=0, atol=1e-5)
    for a, b in zip(frozen, model[0].parameters()):
        assert torch.equal(a, b)
    model[0].requires_grad_(True)                          # gradual unfreezing
    for _ in range(3):
        f = Float64Model(model, x, y, F.cross_entropy)     # both layers, in the stream's order
        theta = f.flat()
        opt.step(closure)
        torch.testing.assert_close(f.flat(), expected_step(name, f, theta, opt), rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", plain_closure_cases())
def test_a_parameter_frozen_later_is_left_bit_for_bit_alone(case):
    model, x, y = two_layers(1)
    opt = build(case, model.parameters())
    closure = lambda: F.cross_entropy(model(x), y)  # noqa: E731
    opt.step(closure)
    model[0].requires_grad_(False)
    frozen = [p.detach().clone() for p in model[0].parameters()]
    trained = [p.detach().clone() for p in model[2].parameters()]
    for _ in range(4):
        opt.step(closure)
    for a, b in zip(frozen, model[0].parameters()):
        assert torch.equal(a, b)
        assert b.grad is None
    assert all(not torch.equal(a, b) for a, b in zip(trained, model[2].parameters()))


def tied_by_data(properly=False):
    """An embedding-like first layer whose weight the head shares."""
    torch.manual_seed(2)
    emb, head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    if properly:
        head.weight = emb.weight
    else:
        head.weight.data = emb.weight.data                 # two Parameters, one storage
    return torch.nn.Sequential(emb, torch.nn.Tanh(), head), emb, head


@pytest.mark.parametrize("case", plain_closure_cases())
def test_weights_tied_by_data_stay_tied(case):
    model, emb, head = tied_by_data()
    x, y = torch.randn(8, 4), torch.randn(8, 4)
    opt = build(case, model.parameters())
    for _ in range(5):
        opt.step(lambda: F.mse_loss(model(x), y))
    assert head.weight.data_ptr() == emb.weight.data_ptr()
    assert torch.equal(head.weight, emb.weight)


@pytest.mark.parametrize("case", ["sam", "zosam", "gsam", "looksam"])
def test_weights_tied_by_data_train_as_one_weight(case):
    """`.data` tying is `a.weight = b.weight` tying: one weight, the sum of the gradients, one step."""
    x, y = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), torch.randn(8, 4)
    runs = []
    for properly in (False, True):
        model, emb, head = tied_by_data(properly)
        opt = build(case, model.parameters())
        for _ in range(4):
            opt.step(lambda: F.mse_loss(model(x), y))
        runs.append([p.detach().clone() for p in (emb.weight, emb.bias, head.bias)])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_memory_shared_but_not_covered_is_refused():
    base = torch.nn.Parameter(torch.randn(4, 4))
    part = torch.nn.Parameter(base.data[1:3])
    with pytest.raises(ValueError, match="overlaps part of another's memory"):
        zk.ZOSAM([base, part], torch.optim.SGD, lr=0.1)


@pytest.mark.parametrize("case", plain_closure_cases())
def test_a_skipped_step_leaves_batchnorm_statistics_as_they_were(case):
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(),
                                torch.nn.Linear(6, 3))
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    opt = build(case, model.parameters())
    opt.step(lambda: F.cross_entropy(model(x), y))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = x.clone()
    bad[3, 2] = float("inf")                               # one inf pixel in the batch
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        opt.step(lambda: F.cross_entropy(model(bad), y))
    params = {n for n, _ in model.named_parameters()}
    for k, v in model.state_dict().items():   # the walk back to theta is exact to float32 rounding
        if k in params:
            torch.testing.assert_close(v, before[k], rtol=0, atol=1e-6)
        else:
            assert torch.equal(v, before[k]), k
    model.eval()
    assert torch.isfinite(model(x)).all()


def conv_model():
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 3 * 3, 2))
    return model.to(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", ["fused", "unfused"])
def test_channels_last_weights_stay_channels_last_and_step_exactly(backend):
    model = conv_model()
    x = torch.randn(6, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (6,))
    conv = model[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, rho=RHO, delta=DELTA, n_dirs=2, seed=1, lr=LR,
                   backend=backend)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    f = Float64Model(model, x, y, F.cross_entropy)
    theta = f.flat()
    opt.step(lambda: F.cross_entropy(model(x), y))
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    # the stream runs over each weight's memory: a channels_last weight reads it in NHWC order
    params = [p for p in model.parameters()]
    us = []
    for seed in opt.last_seeds:
        stream, start, parts = torch.from_numpy(reference.stream(seed, theta.numel())), 0, []
        for p in params:
            segment = stream[start:start + p.numel()]
            parts.append(segment.as_strided(p.shape, p.stride()).reshape(-1))
            start += p.numel()
        us.append(torch.cat(parts))
    c = torch.stack([(f.loss(theta + DELTA * u) - f.loss(theta - DELTA * u)) / (2 * DELTA) for u in us])
    g_hat = sum(ci * u for ci, u in zip(c, us)) / len(us)
    eps = RHO * g_hat / g_hat.norm()
    torch.testing.assert_close(f.flat(), sgd_step(theta, f.grad(theta + eps), LR), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["rho", "delta"])
def test_the_zeroth_order_ascent_refuses_per_group_radii_at_construction(name):
    model, _, _ = two_layers()
    groups = [{"params": model[0].parameters(), name: 0.3}, {"params": model[2].parameters()}]
    with pytest.raises(ValueError, match=f"{name} must be the same in every param group"):
        zk.ZOSAM(groups, torch.optim.SGD, lr=0.1)
    opt = zk.ZOSAM(model[0].parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match=f"{name} must be the same in every param group"):
        opt.add_param_group({"params": model[2].parameters(), name: 0.3})
    assert len(opt.param_groups) == 1


def test_sam_takes_a_radius_per_group():
    model, x, y = two_layers()
    f = Float64Model(model, x, y, F.cross_entropy)
    theta = f.flat()
    opt = zk.SAM([{"params": model[0].parameters(), "rho": 0.5}, {"params": model[2].parameters()}],
                 torch.optim.SGD, rho=RHO, lr=LR)
    opt.step(lambda: F.cross_entropy(model(x), y))
    g = f.grad(theta)
    n0 = sum(p.numel() for p in model[0].parameters())
    rho = torch.cat([torch.full((n0,), 0.5), torch.full((theta.numel() - n0,), RHO)]).double()
    eps = rho * g / g.norm()
    torch.testing.assert_close(f.flat(), sgd_step(theta, f.grad(theta + eps), LR), rtol=0, atol=1e-5)


@pytest.mark.parametrize("given", [True, False])
def test_gradscaler_step_gets_the_packages_message(given):
    model, x, y = two_layers()
    scaler = torch.amp.GradScaler("cpu")
    if given:      # fresh: the optimizer has made its scale
        opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1, grad_scaler=scaler)
    else:          # a scaler the loop has used before
        opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1)
        scaler.scale(torch.ones(()))
    with pytest.raises(RuntimeError, match=r"grad_scaler=scaler\)\) and call optimizer.step\(closure\)"):
        scaler.step(opt, lambda: F.cross_entropy(model(x), y))


@pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate parameters")
@pytest.mark.parametrize("case", list(CASES))
def test_a_parameter_listed_twice_is_refused_by_every_member(case):
    model, _, _ = two_layers()
    params = list(model.parameters())
    with pytest.raises(ValueError, match="listed twice"):
        build(case, params + params[:1])
    with pytest.raises(ValueError, match="more than one parameter group"):   # torch's own check
        build(case, [{"params": params[:2]}, {"params": params[1:]}])
