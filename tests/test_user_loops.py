"""What a new user trips on: parameter groups added later, closures that call
backward, the wrong dtype, a model re-bound by load_state_dict(assign=True),
checkpoints made with other arguments, renamed and removed options, and what
step() returns."""
import copy
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

import zosam_kernels as zk
from f64 import Float64Model, directions
from test_behaviour import OPTIMIZERS, assert_same, snapshot
from test_zosam import make_problem, random_masks


def cross_entropy(model, x, y):
    return lambda: F.cross_entropy(model(x), y)


def flat(params):
    return torch.cat([p.detach().reshape(-1) for p in params])


# ---------------------------------------------------------------- add_param_group

ADDABLE = {
    "zosam": lambda params, **kw: zk.ZOSAM(params, torch.optim.SGD, n_dirs=2, seed=3, **kw),
    "zosam-unfused": lambda params, **kw: zk.ZOSAM(params, torch.optim.SGD, n_dirs=2, seed=3,
                                                   backend="unfused", **kw),
    "sam": lambda params, **kw: zk.SAM(params, torch.optim.SGD, **kw),
    "ssam": lambda params, **kw: zk.SSAM(params, torch.optim.SGD, update_interval=2, seed=3, **kw),
    "zossam": lambda params, **kw: zk.ZOSSAM(params, torch.optim.SGD, n_dirs=2, update_interval=2,
                                             seed=3, **kw),
}


def split_problem(seed):
    """A model whose first layer is given at construction and whose last is added later,
    a mask on the first layer's weight, and a twin model with the same weights."""
    model, x, y = make_problem(seed)
    twin = copy.deepcopy(model)
    mask = random_masks(model, 0.5, seed)[model[0].weight]
    return model, twin, x, y, mask


def assert_inside_flat_buffers(opt, params):
    """Every parameter's storage lies inside one of the optimizer's flat buffers."""
    ranges = [(b.data_ptr(), b.data_ptr() + b.numel() * b.element_size()) for b in opt.flat.buffers]
    for p in params:
        start, end = p.data_ptr(), p.data_ptr() + p.numel() * p.element_size()
        assert any(lo <= start and end <= hi for lo, hi in ranges), tuple(p.shape)


@pytest.mark.parametrize("added_after", [0, 2])
@pytest.mark.parametrize("name", list(ADDABLE))
def test_add_param_group_perturbs_and_trains_the_new_parameters(name, added_after):
    """The optimizer built on the first layer, the last layer added after `added_after`
    steps, against an optimizer built with both groups from the start (the same seed and
    step count; plain SGD when steps came before the add, so there is no state to share)."""
    momentum = 0.9 if added_after == 0 else 0.0
    make = ADDABLE[name]
    model, twin, x, y, mask = split_problem(30)
    first, last = list(model[0].parameters()), list(model[2].parameters())
    opt = make(first, masks={model[0].weight: mask}, lr=0.05, momentum=momentum)
    for _ in range(added_after):
        opt.step(cross_entropy(model, x, y))
    with torch.no_grad():   # the twin catches up: same weights, its optimizer at the same step
        for a, b in zip(twin.parameters(), model.parameters()):
            a.copy_(b)
    before_add = [p.detach().clone() for p in last]

    opt.add_param_group({"params": last})
    ref = make([{"params": list(twin[0].parameters())}, {"params": list(twin[2].parameters())}],
               masks={twin[0].weight: mask}, lr=0.05, momentum=momentum)
    ref.step_count = opt.step_count
    assert opt.layout.numel == sum(p.numel() for p in model.parameters())
    if getattr(opt, "backend", None) == "fused":
        assert_inside_flat_buffers(opt, model.parameters())
    for p, b in zip(last, before_add):
        assert torch.equal(p.detach(), b)   # re-flattening keeps the values

    seen = []   # the last layer's weights at every evaluation of the closure, first step after the add

    def recording():
        seen.append(flat(last).clone())
        return F.cross_entropy(model(x), y)
    opt.step(recording)
    ref.step(cross_entropy(twin, x, y))
    theta = flat(before_add)
    moved = [not torch.equal(s, theta) for s in seen]
    # ZO methods: every pass is at a perturbed point; SAM methods: the second pass
    assert moved == ([True] * len(seen) if name.startswith("zo") else [False, True]), moved
    for _ in range(2):
        opt.step(cross_entropy(model, x, y))
        ref.step(cross_entropy(twin, x, y))

    torch.testing.assert_close(flat(model.parameters()), flat(twin.parameters()), rtol=0, atol=1e-6)
    assert (flat(last) - theta).abs().min() > 0   # every new weight was trained
    assert (model[0].weight.detach()[~mask] == 0).all()   # construction's mask survived the add
    assert torch.equal(opt.masks.get(model[0].weight), mask)
    if getattr(opt, "backend", None) == "fused":
        assert_inside_flat_buffers(opt, model.parameters())


@pytest.mark.parametrize("name", ["looksam", "gsam"])
def test_add_param_group_gives_the_new_group_every_hyperparameter(name):
    """LookSAM and GSAM keep per-group hyperparameters (alpha, GSAM's rho schedule): a
    group added later must get them as torch optimizers do, from the defaults."""
    model, x, y = make_problem(31)
    make = {"looksam": lambda p: zk.LookSAM(p, torch.optim.SGD, lr=0.05, k=2, alpha=0.5),
            "gsam": lambda p: zk.GSAM(p, torch.optim.SGD, lr=0.05, alpha=0.3)}[name]
    opt = make(list(model[0].parameters()))
    opt.add_param_group({"params": list(model[2].parameters())})
    for _ in range(3):
        opt.step(cross_entropy(model, x, y))
    assert opt.param_groups[1]["alpha"] == opt.param_groups[0]["alpha"]


def test_add_param_group_refused_leaves_the_optimizer_as_it_was():
    """A float64 group is refused (TypeError); the optimizer must not keep half of it."""
    model, x, y = make_problem(32)
    opt = zk.ZOSAM(list(model[0].parameters()), torch.optim.SGD, lr=0.05)
    numel = opt.layout.numel
    extra = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="float32"):
        opt.add_param_group({"params": [extra]})
    assert len(opt.param_groups) == 1
    assert opt.layout.numel == numel


# ---------------------------------------------------------------- closures

@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_closure_that_calls_backward_is_refused_and_changes_nothing(name):
    model, x, y = make_problem(33, batchnorm=True)
    opt = OPTIMIZERS[name](model.parameters())
    opt.step(cross_entropy(model, x, y))   # momentum / moments exist
    before = snapshot(model, opt)

    def calls_backward():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    with pytest.raises(RuntimeError, match=re.escape("closure must not call backward()")):
        opt.step(calls_backward)
    assert_same(before, model, opt, atol=1e-6)
    opt.step(cross_entropy(model, x, y))   # and it goes on


# ---------------------------------------------------------------- dtypes

def test_float64_parameters_are_refused_with_the_fix():
    model, _, _ = make_problem(34)
    with pytest.raises(TypeError, match=r"float32.*torch\.float64.*model\.float\(\)"):
        zk.ZOSAM(model.double().parameters(), torch.optim.SGD, lr=0.1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_parameters_are_refused_with_autocast_advice(dtype):
    model, _, _ = make_problem(34)
    with pytest.raises(TypeError, match=rf"float32.*{dtype}.*autocast"):
        zk.ZOSAM(model.to(dtype).parameters(), torch.optim.SGD, lr=0.1)


# ---------------------------------------------------------------- load_state_dict(assign=True)

@pytest.mark.parametrize("name", ["zosam", "zosam-unfused", "sam", "zossam", "looksam"])
def test_model_reloaded_with_assign_true_is_reported(name):
    model, x, y = make_problem(35)
    opt = OPTIMIZERS[name](model.parameters())
    opt.step(cross_entropy(model, x, y))
    held = list(model.parameters())              # the optimizer's parameter objects
    assert {id(p) for p in held} == {id(p) for p in opt.params}
    before = snapshot(model, opt)
    sd = {k: v.clone() for k, v in model.state_dict().items()}   # as if from torch.load
    model.load_state_dict(sd, assign=True)       # the model now computes with new Parameters
    assert not any(p is q for p in model.parameters() for q in held)
    with pytest.raises(RuntimeError, match=re.escape("assign=True")):
        opt.step(cross_entropy(model, x, y))
    for p, b in zip(held, before[0]):            # the optimizer's parameters are as they were
        torch.testing.assert_close(p.detach(), b, rtol=0, atol=1e-6)
    for p, b in zip(model.parameters(), before[0]):   # and the model's are the loaded ones
        assert torch.equal(p.detach(), b)


# ---------------------------------------------------------------- checkpoints made with other arguments

@pytest.mark.parametrize("arg,given", [("n_dirs", dict(n_dirs=1, seed=3)), ("seed", dict(n_dirs=2, seed=0))])
def test_checkpoint_arguments_replace_the_constructors_with_a_warning(arg, given):
    model, x, y = make_problem(36)
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9, n_dirs=2, seed=3)
    for _ in range(2):
        opt.step(cross_entropy(model, x, y))
    ckpt = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    for _ in range(2):
        opt.step(cross_entropy(model, x, y))
    straight = flat(model.parameters())

    model, _, _ = make_problem(37)
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9, **given)
    model.load_state_dict(ckpt["model"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.load_state_dict(ckpt["opt"])
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1, messages
    assert f"{arg}=" in messages[0], messages
    assert (opt.n_dirs, opt.seed) == (2, 3)
    for _ in range(2):
        opt.step(cross_entropy(model, x, y))
    assert torch.equal(flat(model.parameters()), straight)   # the checkpoint's directions replayed


# ---------------------------------------------------------------- options that do not exist

def test_an_unknown_backend_or_option_is_named():
    model, _, _ = make_problem(39)
    with pytest.raises(ValueError, match="backend must be 'fused' or 'unfused', got 'reference'"):
        zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1, backend="reference")
    with pytest.raises(TypeError, match="zo_inference_mode"):
        zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1, zo_inference_mode=True)


# ---------------------------------------------------------------- what step() returns

@pytest.mark.parametrize("masked", [False, True])
def test_step_returns_the_mean_of_the_plus_and_minus_losses(masked):
    """Against float64: the mean over i of L(θ + δu_i) and L(θ − δu_i), which differs
    from L(θ) by O(δ²) (checked to be far above the tolerance, so the test can tell)."""
    model, x, y = make_problem(40)
    masks = random_masks(model, 0.5, 40) if masked else None
    delta, n_dirs = 3e-2, 3
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1, delta=delta, n_dirs=n_dirs, seed=40,
                   masks=masks)
    f = Float64Model(model, x, y, F.cross_entropy)
    theta = f.flat()   # after construction: pruned weights are 0
    loss = opt.step(cross_entropy(model, x, y))

    us = directions(opt.last_seeds, theta.numel())
    if masked:
        mask = torch.cat([masks.get(p, torch.ones_like(p, dtype=torch.bool)).reshape(-1).double()
                          for p in model.parameters()])
        us = [u * mask for u in us]
    with torch.no_grad():
        expected = torch.stack([f.loss(theta + s * delta * u) for u in us for s in (1, -1)]).mean()
        at_theta = f.loss(theta)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, rtol=0, atol=1e-5)
    assert (expected - at_theta).abs() > 1e-4
