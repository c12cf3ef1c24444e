"""pytest-benchmark suite for the CPU kernels (not part of `make test`):

    .venv/bin/python -m pytest benchmarks -q --benchmark-columns=median,ops

One group per size; each group holds the memory copy the ops are judged
against and the naive torch version they replace.
"""
import pytest
import torch

from zosam_kernels import ops

SIZES = [10**5, 10**6, 10**7]


@pytest.fixture(params=SIZES, ids=lambda n: f"n={n:.0e}")
def data(request):
    n = request.param
    g = torch.Generator().manual_seed(0)
    return dict(n=n, theta=torch.randn(n, generator=g), other=torch.randn(n, generator=g),
                mask=torch.rand(n, generator=g) < 0.1)


def run(benchmark, data, name, f):
    benchmark.group = f"n={data['n']:.0e}"
    benchmark.name = name
    benchmark(f)


def test_copy_roofline(benchmark, data):
    run(benchmark, data, "copy_", lambda: data["theta"].copy_(data["other"]))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_add_directions(benchmark, data, k):
    seeds, coefs = torch.arange(k), torch.full((k,), 1e-3)
    run(benchmark, data, f"add_directions_ K={k}", lambda: ops.add_directions_(data["theta"], seeds, coefs))


def test_add_directions_masked(benchmark, data):
    seeds, coefs = torch.arange(1), torch.full((1,), 1e-3)
    run(benchmark, data, "add_directions_ K=1 masked",
        lambda: ops.add_directions_(data["theta"], seeds, coefs, data["mask"]))


def test_sq_norm(benchmark, data):
    seeds, coefs = torch.arange(1), torch.ones(1)
    run(benchmark, data, "directions_sq_norm K=1", lambda: ops.directions_sq_norm(seeds, coefs, data["n"]))


def test_naive_torch(benchmark, data):
    c = torch.full((1,), 1e-3)
    run(benchmark, data, "naive randn * c + add_", lambda: data["theta"].add_(torch.randn(data["n"]) * c))
