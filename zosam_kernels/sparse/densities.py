"""How a parameter budget is split across layers.

    uniform   every layer gets the target density
    er        Erdős–Rényi (Mocanu et al. 2018, SET): raw density of an (out, in, ...) weight
              ∝ (out + in) / (out · in); kernel dimensions ignored
    erk       Erdős–Rényi-Kernel (Evci et al. 2020, RigL): raw density ∝ Σ shape / Π shape

For er and erk, density_l = ε · raw_l with ε solved so that Σ density_l n_l equals
density · Σ n_l; a layer whose density would exceed 1 is made dense and ε is solved
again for the others, until none exceeds 1 (as in RigL's public code).

`layer_counts` turns the densities into whole numbers of active weights that
sum to exactly round(density · Σ n_l) (largest remainders get the rounding).
"""
import math

DISTRIBUTIONS = ("uniform", "er", "erk")


def check_density(density, name="density"):
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {density!r}")


def _raw(shape, distribution):
    if distribution == "uniform":
        return 1.0
    dims = shape if distribution == "erk" else shape[:2]
    return sum(dims) / math.prod(dims)


def layer_densities(shapes, density, distribution="erk"):
    """Densities of layers with the given weight shapes (a list of floats in (0, 1])."""
    check_density(density)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    shapes = [tuple(int(d) for d in s) for s in shapes]
    if not shapes or any(len(s) == 0 or math.prod(s) == 0 for s in shapes):
        raise ValueError(f"shapes must be a non-empty list of non-empty weight shapes, got {shapes}")
    if density == 1:
        return [1.0] * len(shapes)
    sizes = [math.prod(s) for s in shapes]
    raw = [_raw(s, distribution) for s in shapes]
    dense = set()
    while True:
        sparse = [i for i in range(len(shapes)) if i not in dense]
        budget = density * sum(sizes) - sum(sizes[i] for i in dense)
        eps = budget / sum(raw[i] * sizes[i] for i in sparse)
        over = {i for i in sparse if eps * raw[i] > 1}
        if not over:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        dense |= over


def layer_counts(shapes, density, distribution="erk"):
    """Active weights per layer: whole numbers summing to exactly round(density · Σ n_l)."""
    densities = layer_densities(shapes, density, distribution)
    sizes = [math.prod(s) for s in shapes]
    ideal = [d * n for d, n in zip(densities, sizes)]
    counts = [min(n, math.floor(x)) for x, n in zip(ideal, sizes)]
    by_remainder = sorted(range(len(sizes)), key=lambda i: ideal[i] - counts[i], reverse=True)
    missing = round(density * sum(sizes)) - sum(counts)
    for i in by_remainder:          # missing is at most the number of layers
        if missing <= 0:
            break
        if counts[i] < sizes[i]:
            counts[i] += 1
            missing -= 1
    return counts
