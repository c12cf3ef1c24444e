"""The loop researchers write: dropout and random augmentation inside the closure
(common random numbers), fp16 with a GradScaler, gradient clipping and
micro-batches, each against an independent computation."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import zosam_kernels as zk
from f64 import directions
from test_behaviour import OPTIMIZERS
from test_family import per_sample_closure


# ------------------------------------------------------- common random numbers

def dropout_problem(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 24), torch.nn.Tanh(), torch.nn.Dropout(0.5),
                                torch.nn.Linear(24, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))

    def closure():
        noisy = x + 0.3 * torch.randn_like(x)   # random augmentation inside the closure
        return F.cross_entropy(model(noisy), y)
    return model, x, y, closure


def coefficients_with_noise_fixed_by_hand(model, x, y, rng_seed, seeds, delta):
    """c_i = (L(θ + δu_i) − L(θ − δu_i)) / 2δ in float64, where L uses the noise and
    the dropout mask that the closure draws first after torch.manual_seed(rng_seed),
    drawn here once and then held fixed."""
    lin1 = model[0]
    torch.manual_seed(rng_seed)
    noise = torch.randn_like(x)
    keep = F.dropout(torch.ones(x.shape[0], lin1.out_features), 0.5, training=True)   # same draw as nn.Dropout
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])

    def loss(t):
        w1, b1, w2, b2 = torch.split(t, [s.numel() for s in shapes])
        h = torch.tanh((x.double() + 0.3 * noise.double()) @ w1.view(shapes[0]).T + b1) * keep.double()
        return F.cross_entropy(h @ w2.view(shapes[2]).T + b2, y)

    us = directions(seeds, theta.numel())
    return torch.stack([(loss(theta + delta * u) - loss(theta - delta * u)) / (2 * delta) for u in us])


@pytest.mark.parametrize("make", [
    lambda p, **kw: zk.ZOSAM(p, torch.optim.SGD, lr=0.1, n_dirs=3, seed=11, **kw),
    lambda p, **kw: zk.ZOSAM(p, torch.optim.SGD, lr=0.1, n_dirs=3, seed=11, backend="unfused", **kw),
], ids=["fused", "unfused"])
def test_common_random_numbers_give_the_coefficients_of_the_noise_held_fixed(make):
    """With dropout p = 0.5 and random input noise in the closure, the step's
    coefficients are those of one fixed draw of the noise; without common random
    numbers the +δ and −δ passes draw differently and the coefficients are noise."""
    delta = 1e-3
    for crn in (True, False):
        model, x, y, closure = dropout_problem(5)
        reference = copy.deepcopy(model)
        opt = make(model.parameters(), delta=delta) if crn else \
            make(model.parameters(), delta=delta, common_random_numbers=False)
        torch.manual_seed(1234)
        opt.step(closure)
        expected = coefficients_with_noise_fixed_by_hand(reference, x, y, 1234, opt.last_seeds, delta)
        error = (opt.last_coefficients.double() - expected).abs().max()
        if crn:
            assert error < 2e-3 * (1 + expected.abs().max())
        else:
            assert error > 1.0   # the noise of two draws over 2δ: tens, against coefficients of about 1


def test_common_random_numbers_leave_the_generator_one_closure_call_ahead():
    """After a ZO-SAM step with common random numbers the generator has advanced
    by exactly one closure call, as after an SGD step (the gradient pass replays
    the step's state); the gradient pass draws the noise the zeroth-order passes drew."""
    model, x, y, closure = dropout_problem(6)
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1, n_dirs=2)
    torch.manual_seed(99)
    opt.step(closure)
    after_step = torch.rand(4)
    torch.manual_seed(99)
    with torch.no_grad():
        closure()
    assert torch.equal(after_step, torch.rand(4))


def test_esam_selection_sees_the_first_pass_noise():
    """ESAM ranks per-sample losses after − before: with common random numbers and
    ε = 0 (rho = 0) the two passes are the same function, so every difference is 0."""
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 3))
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))

    def closure(indices=None):
        idx = slice(None) if indices is None else indices
        return F.cross_entropy(model(x[idx] + torch.randn_like(x[idx])), y[idx], reduction="none")

    seen = {}
    for crn in (True, False):
        opt = zk.ESAM(model.parameters(), torch.optim.SGD, lr=0.0, rho=0.0, gamma=0.5,
                      common_random_numbers=crn)
        before, after = [], []
        original = opt.passes.extra

        def spy(closure_, reduce=True, name="extra_pass"):
            out = original(closure_, reduce, name)
            after.append(out)
            return out
        opt.passes.extra = spy
        first = opt.passes.gradient

        def spy_gradient(closure_, params, **kw):
            out = first(closure_, params, **kw)
            before.append(out)
            return out
        opt.passes.gradient = spy_gradient
        opt.step(closure)
        seen[crn] = (after[0] - before[0]).abs().max().item()
    assert seen[True] == 0.0
    assert seen[False] > 0.1


# ------------------------------------------------------------- GradScaler

def linear_problem(seed, n=48):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    x, y = torch.randn(n, 5), torch.randint(0, 3, (n,))
    return model, per_sample_closure(model, x, y)


def run(make, steps=3, seed=3, **kw):
    model, closure = linear_problem(seed)
    opt = make(list(model.parameters()), **kw)
    for _ in range(steps):
        opt.step(closure)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]), opt


@pytest.mark.parametrize("name", ["zosam", "sam", "esam", "gsam", "zossam", "looksam"])
def test_grad_scaler_takes_its_scale_back_off(name):
    """A power-of-two scale is exact in float32: with the scaler the weights are
    those of the run without it, bit for bit (a scaled loss left unscaled would
    move them 65536 times too far)."""
    plain, _ = run(OPTIMIZERS[name])
    scaled, opt = run(OPTIMIZERS[name], grad_scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 16))
    assert torch.equal(plain, scaled)
    assert opt.step_count == 3


def test_grad_scaler_overflow_skips_the_step_and_backs_off():
    model, closure = linear_problem(4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, grad_scaler=scaler)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(lambda indices=None: 1e4 * closure(indices))   # 2**127 times gradients of ~1e3: inf
    for a, p in zip(before, model.parameters()):   # back from θ + ε to float32 rounding
        torch.testing.assert_close(p, a, rtol=0, atol=1e-7)
    assert opt.step_count == 0 and not opt.state
    assert scaler.get_scale() == 2.0 ** 126
    assert all(p.grad is None for p in model.parameters())


def test_grad_scaler_step_with_closure_says_what_to_do():
    """The usual AMP loop's scaler.step(opt, closure), with a scaler that has
    scaled before (on its very first call torch's own check fires first)."""
    model, closure = linear_problem(5)
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(torch.ones(()))
    with pytest.raises(RuntimeError, match=r"grad_scaler=scaler"):
        scaler.step(opt, closure)


def test_grad_scaler_must_be_a_grad_scaler():
    model, _ = linear_problem(5)
    with pytest.raises(TypeError, match="grad_scaler"):
        zk.SAM(model.parameters(), torch.optim.SGD, lr=0.1, grad_scaler=2.0 ** 16)


def test_fp16_autocast_with_grad_scaler_trains_like_fp32():
    """fp16 autocast on the CPU with the scaler: the weights stay within fp16's
    rounding of the fp32 run after a few steps."""
    def make(params, **kw):
        return zk.ZOSAM(params, torch.optim.SGD, lr=0.1, n_dirs=2, **kw)
    reference, _ = run(make, steps=4)
    model, closure = linear_problem(3)
    opt = make(list(model.parameters()), grad_scaler=torch.amp.GradScaler("cpu"))

    def half_closure(indices=None):
        with torch.autocast("cpu", dtype=torch.float16):
            return closure(indices)
    for _ in range(4):
        opt.step(half_closure)
    got = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert opt.step_count == 4
    assert (got - reference).abs().max() < 2e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (fp16 autocast on a GPU)")
def test_fp16_autocast_with_grad_scaler_on_cuda():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).cuda()
    x, y = torch.randn(48, 5, device="cuda"), torch.randint(0, 3, (48,), device="cuda")
    reference = copy.deepcopy(model)
    for m, scaler in ((model, torch.amp.GradScaler("cuda")), (reference, None)):
        opt = zk.ZOSAM(m.parameters(), torch.optim.SGD, lr=0.1, n_dirs=2, grad_scaler=scaler)

        def closure():
            with torch.autocast("cuda", dtype=torch.float16, enabled=scaler is not None):
                return F.cross_entropy(m(x), y)
        for _ in range(4):
            opt.step(closure)
        assert opt.step_count == 4
    diff = max((a - b).abs().max().item() for a, b in zip(model.parameters(), reference.parameters()))
    assert diff < 2e-2


# ------------------------------------------------------------- clipping

@pytest.mark.parametrize("name", ["zosam", "sam", "gsam", "zossam", "esam"])
def test_max_grad_norm_clips_as_by_hand(name):
    """max_grad_norm against clipping by hand in a hook before the base step,
    on gradients whose norm is above the bound (checked)."""
    model, closure = linear_problem(8)
    by_hand = copy.deepcopy(model)
    opt = OPTIMIZERS[name](list(model.parameters()), max_grad_norm=0.05)
    ref = OPTIMIZERS[name](list(by_hand.parameters()))
    norms = []

    def clip(optimizer, args, kwargs):
        grads = [p.grad for p in by_hand.parameters() if p.grad is not None]
        total = torch.linalg.vector_norm(torch.stack([g.double().norm() for g in grads]))
        norms.append(float(total))
        factor = min(1.0, 0.05 / (float(total) + 1e-6))
        for g in grads:
            g.mul_(factor)
    ref.base_optimizer.register_step_pre_hook(clip)
    closure_ref = per_sample_closure(by_hand, *batch_of(closure))
    for _ in range(3):
        opt.step(closure)
        ref.step(closure_ref)
    assert min(norms) > 0.05
    for a, b in zip(model.parameters(), by_hand.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def batch_of(closure):
    """(x, y) that a per_sample_closure evaluates."""
    cells = dict(zip(closure.__code__.co_freevars, closure.__closure__))
    return cells["x"].cell_contents, cells["y"].cell_contents


def test_max_grad_norm_must_be_positive():
    model, _ = linear_problem(5)
    with pytest.raises(ValueError, match="max_grad_norm"):
        zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1, max_grad_norm=0.0)


# ------------------------------------------------------------- micro-batches

@pytest.mark.parametrize("name", ["zosam", "sam", "esam", "gsam", "zolooksam", "zossam"])
def test_micro_batches_give_the_result_of_one_pass(name):
    """k strided micro-batches, summed: the weights of the one-pass run."""
    one, _ = run(OPTIMIZERS[name])
    four, opt = run(OPTIMIZERS[name], micro_batches=4)
    torch.testing.assert_close(four, one, rtol=1e-5, atol=1e-6)


def test_micro_batches_with_zo_batch_fraction():
    make = lambda p, **kw: zk.ZOSAM(p, torch.optim.SGD, lr=0.1, n_dirs=2, zo_batch_fraction=0.5, **kw)  # noqa: E731
    one, _ = run(make)
    three, _ = run(make, micro_batches=3)
    torch.testing.assert_close(three, one, rtol=1e-5, atol=1e-6)


def test_micro_batches_cut_the_activation_memory():
    """The largest allocation of a gradient pass (a wide hidden layer's
    activations) shrinks with the micro-batch."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4096), torch.nn.Tanh(), torch.nn.Linear(4096, 2))
    closure = per_sample_closure(model, torch.randn(256, 8), torch.randint(0, 2, (256,)))

    def peak(k):
        opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.0, micro_batches=k)
        opt.step(closure)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    profile_memory=True) as prof:
            opt.step(closure)
        return max(e.self_cpu_memory_usage for e in prof.events())
    activations = 256 * 4096 * 4
    assert peak(1) >= activations
    assert peak(4) <= activations / 2


def test_micro_batches_refuse_what_cannot_be_split():
    model, closure = linear_problem(5, n=3)
    with pytest.raises(ValueError, match="micro_batches"):
        zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1, micro_batches=0)
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1, micro_batches=4)
    with pytest.raises(ValueError, match="came back empty"):
        opt.step(closure)
    with pytest.raises(TypeError, match="indices"):
        opt.step(lambda: closure().mean())
    with pytest.raises(ValueError, match="per-sample"):
        opt.step(lambda indices=None: closure(indices).mean())


# ------------------------------------------------------------- the example

def load_example():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "training_loop.py"
    spec = importlib.util.spec_from_file_location("training_loop_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore::UserWarning")   # CPU autocast notes
@pytest.mark.parametrize("argv", [
    ["--model", "vit_tiny", "--precision", "bf16", "--density", "0.1"],
    ["--model", "resnet20", "--precision", "fp16", "--micro-batches", "2", "--density", "1"],
], ids=["vit-bf16-sparse", "resnet-fp16-micro"])
def test_example_training_loop_runs(argv, capsys):
    loss = load_example().main(argv + ["--steps", "2", "--batch-size", "8", "--log-every", "1"])
    assert math.isfinite(loss) and loss > 0
    out = capsys.readouterr().out
    assert out.count("step ") == 2
