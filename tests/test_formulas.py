"""optim/formulas.py, the family's pure math, in float64 against closed forms
computed here on one flattened vector."""
import pytest
import torch

from zosam_kernels.optim import formulas


def vectors(seed, shapes=((3, 4), (5,), (2, 2, 2))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


def flat(xs):
    return torch.cat([x.reshape(-1) for x in xs])


def test_dot_norm_and_orthogonal_part():
    xs, ys = vectors(0), vectors(1)
    assert formulas.dot(xs, ys) == pytest.approx(float(flat(xs) @ flat(ys)))
    assert formulas.norm(xs) == pytest.approx(float(flat(xs).norm()))
    perp = flat(formulas.orthogonal_part(xs, ys))
    assert float(perp @ flat(ys)) == pytest.approx(0.0, abs=1e-12)
    parallel = flat(xs) - perp                                   # what was taken off lies along ys
    assert torch.allclose(parallel, (flat(xs) @ flat(ys)) / (flat(ys) @ flat(ys)) * flat(ys))


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_perturbation(adaptive):
    grads, weights = vectors(2), vectors(3)
    rhos = [0.1, 0.3, 0.2]
    eps = formulas.sam_perturbation(grads, weights, rhos, adaptive)
    g, t = flat(grads), flat(weights).abs()
    rho = torch.cat([torch.full((x.numel(),), r, dtype=torch.float64) for x, r in zip(grads, rhos)])
    expected = rho * (t * t * g / (t * g).norm() if adaptive else g / g.norm())
    torch.testing.assert_close(flat(eps), expected, rtol=1e-12, atol=0)
    assert float(flat(formulas.sam_perturbation(grads, weights, [0.1] * 3, False)).norm()) == pytest.approx(0.1)
    zero = formulas.sam_perturbation([torch.zeros(3, dtype=torch.float64)], [torch.ones(3)], [0.1], False)
    assert torch.equal(zero[0], torch.zeros(3, dtype=torch.float64))   # a zero gradient: eps 0, not nan


def test_zo_coefficients_and_perturbation():
    plus = torch.tensor([1.5, 2.0, 0.5], dtype=torch.float64)
    minus = torch.tensor([1.0, 2.5, 0.5], dtype=torch.float64)
    c = formulas.zo_coefficients(plus, minus, 0.25)
    torch.testing.assert_close(c, torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64))
    eps = formulas.zo_perturbation(c, torch.tensor(2.0, dtype=torch.float64), 0.5)
    torch.testing.assert_close(eps, 0.5 * (c / 3) / (2.0 + 1e-12))
    bad = formulas.zo_perturbation(torch.tensor([float("nan"), 1.0]), torch.tensor(1.0), 0.5)
    assert torch.equal(bad, torch.tensor([0.0, 0.25]))


def test_lr_following_radius():
    assert formulas.lr_following_radius(0.1, 0.01, 0.4, 0.0, 0.4) == pytest.approx(0.1)
    assert formulas.lr_following_radius(0.1, 0.01, 0.0, 0.0, 0.4) == pytest.approx(0.01)
    assert formulas.lr_following_radius(0.1, 0.01, 0.1, 0.0, 0.4) == pytest.approx(0.01 + 0.09 / 4)


def test_gsam_update_and_looksam_scale():
    g, g_p = vectors(4), vectors(5)
    update = [t.clone() for t in g_p]
    formulas.gsam_update_(update, g, 0.3)
    a, b = flat(g), flat(g_p)
    perp = a - (a @ b) / (b @ b) * b
    torch.testing.assert_close(flat(update), b - 0.3 * perp, rtol=1e-12, atol=1e-12)
    g_v = vectors(6)
    assert float(formulas.looksam_scale(g, g_v, 0.7)) == pytest.approx(0.7 * float(a.norm() / flat(g_v).norm()))
