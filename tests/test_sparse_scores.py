"""SNIP, GraSP and SynFlow against float64 autograd computed here from the
papers' definitions (flat weight vector, full Hessian), and the selection."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from zosam_kernels import sparse


def small_model(seed, batchnorm=False):
    torch.manual_seed(seed)
    layers = [torch.nn.Conv2d(3, 4, 3)]
    if batchnorm:
        layers.append(torch.nn.BatchNorm2d(4))
    layers += [torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 3, 5)]
    return torch.nn.Sequential(*layers)


def batches(seed, n_batches=2, size=12):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 5, 5, generator=g), torch.randint(0, 5, (size,), generator=g))
            for _ in range(n_batches)]


class Flat64:
    """The model's parameters as one float64 vector; names() of the prunable weights."""

    def __init__(self, model):
        self.model = copy.deepcopy(model).double()
        self.named = [(n, p.shape) for n, p in self.model.named_parameters()]
        self.theta = torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])
        self.prunable = ["0.weight", f"{len(model) - 1}.weight"]

    def params(self, theta):
        out, i = {}, 0
        for n, s in self.named:
            out[n] = theta[i:i + math.prod(s)].view(s)
            i += math.prod(s)
        return out

    def call(self, theta, x):
        return functional_call(self.model, self.params(theta), (x.double(),))

    def split(self, vector):
        full = self.params(vector)
        return {n: full[n] for n in self.prunable}


def assert_scores(got, want, rtol=1e-4):
    assert set(got) == set(want)
    for n in want:
        scale = want[n].abs().max()
        torch.testing.assert_close(got[n].double(), want[n], rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_snip_is_abs_grad_times_weight(seed):
    model, data = small_model(seed), batches(seed + 10)
    f = Flat64(model)

    def mean_loss(theta):
        return sum(F.cross_entropy(f.call(theta, x), y) for x, y in data) / len(data)

    g = torch.autograd.functional.jacobian(mean_loss, f.theta)
    want = {n: t.abs() for n, t in f.split(g * f.theta).items()}
    assert_scores(sparse.score("snip", model, F.cross_entropy, data), want)


def balanced_by_hand(data, per_class):
    xs, ys = [], []
    for c in range(5):
        taken = 0
        for x, y in data:
            for i in range(len(y)):
                if int(y[i]) == c and taken < per_class:
                    xs.append(x[i])
                    ys.append(y[i])
                    taken += 1
    return torch.stack(xs), torch.stack(ys)


@pytest.mark.parametrize("seed", [0, 1])
def test_grasp_is_minus_weight_times_hessian_gradient(seed):
    model, data = small_model(seed), batches(seed + 20, n_batches=3, size=20)
    f = Flat64(model)
    x, y = balanced_by_hand(data, 2)
    T = 200.0

    def loss(theta):
        return F.cross_entropy(f.call(theta, x) / T, y)

    # g and H over the Conv/Linear weights only (the other parameters held fixed)
    w = torch.zeros_like(f.theta, dtype=torch.bool)
    for t in f.split(w).values():
        t.fill_(True)
    g = torch.autograd.functional.jacobian(loss, f.theta)[w]
    H = torch.autograd.functional.hessian(loss, f.theta)[w][:, w]   # the full matrix, not a product
    hg = torch.zeros_like(f.theta)
    hg[w] = H @ g
    want = f.split(-f.theta * hg)
    got = sparse.score("grasp", model, F.cross_entropy, data, samples_per_class=2)
    assert_scores(got, want, rtol=1e-4)


def test_class_balanced_takes_the_first_samples_of_each_class():
    data = batches(3, n_batches=3, size=20)
    x, y = sparse.class_balanced(data, 2)
    wx, wy = balanced_by_hand(data, 2)
    assert torch.equal(y, wy) and torch.equal(x, wx)
    with pytest.raises(ValueError, match="samples_per_class"):
        sparse.class_balanced(data, 100)


def synflow_by_hand(model, density, iterations, shape):
    f = Flat64(model)
    for b in f.model.buffers():
        b.abs_() if b.is_floating_point() else None
    f.model.eval()
    theta = f.theta.abs()
    prunable = torch.zeros_like(theta, dtype=torch.bool)
    for n, t in f.split(prunable).items():
        t.fill_(True)
    keep = torch.ones_like(prunable)
    x = torch.ones(1, *shape, dtype=torch.float64)
    for k in range(1, iterations + 1):
        t = (theta * keep).requires_grad_(True)
        (grad,) = torch.autograd.grad(f.call(t, x).sum(), t)
        s = (grad * t).abs().detach()
        if k < iterations:
            n_keep = round(density ** (k / iterations) * int(prunable.sum()))
            kth = torch.sort(s[prunable], descending=True).values[n_keep - 1]
            keep = ~prunable | (s >= kth)
    return f.split(s)


@pytest.mark.parametrize("iterations", [1, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_synflow_matches_the_iterative_float64_computation(seed, iterations):
    model = small_model(seed, batchnorm=True)
    with torch.no_grad():   # running statistics with signs, to show they are made positive
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2)
    want = synflow_by_hand(model, 0.2, iterations, (3, 5, 5))
    got = sparse.score("synflow", model, density=0.2, iterations=iterations, input_shape=(3, 5, 5))
    assert_scores(got, want)
    if iterations > 1:   # weights pruned in the rounds score exactly 0
        n_zero = sum(int((s == 0).sum()) for s in got.values())
        total = sum(s.numel() for s in got.values())
        assert n_zero == total - round(0.2 ** (4 / 5) * total)


def test_scoring_leaves_the_model_alone():
    model = small_model(4, batchnorm=True)
    before = copy.deepcopy(model.state_dict())
    for method in sparse.METHODS:
        sparse.score(method, model, F.cross_entropy, batches(5, size=40), density=0.5, iterations=2,
                     samples_per_class=2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("keep", ["largest", "smallest"])
def test_selection_keeps_the_budget_of_best_scores(scope, keep):
    model = small_model(6)
    masking = sparse.Masking(model, 0.3, "erk")
    g = torch.Generator().manual_seed(8)
    scores = {n: torch.randn(p.shape, generator=g) for n, p in masking.params.items()}
    masking.prune_by_scores_(scores, scope=scope, keep=keep)
    sign = 1 if keep == "largest" else -1
    if scope == "global":
        flat = torch.cat([sign * s.reshape(-1) for s in scores.values()])
        kth = torch.sort(flat, descending=True).values[sum(masking.counts.values()) - 1]
        for n, s in scores.items():
            assert torch.equal(masking.masks[n], sign * s >= kth)
    else:
        for n, s in scores.items():
            kth = torch.sort((sign * s).reshape(-1), descending=True).values[masking.counts[n] - 1]
            assert torch.equal(masking.masks[n], sign * s >= kth)
    for n, p in masking.params.items():
        assert (p.detach()[~masking.masks[n]] == 0).all()


def test_prune_at_init_grasp_removes_the_highest_scores():
    model = small_model(9)
    with pytest.raises(ValueError, match="init='dense'"):     # scores of a pruned model
        sparse.prune_at_init_(sparse.Masking(model, 0.25), "snip", F.cross_entropy, batches(9))
    model = small_model(9)
    before = {n: p.detach().clone() for n, p in sparse.prunable_weights(model).items()}
    masking = sparse.Masking(model, 0.25, "uniform", init="dense")
    assert masking.density() == 1 and masking.version == 0
    scores = sparse.prune_at_init_(masking, "grasp", F.cross_entropy, batches(9, size=40),
                                   scope="layerwise", samples_per_class=2)
    assert masking.density() == pytest.approx(0.25, abs=1 / 180)
    for n, s in scores.items():
        m = masking.masks[n]
        assert s[m].max() <= s[~m].min()
        assert torch.equal(masking.params[n].detach()[m], before[n][m])   # kept weights keep their values


def test_bad_arguments_are_named():
    model = small_model(0)
    with pytest.raises(ValueError, match="method"):
        sparse.score("obd", model)
    with pytest.raises(ValueError, match="loss_fn"):
        sparse.score("snip", model)
    with pytest.raises(ValueError, match="density"):
        sparse.score("synflow", model, input_shape=(3, 5, 5), iterations=3)
    masking = sparse.Masking(model, 0.5)
    with pytest.raises(ValueError, match="scope"):
        masking.prune_by_scores_(sparse.score("magnitude", model), scope="per-channel")
    with pytest.raises(ValueError, match="keep"):
        masking.prune_by_scores_(sparse.score("magnitude", model), keep="top")
