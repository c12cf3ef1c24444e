"""The ascent probe against cases with a known answer: SAM's ε is the
normalised gradient (cosine 1); ZO-SAM with one direction in one dimension is
±ρ, and the finite difference's sign makes it the ascent (cosine 1); in d
dimensions the cosine of one direction has mean √(2/(πd)) for a linear loss.
On a quadratic, in float64, the loss rise and the priors' cosines against the
closed form of two SAM steps."""
import math

import pytest
import torch
from torch import nn

import zosam_kernels as zk
from zosam_kernels.diagnostics.ascent import step_with_ascent_probe


class Linear(nn.Module):
    """L(w) = a·w (+ a BatchNorm-free model whose gradient is known: a)."""

    def __init__(self, d, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(d, generator=g))
        self.a = torch.randn(d, generator=g)

    def forward(self):
        return self.a @ self.w


def make_sam(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
    return model, zk.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, common_random_numbers=True)


def test_sam_aims_along_the_gradient_and_the_probe_changes_nothing():
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    probed, opt = make_sam(0)
    plain, plain_opt = make_sam(0)
    torch.manual_seed(5)
    cos = step_with_ascent_probe(opt, lambda: nn.functional.cross_entropy(probed(x), y), probed)[1]["cosine"]
    after = torch.rand(1)
    torch.manual_seed(5)
    plain_opt.step(lambda: nn.functional.cross_entropy(plain(x), y))
    # common random numbers: the extra pass drew the step's dropout masks, so ε is along it
    assert cos == pytest.approx(1.0, abs=1e-5)
    # the probed step is the plain step: weights, running statistics, and the generator after it
    for a, b in zip(probed.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(after, torch.rand(1))


def test_zosam_one_direction_in_one_dimension_is_the_ascent():
    model = Linear(1, seed=3)
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, rho=0.05, delta=1e-3, lr=0.1)
    cos = step_with_ascent_probe(opt, model, model)[1]["cosine"]
    assert cos == pytest.approx(1.0, abs=1e-6)


def test_zosam_one_direction_in_d_dimensions_has_the_closed_form_mean():
    d, steps = 200, 300
    model = Linear(d, seed=1)
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, rho=0.05, delta=1e-3, lr=0.0)
    cosines = [step_with_ascent_probe(opt, model, model)[1]["cosine"] for _ in range(steps)]
    mean = sum(cosines) / steps
    # |cos| of a random direction: mean √(2/(πd)); its std about 1/√d, so the mean's about 1/√(d·steps)
    assert mean == pytest.approx(math.sqrt(2 / (math.pi * d)), abs=4 / math.sqrt(d * steps))
    assert all(c > 0 for c in cosines)      # the sign of the difference picks the ascent half


def test_masked_weights_do_not_count():
    model = Linear(4, seed=2)
    mask = torch.tensor([True, True, False, False])
    with torch.no_grad():
        model.w[~mask] = 0
    opt = zk.SAM(model.parameters(), torch.optim.SGD, rho=0.05, masks={model.w: mask}, lr=0.1)
    cos = step_with_ascent_probe(opt, model, model, masks={model.w: mask})[1]["cosine"]
    assert cos == pytest.approx(1.0, abs=1e-6)


class Quadratic(nn.Module):
    """L(w) = ½ (w − c)ᵀ A (w − c), A symmetric positive definite, in float64."""

    def __init__(self, d, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(d, d, generator=g, dtype=torch.float64)
        self.A = q @ q.T / d + torch.eye(d, dtype=torch.float64)
        self.c = torch.randn(d, generator=g, dtype=torch.float64)
        self.w = nn.Parameter(torch.randn(d, generator=g, dtype=torch.float64))

    def forward(self):
        r = self.w - self.c
        return 0.5 * r @ self.A @ r


def test_loss_rise_and_priors_against_two_sam_steps_in_closed_form():
    rho, lr = 0.3, 0.1
    model = Quadratic(7, seed=4)
    A, c, w0 = model.A, model.c, model.w.detach().clone()
    opt = zk.SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr, momentum=0.9)
    _, first = step_with_ascent_probe(opt, model, model)
    _, second = step_with_ascent_probe(opt, model, model)
    _, third = step_with_ascent_probe(opt, model, model)

    def grad(w):
        return A @ (w - c)

    def loss(w):
        return float(0.5 * (w - c) @ A @ (w - c))

    def cos(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    g0 = grad(w0)
    eps0 = rho * g0 / g0.norm()
    update0 = grad(w0 + eps0)            # the first step's momentum buffer and .grad
    w1 = w0 - lr * update0
    g1 = grad(w1)
    eps1 = rho * g1 / g1.norm()
    assert first["alpha_momentum"] is None and first["alpha_gradient"] is None   # no prior yet
    assert first["loss_rise"] == pytest.approx(loss(w0 + eps0) - loss(w0), rel=1e-10)
    assert second["loss_rise"] == pytest.approx(loss(w1 + eps1) - loss(w1), rel=1e-10)
    assert first["grad_norm"] == pytest.approx(float(g0.norm()), rel=1e-12)
    assert second["grad_norm"] == pytest.approx(float(g1.norm()), rel=1e-12)
    assert second["alpha_momentum"] == pytest.approx(cos(update0, g1), abs=1e-12)
    assert second["alpha_gradient"] == pytest.approx(cos(update0, g1), abs=1e-12)
    assert second["cosine"] == pytest.approx(1.0, abs=1e-12)
    update1 = grad(w1 + eps1)            # now the buffer is 0.9 update0 + update1, .grad update1
    w2 = w1 - lr * (0.9 * update0 + update1)
    g2 = grad(w2)
    assert third["alpha_momentum"] == pytest.approx(cos(0.9 * update0 + update1, g2), abs=1e-12)
    assert third["alpha_gradient"] == pytest.approx(cos(update1, g2), abs=1e-12)
    assert cos(0.9 * update0 + update1, g2) != pytest.approx(cos(update1, g2), abs=1e-6)


@pytest.mark.parametrize("member,cosine_is_one", [("sam-partial", False), ("rwp", False), ("sam", True)])
def test_the_probe_reads_the_partial_and_noise_ascents(member, cosine_is_one):
    """The probe sees the last draw's noise of RWP (on its part of the batch) and a partial
    ascent's eps on its tensors; only a whole-model SAM aims exactly along the gradient."""
    from zosam_kernels.diagnostics.ascent import step_with_ascent_probe
    from zosam_kernels.recipes import make_optimizer
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))

    def closure(indices=None):
        i = slice(None) if indices is None else indices
        return torch.nn.functional.cross_entropy(model(x[i]), y[i], reduction="none")

    options = dict(rho=0.05) if member == "rwp" else dict(model=model) if member == "sam-partial" else {}
    opt = make_optimizer(member, model.parameters(), torch.optim.SGD, dict(lr=0.1), **options)
    cos = step_with_ascent_probe(opt, closure, model)[1]["cosine"]
    assert -1 <= cos <= 1 and (abs(cos - 1) < 1e-5) == cosine_is_one
