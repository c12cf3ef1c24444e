"""The diagnostics against closed forms: a quadratic loss for the Hessian, the
landscape and SAM's step along the gradient, linear regression for the gradient
variance; SAM's step on a small network against autograd in float64; and the
model's state (weights, buffers, modes, RNG) left as it was found."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from zosam_kernels.diagnostics import (gradient_variance, hessian_trace, landscape_1d, landscape_2d,
                                       plot_landscape, random_direction, sam_along_gradient, top_eigenvalue)

SHAPE = (4, 8)   # the quadratic's weight: 2-D, so that the landscape's directions are not 0
N = SHAPE[0] * SHAPE[1]
DUMMY = [(torch.zeros(1), torch.zeros(1))]   # the quadratic ignores its batch


class Quadratic(nn.Module):
    """0.5 (w - w*)^T A (w - w*) in w = vec(weight), weight of shape SHAPE."""

    def __init__(self, A, w_star, w0):
        super().__init__()
        self.weight = nn.Parameter(w0.reshape(SHAPE).clone())
        self.A, self.w_star = A, w_star

    def loss(self, x, y):
        r = self.weight.reshape(-1) - self.w_star
        return 0.5 * r @ (self.A @ r)


def quadratic_loss(model, x, y):
    return model.loss(x, y)


def spd(eigenvalues, seed):
    """float32 A = Q diag(eigenvalues) Q^T with a random orthogonal Q."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    A = q @ np.diag(eigenvalues) @ q.T
    return torch.tensor((A + A.T) / 2, dtype=torch.float32)


def quadratic(seed, A=None):
    rng = np.random.default_rng(seed + 100)
    if A is None:
        # top eigenvalue 20, the others in [0.5, 4]: well separated
        A = spd(np.concatenate([[20.0], rng.uniform(0.5, 4.0, N - 1)]), seed)
    w_star = torch.tensor(rng.standard_normal(N), dtype=torch.float32)
    w0 = torch.tensor(rng.standard_normal(N), dtype=torch.float32)
    return Quadratic(A, w_star, w0)


def half_mask(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < 0.5


# ---------------------------------------------------------------- hessian

def test_top_eigenvalue_of_quadratic_is_max_eig_of_A():
    model = quadratic(0)
    out = top_eigenvalue(model, quadratic_loss, DUMMY)
    expected = float(torch.linalg.eigvalsh(model.A.double()).max())
    assert out["eigenvalue"] == pytest.approx(expected, rel=1e-3)
    assert out["converged"] and out["iterations"] == len(out["history"]) <= 20
    assert out["history"][-1] == out["eigenvalue"]


def test_top_eigenvalue_with_mask_is_max_eig_of_active_submatrix():
    model = quadratic(1)
    mask = half_mask(SHAPE, 1)
    m = mask.reshape(-1)
    expected = float(torch.linalg.eigvalsh(model.A.double()[m][:, m]).max())
    assert expected < float(torch.linalg.eigvalsh(model.A.double()).max()) - 1e-3   # the mask matters
    out = top_eigenvalue(model, quadratic_loss, DUMMY, masks={model.weight: mask}, iters=300, tol=1e-7)
    assert out["eigenvalue"] == pytest.approx(expected, rel=1e-3)


def test_top_eigenvalue_averages_batches_and_reports_largest_magnitude():
    # two "batches" with Hessians A1 and A2: the mean loss has Hessian (A1 + A2) / 2,
    # here with a dominant negative eigenvalue, which power iteration finds
    A1 = spd(np.concatenate([[-30.0], np.linspace(1, 3, N - 1)]), 2)
    A2 = spd(np.linspace(1, 5, N), 3)
    model = quadratic(2, A=A1)

    def loss_fn(model, x, y):
        r = model.weight.reshape(-1) - model.w_star
        return 0.5 * r @ ((A1 if int(x) == 0 else A2) @ r)

    batches = [(torch.tensor(0), torch.zeros(1)), (torch.tensor(1), torch.zeros(1))]
    out = top_eigenvalue(model, loss_fn, batches, iters=300, tol=1e-7)
    eig = torch.linalg.eigvalsh((A1.double() + A2.double()) / 2)
    expected = float(eig[eig.abs().argmax()])
    assert expected < 0 and out["eigenvalue"] == pytest.approx(expected, rel=1e-3)


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    diag = torch.linspace(0.5, 7.0, N)
    model = quadratic(3, A=torch.diag(diag))
    mask = half_mask(SHAPE, 3)
    for masks, expected in [(None, diag), ({model.weight: mask}, diag[mask.reshape(-1)])]:
        out = hessian_trace(model, quadratic_loss, DUMMY, masks=masks, samples=5)
        assert out["trace"] == pytest.approx(math.fsum(expected.double().tolist()), rel=1e-12)
        assert out["std_error"] == 0.0 and out["samples"] == 5


def test_hutchinson_trace_and_std_error_of_a_general_hessian():
    model = quadratic(4)
    mask = half_mask(SHAPE, 4)
    m = mask.reshape(-1)
    Am = model.A.double()[m][:, m]
    samples = 400
    out = hessian_trace(model, quadratic_loss, DUMMY, masks={model.weight: mask}, samples=samples, seed=7)
    # Rademacher: Var(z^T A z) = 2 sum_{i != j} A_ij^2
    true_se = math.sqrt(2 * float((Am ** 2).sum() - (Am.diagonal() ** 2).sum()) / samples)
    assert abs(out["trace"] - float(Am.trace())) < 4 * out["std_error"]
    assert 0.8 < out["std_error"] / true_se < 1.25


def test_hessian_arguments_are_checked():
    model = quadratic(5)
    with pytest.raises(ValueError, match="samples"):
        hessian_trace(model, quadratic_loss, DUMMY, samples=1)
    with pytest.raises(ValueError, match="iters"):
        top_eigenvalue(model, quadratic_loss, DUMMY, iters=0)
    with pytest.raises(ValueError, match="batches"):
        top_eigenvalue(model, quadratic_loss, [])
    with pytest.raises(ValueError, match="no active weight"):
        top_eigenvalue(model, quadratic_loss, DUMMY,
                       masks={model.weight: torch.zeros(SHAPE, dtype=torch.bool)})
    with pytest.raises(ValueError, match="scalar"):
        top_eigenvalue(model, lambda m, x, y: m.weight * 1.0, DUMMY)


# ---------------------------------------------------------------- gradient variance

def regression_loss(model, x, y):
    return 0.5 * ((model(x).squeeze(1) - y) ** 2).mean()


def regression_problem(d=12, K=6, B=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g) + 2.0)   # far from the optimum
    true_w = torch.randn(d, generator=g)
    batches = []
    for _ in range(K):
        x = torch.randn(B, d, generator=g)
        batches.append((x, x @ true_w + 0.5 * torch.randn(B, generator=g)))
    return model, batches


def by_hand(model, batches, active):
    """g_b = mean_i (x_i . w - y_i) x_i in float64 numpy, on the active coordinates."""
    w = model.weight.detach().double().numpy().reshape(-1)
    gs = np.stack([((x.double().numpy() @ w - y.double().numpy())[:, None] * x.double().numpy()).mean(0)
                   for x, y in batches])[:, active]
    mean = gs.mean(0)
    variance = ((gs - mean) ** 2).sum() / (len(gs) - 1)
    return variance, float(mean @ mean)


@pytest.mark.parametrize("masked", [False, True])
def test_gradient_variance_of_linear_regression(masked):
    model, batches = regression_problem(seed=1)
    d = model.weight.shape[1]
    mask = half_mask((1, d), 2) if masked else torch.ones(1, d, dtype=torch.bool)
    out = gradient_variance(model, regression_loss, batches, masks={model.weight: mask} if masked else None)
    variance, mean_sq = by_hand(model, batches, mask.reshape(-1).numpy())
    assert out["variance"] == pytest.approx(variance, rel=1e-5)
    assert out["mean_grad_sq_norm"] == pytest.approx(mean_sq, rel=1e-5)
    assert out["relative_variance"] == pytest.approx(variance / mean_sq, rel=1e-5)
    n_active = int(mask.sum())
    assert out["active_weights"] == n_active
    assert out["variance_per_weight"] == pytest.approx(variance / n_active, rel=1e-5)
    assert (out["batches"], out["batch_size"]) == (len(batches), 16)
    json.dumps(out)


def test_gradient_variance_needs_two_batches():
    model, batches = regression_problem(K=1)
    with pytest.raises(ValueError, match="at least 2"):
        gradient_variance(model, regression_loss, batches)


# ---------------------------------------------------------------- landscape

def closed_form_pieces(model, mask, seed, n_dirs):
    """L(θ), g, A (float64, from the float32 values the model uses) and the
    directions regenerated the way the landscape makes them."""
    gen = torch.Generator().manual_seed(seed)
    masks = {model.weight: mask} if mask is not None else None
    dirs = [random_direction(model, masks, generator=gen)[0].double().reshape(-1) for _ in range(n_dirs)]
    A = model.A.double()
    r = model.weight.detach().double().reshape(-1) - model.w_star.double()
    return float(0.5 * r @ A @ r), A @ r, A, dirs, masks


@pytest.mark.parametrize("masked", [False, True])
def test_landscape_1d_of_quadratic_is_the_parabola(masked):
    model = quadratic(6)
    mask = half_mask(SHAPE, 6) if masked else None
    L0, g, A, (d,), masks = closed_form_pieces(model, mask, seed=3, n_dirs=1)
    out = landscape_1d(model, quadratic_loss, DUMMY, masks=masks, span=0.8, points=9, seed=3)
    assert out["alphas"] == pytest.approx(np.linspace(-0.8, 0.8, 9).tolist()) and out["direction_seed"] == 3
    expected = [L0 + a * float(g @ d) + 0.5 * a * a * float(d @ A @ d) for a in out["alphas"]]
    assert out["losses"] == pytest.approx(expected, rel=1e-4)
    if masked:
        assert not d[~mask.reshape(-1)].any()
    json.dumps(out)


@pytest.mark.parametrize("masked", [False, True])
def test_landscape_2d_of_quadratic_has_the_cross_term(masked):
    model = quadratic(7)
    mask = half_mask(SHAPE, 7) if masked else None
    L0, g, A, (d1, d2), masks = closed_form_pieces(model, mask, seed=5, n_dirs=2)
    out = landscape_2d(model, quadratic_loss, DUMMY, masks=masks, span=0.5, points=5, seed=5)
    assert len(out["losses"]) == 5 and all(len(row) == 5 for row in out["losses"])
    for i, a in enumerate(out["alphas"]):
        for j, b in enumerate(out["betas"]):
            expected = (L0 + a * float(g @ d1) + b * float(g @ d2) + 0.5 * a * a * float(d1 @ A @ d1)
                        + a * b * float(d1 @ A @ d2) + 0.5 * b * b * float(d2 @ A @ d2))
            assert out["losses"][i][j] == pytest.approx(expected, rel=1e-4)
    json.dumps(out)


def test_random_direction_is_filter_normalised_on_the_active_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    conv, lin = model[0], model[2]
    conv_mask, lin_mask = half_mask(conv.weight.shape, 8), half_mask(lin.weight.shape, 9)
    conv_mask[0] = False   # a fully pruned filter stays 0, not 0/0
    masks = {conv.weight: conv_mask, lin.weight: lin_mask}
    d = random_direction(model, masks, generator=torch.Generator().manual_seed(1))
    assert [t.shape for t in d] == [p.shape for p in model.parameters()]
    for t, p, m in [(d[0], conv.weight, conv_mask), (d[2], lin.weight, lin_mask)]:
        assert not t[~m].any()
        assert torch.allclose(t.flatten(1).norm(dim=1), (p.detach() * m).flatten(1).norm(dim=1), rtol=1e-5)
    assert not d[0][0].any() and d[2].abs().sum() > 0
    assert not d[1].any() and not d[3].any()   # biases
    # the same generator state gives the same direction; a different one, another
    again = random_direction(model, masks, generator=torch.Generator().manual_seed(1))
    other = random_direction(model, masks, generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(a, b) for a, b in zip(d, again)) and not torch.equal(d[2], other[2])
    with pytest.raises(TypeError, match="generator"):
        random_direction(model, masks, generator=1)


def test_plot_landscape_writes_pngs(tmp_path):
    model = quadratic(8)
    one = landscape_1d(model, quadratic_loss, DUMMY, points=7)
    two = landscape_2d(model, quadratic_loss, DUMMY, points=5)
    for name, result in [("one.png", one), ("two.png", two)]:
        plot_landscape(result, tmp_path / name, title=name)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="shape"):
        plot_landscape({**two, "losses": two["losses"][:-1]}, tmp_path / "bad.png")


# ---------------------------------------------------------------- SAM's step along the gradient

@pytest.mark.parametrize("masked", [False, True])
def test_sam_along_gradient_of_quadratic_is_closed_form(masked):
    """g = m ⊙ A r (r = w − w*), ∇L(θ + ε) = A (r + ρ g/‖g‖), so <m ⊙ ∇L(θ + ε), g> / ‖g‖²
    = 1 + ρ gᵀAg / ‖g‖³ exactly."""
    model = quadratic(9)
    mask = half_mask(SHAPE, 9) if masked else torch.ones(SHAPE, dtype=torch.bool)
    masks = {model.weight: mask} if masked else None
    A = model.A.double()
    r = model.weight.detach().double().reshape(-1) - model.w_star.double()
    g = (A @ r) * mask.reshape(-1).double()
    weights = model.weight.detach().clone()
    out = sam_along_gradient(model, quadratic_loss, DUMMY * 2, (0.5, 2.0), masks)
    assert out["loss"] == pytest.approx(float(0.5 * r @ A @ r), rel=1e-5)
    assert out["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-5)
    for rho in (0.5, 2.0):
        expected = 1 + rho * float(g @ A @ g) / float(g.norm()) ** 3
        assert expected > 1.01                                      # the curvature term shows
        assert out["along"][rho] == pytest.approx(expected, rel=1e-5)
    assert out["batches"] == 2
    assert torch.equal(model.weight, weights)
    json.dumps(out)


def test_sam_along_gradient_of_a_network_matches_float64_autograd():
    """A tanh network with masks, two batches: each batch's masked g, SAM's θ + ρ g/‖g‖ and the
    gradient there, by autograd on a float64 copy (tests/f64.py); the results are their means."""
    from f64 import Float64Model
    g = torch.Generator().manual_seed(4)
    model = nn.Sequential(nn.Linear(7, 9), nn.Tanh(), nn.Linear(9, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    masks = {p: torch.rand(p.shape, generator=g) < 0.5 for p in model.parameters() if p.dim() > 1}
    with torch.no_grad():
        for p, m in masks.items():
            p.mul_(m)
    x, y = torch.randn(16, 7, generator=g), torch.randint(0, 4, (16,), generator=g)
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    mask = torch.cat([masks.get(p, torch.ones_like(p, dtype=torch.bool)).reshape(-1).double()
                      for p in model.parameters()])
    radii = (0.1, 0.5)
    losses, norms, along = [], [], {rho: [] for rho in radii}
    for xb, yb in batches:
        f = Float64Model(model, xb, yb, F.cross_entropy)
        theta = f.flat()
        grad = f.grad(theta) * mask
        losses.append(float(f.loss(theta)))
        norms.append(float(grad.norm()))
        for rho in radii:
            moved = f.grad(theta + rho * grad / grad.norm()) * mask
            along[rho].append(float(moved @ grad / grad.norm() ** 2))
    weights = [p.detach().clone() for p in model.parameters()]
    out = sam_along_gradient(model, cross_entropy, batches, radii, masks)
    assert out["loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)
    assert out["grad_norm"] == pytest.approx(sum(norms) / 2, rel=1e-5)
    for rho in radii:
        assert out["along"][rho] == pytest.approx(sum(along[rho]) / 2, rel=1e-4)
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))   # bit for bit


def test_sam_along_gradient_needs_a_gradient():
    model = quadratic(10)
    with torch.no_grad():
        model.weight.copy_(model.w_star.reshape(SHAPE))              # the minimum: g = 0
    with pytest.raises(ValueError, match="gradient is 0"):
        sam_along_gradient(model, quadratic_loss, DUMMY, (0.1,))


# ---------------------------------------------------------------- state

class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(self.drop(x.flatten(1)))


def cross_entropy(model, x, y):
    return F.cross_entropy(model(x), y)


@pytest.mark.parametrize("mixed_modes", [False, True])
def test_instruments_leave_the_model_as_found(mixed_modes):
    torch.manual_seed(0)
    model = SmallCNN()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g))
               for _ in range(3)]
    with torch.no_grad():   # running statistics away from their initial values
        model(batches[0][0])
    model.train()
    if mixed_modes:
        model.bn.eval()   # e.g. frozen BatchNorm in a training model
    else:
        model.eval()
    masks = {model.conv.weight: half_mask(model.conv.weight.shape, 2),
             model.fc.weight: half_mask(model.fc.weight.shape, 3)}
    params = [p.detach().clone() for p in model.parameters()]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    runs = [lambda: gradient_variance(model, cross_entropy, batches, masks),
            lambda: top_eigenvalue(model, cross_entropy, batches, masks, iters=3),
            lambda: hessian_trace(model, cross_entropy, batches, masks, samples=2),
            lambda: landscape_1d(model, cross_entropy, batches, masks, points=3),
            lambda: landscape_2d(model, cross_entropy, batches, masks, points=3),
            lambda: sam_along_gradient(model, cross_entropy, batches, (0.1,), masks)]
    for run in runs:
        out = run()
        json.dumps(out)
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
        assert all(p.grad is None for p in model.parameters())
        assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
        assert [m.training for m in model.modules()] == modes
        assert torch.equal(torch.get_rng_state(), rng)
