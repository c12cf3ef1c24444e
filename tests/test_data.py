"""The synthetic data: CIFAR shapes, balanced first batches, a seeded stream."""
import pytest
import torch

from zosam_kernels.data import synthetic_cifar


def test_synthetic_cifar_shapes_balance_and_seed():
    stream = synthetic_cifar(12, seed=3)
    batches = [next(stream) for _ in range(3)]
    for x, y in batches:
        assert x.shape == (12, 3, 32, 32) and x.dtype == torch.float32
        assert y.shape == (12,) and y.dtype == torch.int64 and 0 <= y.min() and y.max() < 10
    assert torch.equal(torch.cat([batches[0][1], batches[1][1]]), torch.arange(24) % 10)
    again = synthetic_cifar(12, seed=3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, [next(again) for _ in range(3)]))
    # samples of one class share their template: closer to each other than to another class
    x, y = batches[0]
    same = (x[0] - x[10]).norm()      # both class 0
    other = (x[0] - x[1]).norm()      # class 0 against class 1
    assert same < other


def test_synthetic_cifar_rejects_a_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        next(synthetic_cifar(0))
