"""What users rely on: BatchNorm statistics, faults, validation, resume, masks, memory."""
import copy

import pytest
import torch
import torch.nn.functional as F

import zosam_kernels as zk
from family_cases import builder, plain_closure_cases
from test_zosam import make_problem, random_masks
from zosam_kernels import sparse

OPTIMIZERS = {case: builder(case) for case in plain_closure_cases()}


def bn_first_problem():
    """BatchNorm on the input: its batch mean is known without any weights."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 5), torch.nn.ReLU(),
                                torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 3))
    x = torch.randn(32, 6) * 2 + 1
    y = torch.randint(0, 3, (32,))
    return model, x, y


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_batchnorm_statistics_move_once_per_step(name):
    model, x, y = bn_first_problem()
    opt = OPTIMIZERS[name](model.parameters())
    bn = model[0]
    for step in range(1, 4):
        opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))
        assert int(bn.num_batches_tracked) == step
        assert int(model[3].num_batches_tracked) == step
    expected = torch.zeros(6, dtype=torch.float64)
    for _ in range(3):
        expected = 0.9 * expected + 0.1 * x.double().mean(0)
    torch.testing.assert_close(bn.running_mean.double(), expected, rtol=1e-5, atol=1e-6)


def snapshot(model, opt):
    return ([p.detach().clone() for p in model.parameters()], copy.deepcopy(opt.state_dict()))


def assert_same(before, model, opt, atol):
    params, state = before
    for a, b in zip(params, model.parameters()):
        torch.testing.assert_close(b.detach(), a, rtol=0, atol=atol)
    assert_equal_trees(opt.state_dict(), state)


def assert_equal_trees(a, b, where="state_dict"):
    """a == b for nested dicts / lists of tensors and plain values, tensors bit for bit."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        assert torch.is_tensor(a) and torch.is_tensor(b) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_equal_trees(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_trees(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def calls_per_step(name):
    """How often the second step of `name` calls its closure (the tests below fault
    a step after a first one), counted on a twin run."""
    model, x, y = make_problem(1)
    opt = OPTIMIZERS[name](model.parameters())
    calls = [0]

    def counting():
        calls[0] += 1
        return torch.nn.functional.cross_entropy(model(x), y)
    opt.step(counting)
    calls[0] = 0
    opt.step(counting)
    return calls[0]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_exception_in_closure_loses_nothing(name):
    model, x, y = make_problem(1, batchnorm=True)
    opt = OPTIMIZERS[name](model.parameters())
    closure = lambda: torch.nn.functional.cross_entropy(model(x), y)  # noqa: E731
    opt.step(closure)   # so that momentum state exists
    for fail_at in range(1, calls_per_step(name) + 1):
        before = snapshot(model, opt)
        calls = [0]

        def failing():
            calls[0] += 1
            if calls[0] == fail_at:
                raise RuntimeError("data loader died")
            return closure()
        with pytest.raises(RuntimeError, match="data loader died"):
            opt.step(failing)
        assert_same(before, model, opt, atol=1e-6)
    opt.step(closure)   # and it goes on


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_non_finite_loss_skips_the_step(name):
    model, x, y = make_problem(2)
    opt = OPTIMIZERS[name](model.parameters())
    closure = lambda: torch.nn.functional.cross_entropy(model(x), y)  # noqa: E731
    opt.step(closure)
    for bad_at in range(1, calls_per_step(name) + 1):
        for bad in (float("nan"), float("inf")):
            before = snapshot(model, opt)
            calls = [0]

            def poisoned():
                calls[0] += 1
                loss = closure()
                return loss * bad if calls[0] == bad_at else loss
            with pytest.warns(RuntimeWarning, match="non-finite loss"):
                opt.step(poisoned)
            assert_same(before, model, opt, atol=1e-6)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_resume_reproduces_uninterrupted_run_bitwise(name, tmp_path):
    def run(steps, model, opt, x, y):
        for _ in range(steps):
            opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))

    model, x, y = make_problem(7, batchnorm=True)
    masks = random_masks(model, 0.5, 7)
    opt = OPTIMIZERS[name](model.parameters(), masks=masks)
    run(6, model, opt, x, y)
    straight = [p.detach().clone() for p in model.parameters()]

    model, x, y = make_problem(7, batchnorm=True)
    opt = OPTIMIZERS[name](model.parameters(), masks=random_masks(model, 0.5, 7))
    run(3, model, opt, x, y)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")

    model, _, _ = make_problem(99, batchnorm=True)       # other weights, overwritten below
    masks = random_masks(model, 0.5, 7)
    opt = OPTIMIZERS[name](model.parameters(), masks=masks)
    ckpt = torch.load(tmp_path / "ckpt.pt")
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    run(3, model, opt, x, y)
    for a, b in zip(straight, model.parameters()):
        assert torch.equal(a, b.detach())


class MaskingState:
    """What a user saves of a sparse.Masking (it has no state_dict): its masks, its
    version and its generator (SET grows at random from it)."""

    def __init__(self, masking):
        self.masking = masking

    def state_dict(self):
        m = self.masking
        return {"masks": {n: t.clone() for n, t in m.masks.items()}, "version": m.version,
                "generator": m.generator.get_state()}

    def load_state_dict(self, state):
        m = self.masking
        m.masks = {n: t.clone() for n, t in state["masks"].items()}
        m.version = state["version"]
        m.generator.set_state(state["generator"])


def _with_fixed_masks(make):
    def build(model):
        return make(model.parameters(), masks=random_masks(model, 0.5, 7)), {}
    return build


def _zosam_with_schedule(schedule):
    """ZOSAM on a sparse.Masking whose topology a drop-and-grow schedule changes every 2 steps."""
    def build(model):
        masking = sparse.Masking(model, 0.5, seed=3)
        opt = masking.attach(zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9,
                                      n_dirs=2, masks=masking))
        return opt, {"masking": MaskingState(masking), "schedule": schedule(masking)}
    return build


def _gsam_with_lr_scheduler(model):
    opt = zk.GSAM(model.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9, alpha=0.3, rho_min=0.01,
                  masks=random_masks(model, 0.5, 7))
    return opt, {"lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)}


def _sharpness(opt):
    return opt.state_dict()["sharpness"]


# name: (build(model) -> (optimizer, {name: stateful object stepped after each step}),
#        per-sample closure, steps, interrupted after, what makes the interruption meaningful)
RESUMABLE = {
    # B (the batch size the ZO passes slice from) is learnt at step 0: a resumed run must not relearn it
    "zosam-zo-batch-fraction": (
        _with_fixed_masks(lambda params, **kw: zk.ZOSAM(params, torch.optim.SGD, lr=0.05, momentum=0.9,
                                                        n_dirs=2, zo_batch_fraction=0.5, **kw)),
        True, 6, 3, lambda opt, extra: _sharpness(opt)["extra_passes"]["batch_size"] == 16),
    "zosam-zo-autocast": (
        _with_fixed_masks(lambda params, **kw: zk.ZOSAM(params, torch.optim.SGD, lr=0.05, momentum=0.9,
                                                        n_dirs=2, zo_autocast=torch.bfloat16, **kw)),
        False, 6, 3, lambda opt, extra: True),
    # topology changed at 2, next change at 4 (RigL: from the dense gradient of step 4)
    "zosam-rigl": (
        _zosam_with_schedule(lambda masking: sparse.RigL(masking, total_steps=8, update_interval=2)),
        False, 6, 3, lambda opt, extra: extra["masking"]["version"] == 1),
    "zosam-set": (
        _zosam_with_schedule(lambda masking: sparse.SET(masking, update_interval=2)),
        False, 6, 3, lambda opt, extra: extra["masking"]["version"] == 1),
    # SSAM remakes at steps 0, 2, 4: cut after 4 steps, the Fisher sum holds step 3's g^2
    "ssam-fisher-remake": (
        _with_fixed_masks(lambda params, **kw: zk.SSAM(params, torch.optim.SGD, lr=0.05, momentum=0.9,
                                                       update_interval=2, **kw)),
        False, 6, 4, lambda opt, extra: any(
            f.abs().sum() > 0 for f in _sharpness(opt)["perturbation_mask"]["fisher"])),
    # ZOSSAM remakes after steps 1, 3, 5: cut after 3 steps, the Fisher sum holds step 2's g^2
    "zossam-fisher-remake-adaptive": (
        _with_fixed_masks(lambda params, **kw: zk.ZOSSAM(params, torch.optim.SGD, lr=0.05, momentum=0.9,
                                                         n_dirs=2, update_interval=2, adaptive=True,
                                                         **kw)),
        False, 6, 3, lambda opt, extra: any(
            f.abs().sum() > 0 for f in _sharpness(opt)["perturbation_mask"]["fisher"])),
    # k = 3: full steps 0, 3, 6; cut after 4 steps, inside the phase that step 3 began
    "looksam-mid-phase": (
        _with_fixed_masks(lambda params, **kw: zk.LookSAM(params, torch.optim.SGD, lr=0.05, momentum=0.9,
                                                          k=3, **kw)),
        False, 7, 4, lambda opt, extra: opt.step_count % opt.k == 1),
    "zolooksam-mid-phase": (
        _with_fixed_masks(lambda params, **kw: zk.ZOLookSAM(params, torch.optim.SGD, lr=0.05,
                                                            momentum=0.9, k=3, n_dirs=2, **kw)),
        False, 7, 4, lambda opt, extra: opt.step_count % opt.k == 1),
    # rho follows the scheduled lr
    "gsam-lr-scheduler": (_gsam_with_lr_scheduler, False, 6, 3,
                          lambda opt, extra: opt.param_groups[0]["lr"] < 0.05),
}


def _closure(model, x, y, per_sample):
    if not per_sample:
        return lambda: F.cross_entropy(model(x), y)

    def closure(indices=None):
        idx = slice(None) if indices is None else indices
        return F.cross_entropy(model(x[idx]), y[idx], reduction="none")
    return closure


@pytest.mark.parametrize("name", list(RESUMABLE))
def test_resume_with_stateful_options_reproduces_uninterrupted_run_bitwise(name, tmp_path):
    """Every option that carries state across steps, interrupted where that state matters;
    the masking, drop-and-grow schedule and LR scheduler saved and restored with it."""
    build, per_sample, steps, cut, meaningful = RESUMABLE[name]

    def run(n, model, opt, extra, x, y):
        closure = _closure(model, x, y, per_sample)
        for _ in range(n):
            opt.step(closure)
            for obj in extra.values():
                if hasattr(obj, "step"):
                    obj.step()

    model, x, y = make_problem(7, batchnorm=True)
    opt, extra = build(model)
    run(steps, model, opt, extra, x, y)
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    model, x, y = make_problem(7, batchnorm=True)
    opt, extra = build(model)
    run(cut, model, opt, extra, x, y)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                **{k: v.state_dict() for k, v in extra.items()}}, tmp_path / "ckpt.pt")
    assert meaningful(opt, {k: v.state_dict() for k, v in extra.items()}), "the cut tests nothing"

    model, _, _ = make_problem(99, batchnorm=True)       # other weights, overwritten below
    opt, extra = build(model)
    ckpt = torch.load(tmp_path / "ckpt.pt")
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    for k, obj in extra.items():
        obj.load_state_dict(ckpt[k])
    run(steps - cut, model, opt, extra, x, y)
    resumed = model.state_dict()
    assert resumed.keys() == straight.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    if "masking" in extra:   # the topology changed after the cut too, and identically
        assert extra["masking"].masking.version > ckpt["masking"]["version"]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero(name):
    model, x, y = make_problem(8, batchnorm=True)
    masks = random_masks(model, 0.3, 8)
    opt = OPTIMIZERS[name](model.parameters(), masks=masks)
    for _ in range(4):
        opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))
        for p, m in masks.items():
            assert (p.detach()[~m] == 0).all()
            assert (p.detach()[m] != 0).any()


class Topology:
    """A minimal masking object: param_masks() and a version bumped on change."""

    def __init__(self, masks):
        self.masks, self.version = masks, 0

    def param_masks(self):
        return self.masks

    def change(self, masks):
        with torch.no_grad():
            for p, m in masks.items():
                p.mul_(m)   # what a sparse engine does: prune, and grow from zero
        self.masks, self.version = masks, self.version + 1


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_topology_changes_reach_the_optimizer(name):
    model, x, y = make_problem(10, batchnorm=True)
    topology = Topology({})          # dense at first: the flat mask buffer is made on the change
    opt = OPTIMIZERS[name](model.parameters(), masks=topology)
    closure = lambda: torch.nn.functional.cross_entropy(model(x), y)  # noqa: E731
    opt.step(closure)
    assert all((p != 0).all() for p in model.parameters())
    for seed in (11, 12):            # prune, then drop and grow elsewhere
        masks = random_masks(model, 0.4, seed)
        topology.change(masks)
        for _ in range(2):
            opt.step(closure)
            for p, m in masks.items():
                assert (p.detach()[~m] == 0).all()
                assert (p.detach()[m] != 0).all()
        for p, m in masks.items():
            assert torch.equal(opt.masks.get(p), m)


def test_lr_scheduler_drives_the_base_optimizer():
    model, x, y = make_problem(9)
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_tied_and_frozen_parameters():
    lin = torch.nn.Linear(4, 4)
    frozen = torch.nn.Linear(4, 4).requires_grad_(False)
    model = torch.nn.Sequential(lin, torch.nn.Tanh(), frozen, torch.nn.Tanh(), lin)
    x, y = torch.randn(8, 4), torch.randn(8, 4)
    before = [p.detach().clone() for p in frozen.parameters()]
    opt = zk.ZOSAM(list(model.parameters()), torch.optim.SGD, lr=0.1)
    assert opt.layout.numel == lin.weight.numel() + lin.bias.numel()
    opt.step(lambda: torch.nn.functional.mse_loss(model(x), y))
    for a, b in zip(before, frozen.parameters()):
        assert torch.equal(a, b)
    assert lin.weight.data_ptr() == opt.flat.buffers[0].data_ptr()


def test_per_sample_losses_are_averaged():
    model, x, y = make_problem(10)
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1)
    loss = opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y, reduction="none"))
    assert loss.dim() == 0


def _bad(kind):
    model, x, y = make_problem(0)
    p = list(model.parameters())
    return {
        "rho": lambda: zk.ZOSAM(p, rho=-0.1, lr=0.1),
        "delta": lambda: zk.ZOSAM(p, delta=0.0, lr=0.1),
        "n_dirs": lambda: zk.ZOSAM(p, n_dirs=0, lr=0.1),
        "seed": lambda: zk.ZOSAM(p, seed=-1, lr=0.1),
        "backend": lambda: zk.ZOSAM(p, backend="cuda", lr=0.1),
        "base_optimizer": lambda: zk.ZOSAM(p, base_optimizer="sgd", lr=0.1),
        "masks": lambda: zk.ZOSAM(p, masks={p[0]: torch.ones(3, 3, dtype=torch.bool)}, lr=0.1),
        "masks dtype": lambda: zk.ZOSAM(p, masks={p[0]: torch.ones_like(p[0])}, lr=0.1),
        "masks device": lambda: zk.ZOSAM(p, masks={p[0]: torch.ones_like(p[0], dtype=torch.bool,
                                                                            device="meta")}, lr=0.1),
        "params": lambda: zk.ZOSAM([torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))], lr=0.1),
        "params fp16": lambda: zk.ZOSAM([torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))], lr=0.1),
        "sam rho": lambda: zk.SAM(p, rho=-1.0, lr=0.1),
    }[kind]


@pytest.mark.parametrize("kind,error,words", [
    ("rho", ValueError, "rho"), ("delta", ValueError, "delta"), ("n_dirs", ValueError, "n_dirs"),
    ("seed", ValueError, "seed"), ("backend", ValueError, "backend"),
    ("base_optimizer", TypeError, "base_optimizer"), ("masks", ValueError, "masks: mask shape"),
    ("masks dtype", TypeError, "masks"), ("masks device", ValueError, "masks: mask is on meta"),
    ("params", TypeError, "params: .*bfloat16"), ("params fp16", TypeError, "params: .*float16"),
    ("sam rho", ValueError, "rho"),
])
def test_invalid_arguments_name_the_argument(kind, error, words):
    with pytest.raises(error, match=words):
        _bad(kind)()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_closure_must_return_a_tensor(name):
    model, x, y = make_problem(0)
    opt = OPTIMIZERS[name](model.parameters())
    before = snapshot(model, opt)
    with pytest.raises(TypeError, match="closure must return the loss as a tensor"):
        opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y).item())
    with pytest.raises(ValueError, match="closure"):
        opt.step(None)
    assert_same(before, model, opt, atol=1e-6)


def test_scheduled_rho_is_validated_at_step():
    model, x, y = make_problem(0)
    opt = zk.ZOSAM(model.parameters(), lr=0.1)
    opt.param_groups[0]["rho"] = -1.0
    with pytest.raises(ValueError, match="rho"):
        opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))


def largest_allocation_outside_backward(step):
    """Largest allocation (bytes) the profiler attributes to an op that does not
    run inside autograd's backward; backward makes the gradients, as for SGD."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        step()
    sizes = []
    for e in prof.events():
        if e.self_cpu_memory_usage <= 0:   # self: an op's own allocations, not its children's
            continue
        parent, in_backward = e, False
        while parent is not None:
            in_backward |= parent.name.startswith("autograd::engine")
            parent = parent.cpu_parent
        if not in_backward:
            sizes.append(e.self_cpu_memory_usage)
    assert sizes, "the profiler recorded no allocation at all"
    return max(sizes)


def test_fused_step_allocates_no_parameter_sized_temporary():
    """A wide linear model with a batch of 2: parameters are 4 MB, activations
    are bytes. After a warm-up step, a fused ZOSAM step over plain SGD must
    not allocate anything near a parameter's size outside the backward."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1000, 1000), torch.nn.Tanh(), torch.nn.Linear(1000, 2))
    x, y = torch.randn(2, 1000), torch.randint(0, 2, (2,))
    closure = lambda: torch.nn.functional.cross_entropy(model(x), y)  # noqa: E731
    param_bytes = model[0].weight.numel() * 4

    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.01, n_dirs=2)
    opt.step(closure)
    assert largest_allocation_outside_backward(lambda: opt.step(closure)) < param_bytes / 50

    # the same measurement sees the unfused baseline's materialised directions
    ref = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.01, n_dirs=2, backend="unfused")
    ref.step(closure)
    assert largest_allocation_outside_backward(lambda: ref.step(closure)) >= param_bytes


MEMORY = {
    # fisher / dynamic perturbation masks, remade every 100 steps: the measured step is not a remake
    "zossam-fisher": lambda params, model: zk.ZOSSAM(params, torch.optim.SGD, lr=0.01, n_dirs=2,
                                                     update_interval=100),
    "zossam-dynamic": lambda params, model: zk.ZOSSAM(params, torch.optim.SGD, lr=0.01, n_dirs=2,
                                                      mask="dynamic", update_interval=100,
                                                      total_steps=1000),
    # θ's copy for |θ| is made at the first step and kept
    "zosam-adaptive": lambda params, model: zk.ZOSAM(params, torch.optim.SGD, lr=0.01, n_dirs=2,
                                                     adaptive=True),
    "zosam-zo-batch-fraction": lambda params, model: zk.ZOSAM(params, torch.optim.SGD, lr=0.01,
                                                              n_dirs=2, zo_batch_fraction=0.5),
    "zosam-masked": lambda params, model: zk.ZOSAM(params, torch.optim.SGD, lr=0.01, n_dirs=2,
                                                   masks=random_masks(model, 0.5, 0)),
}


@pytest.mark.parametrize("name", list(MEMORY))
def test_fused_options_allocate_no_parameter_sized_temporary(name):
    """As test_fused_step_allocates_no_parameter_sized_temporary, for the options that
    keep per-weight state or change the passes: after a warm-up step (which may allocate
    what is kept between steps), no step allocates anything near a parameter's size."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1000, 1000), torch.nn.Tanh(), torch.nn.Linear(1000, 2))
    x, y = torch.randn(2, 1000), torch.randint(0, 2, (2,))

    def closure(indices=None):
        idx = slice(None) if indices is None else indices
        return F.cross_entropy(model(x[idx]), y[idx], reduction="none")
    param_bytes = model[0].weight.numel() * 4

    opt = MEMORY[name](model.parameters(), model)
    opt.step(closure)
    assert largest_allocation_outside_backward(lambda: opt.step(closure)) < param_bytes / 50


def test_parameters_moved_after_construction_are_reported():
    model, x, y = make_problem(0)
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1)
    model.double().float()   # re-binds every parameter to fresh storage
    with pytest.raises(RuntimeError, match="flat buffer"):
        opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))
