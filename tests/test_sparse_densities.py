"""Layer densities: the ER/ERK formulas, the re-solve for layers that would exceed 1, exact budgets."""
import math

import pytest
import torch

from zosam_kernels.sparse import layer_counts, layer_densities


def random_shapes(seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    shapes = [(r(4, 64), 3, 3, 3)]                                  # a small first conv
    shapes += [(r(8, 128), r(8, 128), k, k) for k in (1, 3, 3, 5)]
    shapes += [(r(2, 20), r(16, 256))]                               # a linear head
    return shapes


def raw(shape, distribution):
    """The raw densities, written from the papers' definitions."""
    if distribution == "erk":
        return sum(shape) / math.prod(shape)
    n_out, n_in = shape[0], shape[1]
    return (n_out + n_in) / (n_out * n_in)


@pytest.mark.parametrize("distribution", ["er", "erk"])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("density", [0.02, 0.1, 0.5, 0.9])
def test_er_erk_follow_the_formula_with_an_exact_budget(distribution, seed, density):
    shapes = random_shapes(seed)
    d = layer_densities(shapes, density, distribution)
    sizes = [math.prod(s) for s in shapes]
    assert sum(di * n for di, n in zip(d, sizes)) == pytest.approx(density * sum(sizes), rel=1e-12)
    assert all(0 < di <= 1 for di in d)
    sparse = [i for i, di in enumerate(d) if di < 1]
    eps = {d[i] / raw(shapes[i], distribution) for i in sparse}
    assert max(eps) == pytest.approx(min(eps), rel=1e-12)      # one ε for every sparse layer
    eps = eps.pop() if sparse else math.inf
    for i, di in enumerate(d):
        if di == 1:                                             # dense only where ε·raw reaches 1
            assert eps * raw(shapes[i], distribution) >= 1 - 1e-12
    counts = layer_counts(shapes, density, distribution)
    assert sum(counts) == round(density * sum(sizes))
    assert all(abs(c - di * n) < 1 for c, di, n in zip(counts, d, sizes))


def test_erk_resolves_after_making_layers_dense():
    shapes = [(4, 3, 3, 3), (256, 256, 3, 3), (10, 256), (128, 256, 3, 3)]
    d = layer_densities(shapes, 0.3, "erk")
    sizes = [math.prod(s) for s in shapes]
    # the first conv and the head would need ε·raw far above 1; the two big convs share
    # what is left of the budget with one ε
    assert d[0] == 1.0 and d[2] == 1.0
    eps = (0.3 * sum(sizes) - sizes[0] - sizes[2]) / (raw(shapes[1], "erk") * sizes[1]
                                                       + raw(shapes[3], "erk") * sizes[3])
    assert d[1] == pytest.approx(eps * raw(shapes[1], "erk"), rel=1e-12)
    assert d[3] == pytest.approx(eps * raw(shapes[3], "erk"), rel=1e-12)


def test_uniform_and_full_density():
    shapes = random_shapes(7)
    assert layer_densities(shapes, 0.25, "uniform") == [0.25] * len(shapes)
    assert layer_densities(shapes, 1.0, "erk") == [1.0] * len(shapes)
    assert layer_counts(shapes, 1.0, "erk") == [math.prod(s) for s in shapes]


@pytest.mark.parametrize("density", [0, -0.1, 1.5, "0.5", True, float("nan")])
def test_invalid_density(density):
    with pytest.raises(ValueError, match="density"):
        layer_densities([(3, 3)], density)


def test_invalid_distribution_and_shapes():
    with pytest.raises(ValueError, match="distribution"):
        layer_densities([(3, 3)], 0.5, "gaussian")
    with pytest.raises(ValueError, match="shapes"):
        layer_densities([], 0.5)
