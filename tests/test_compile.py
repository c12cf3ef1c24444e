"""A torch.compile'd model in the closure, and the BatchNorm statistics that
frozen passes (the extra passes, SAM's second pass) leave as they were."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend

import zosam_kernels as zk
from zosam_kernels.optim.passes import Passes

pytestmark = pytest.mark.skipif(not torch._dynamo.is_dynamo_supported(),
                                reason="torch.compile (Dynamo) does not support this Python")

OPTIMIZERS = {
    "zosam": lambda params, lr, rho: zk.ZOSAM(params, torch.optim.SGD, lr=lr, momentum=0.9, rho=rho,
                                              n_dirs=2),
    "sam": lambda params, lr, rho: zk.SAM(params, torch.optim.SGD, lr=lr, momentum=0.9, rho=rho),
    "gsam": lambda params, lr, rho: zk.GSAM(params, torch.optim.SGD, lr=lr, momentum=0.9, rho=rho,
                                            alpha=0.3),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Dynamo's caches and recompile limit are per code object, shared by every
    SmallCNN compiled here: each test starts from none."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class SmallCNN(torch.nn.Module):
    """Not a torch.nn container: model.compile() skips the frames of torch.nn's own modules."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, padding=1, bias=False), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
            torch.nn.Conv2d(6, 6, 3, padding=1, bias=False), torch.nn.BatchNorm2d(6), torch.nn.ReLU())
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return SmallCNN(), torch.randn(8, 3, 6, 6), torch.randint(0, 3, (8,))


def batchnorms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def statistics(model):
    return [b.clone() for m in batchnorms(model) for b in m.buffers()]


def assert_statistics_equal(a, b, **tolerance):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, **tolerance)


def batch_statistics_copy(model):
    """What frozen passes computed when hooks froze the statistics (before they were
    restored by copy): every layer with track_running_stats off, batch statistics."""
    twin = copy.deepcopy(model)
    for m in batchnorms(twin):
        m.track_running_stats = False
    return twin


@pytest.mark.parametrize("name", ["zosam", "sam"])
@pytest.mark.parametrize("how", ["torch.compile", "module.compile"])
def test_no_graph_is_compiled_after_the_second_step(name, how):
    model, x, y = small_cnn()
    counter = CompileCounterWithBackend("aot_eager")
    if how == "torch.compile":
        forward = torch.compile(model, backend=counter)
    else:
        model.compile(backend=counter)
        forward = model
    opt = OPTIMIZERS[name](model.parameters(), lr=0.05, rho=0.05)
    graphs = []
    for _ in range(6):
        opt.step(lambda: F.cross_entropy(forward(x), y))
        graphs.append(counter.frame_count)
    assert graphs[1] == graphs[-1], graphs
    assert graphs[-1] <= 2, graphs   # one graph with autograd, one without (ZOSAM's extra passes)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_compiled_statistics_move_as_one_training_forward_per_step(name):
    """lr = 0 keeps theta, so each step moves the statistics as one forward at theta
    would. ZOSAM: rho = 0 puts its gradient pass at theta; its extra passes, at
    theta +- delta u, would leave a trace if they moved anything."""
    model, x, y = small_cnn()
    by_hand = copy.deepcopy(model)
    compiled = torch.compile(model, backend="aot_eager")
    opt = OPTIMIZERS[name](model.parameters(), lr=0.0, rho=0.0 if name == "zosam" else 0.05)
    for step in range(1, 3):
        opt.step(lambda: F.cross_entropy(compiled(x), y))
        by_hand(x)
        assert [int(m.num_batches_tracked) for m in batchnorms(model)] == [step, step]
        assert_statistics_equal(statistics(model), statistics(by_hand), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_compiled_steps_match_eager_steps(name):
    model, x, y = small_cnn()
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, backend="aot_eager")
    opt = OPTIMIZERS[name](model.parameters(), lr=0.05, rho=0.05)
    ref = OPTIMIZERS[name](eager.parameters(), lr=0.05, rho=0.05)
    for _ in range(3):
        loss = opt.step(lambda: F.cross_entropy(compiled(x), y))
        expected = ref.step(lambda: F.cross_entropy(eager(x), y))
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for a, b in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert_statistics_equal(statistics(model), statistics(eager), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_frozen_pass_normalises_with_batch_statistics(compiled):
    """The loss and gradients of frozen passes are those of BatchNorm without running
    statistics, bit for bit in eager; the statistics end as they began. Twice:
    the first pass finds the layers, the second restores what it found."""
    model, x, y = small_cnn()
    forward = torch.compile(model, backend="aot_eager") if compiled else model
    twin = batch_statistics_copy(model)
    before = statistics(model)
    tolerance = dict(rtol=1e-5, atol=1e-6) if compiled else dict(rtol=0, atol=0)
    passes = Passes()
    params = list(model.parameters())
    for _ in range(2):
        loss = passes.extra(lambda: F.cross_entropy(forward(x), y))
        with torch.no_grad():
            torch.testing.assert_close(loss, F.cross_entropy(twin(x), y), **tolerance)
        passes.gradient(lambda: F.cross_entropy(forward(x), y), params, freeze_batchnorm=True)
        twin.zero_grad(set_to_none=True)
        F.cross_entropy(twin(x), y).backward()
        for p, q in zip(params, twin.parameters()):
            torch.testing.assert_close(p.grad, q.grad, **tolerance)
        assert_statistics_equal(statistics(model), before, rtol=0, atol=0)


class SometimesSkipped(torch.nn.Module):
    """A residual block that stochastic depth may leave out of a pass."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(5, 5), torch.nn.BatchNorm1d(5))
        self.skip = False

    def forward(self, x):
        return x if self.skip else x + self.body(x)


def test_layers_that_sit_out_the_first_frozen_pass_stay_frozen_later():
    torch.manual_seed(0)
    block = SometimesSkipped()
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(5), block, torch.nn.Linear(5, 2))
    x, y = torch.randn(8, 5), torch.randint(0, 2, (8,))
    passes = Passes()
    block.skip = True
    passes.extra(lambda: F.cross_entropy(model(x), y))   # finds the layers
    block.skip = False
    before = statistics(model)
    passes.extra(lambda: F.cross_entropy(model(x), y))
    assert_statistics_equal(statistics(model), before, rtol=0, atol=0)


def test_replaced_buffers_and_new_param_groups_are_followed():
    model, x, y = small_cnn()
    opt = zk.SAM(model.parameters(), torch.optim.SGD, lr=0.05)
    closure = lambda: F.cross_entropy(model(x), y)   # noqa: E731
    opt.step(closure)
    model.features[1].running_mean = torch.full((6,), 3.0)    # a new tensor, not the one found
    with torch.no_grad():   # what the first pass, at these weights, makes of it
        expected = 0.9 * 3.0 + 0.1 * model.features[0](x).mean((0, 2, 3))
    opt.step(closure)
    torch.testing.assert_close(model.features[1].running_mean, expected, rtol=1e-5, atol=1e-6)
    head = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    opt.add_param_group({"params": head.parameters()})
    full = lambda: F.cross_entropy(head(model(x)), y)   # noqa: E731
    for step in range(1, 3):
        opt.step(full)
        assert int(head[1].num_batches_tracked) == step


def test_a_failed_frozen_pass_restores_and_looks_again():
    model, x, y = small_cnn()
    passes = Passes()
    before = statistics(model)

    def dies_after_the_forward():
        model(x)
        raise RuntimeError("data loader died")
    with pytest.raises(RuntimeError, match="data loader died"):
        passes.extra(dies_after_the_forward)
    assert_statistics_equal(statistics(model), before, rtol=0, atol=0)
    assert passes.batchnorm.layers is None
    passes.extra(lambda: F.cross_entropy(model(x), y))
    assert passes.batchnorm.layers == batchnorms(model)
    with pytest.raises(RuntimeError, match="data loader died"):
        passes.extra(dies_after_the_forward)
    assert_statistics_equal(statistics(model), before, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["sam", "zosam"])
def test_a_step_called_from_a_compiled_function_runs_eagerly(name):
    """step() is never traced: inside a torch.compile'd function it runs as it does
    outside (the BatchNorm layers found in one eager pass, their statistics moved
    once per step), and gives the eager step's weights."""
    runs = []
    for compiled in (False, True):
        model, x, y = small_cnn()
        opt = OPTIMIZERS[name](model.parameters(), lr=0.05, rho=0.05)
        step = lambda: opt.step(lambda: F.cross_entropy(model(x), y))  # noqa: E731
        if compiled:
            step = torch.compile(step, backend="eager")
        for k in range(3):
            step()
            assert all(int(bn.num_batches_tracked) == k + 1 for bn in batchnorms(model))
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
