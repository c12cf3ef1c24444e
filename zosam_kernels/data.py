"""Synthetic CIFAR-shaped data: nothing to download, and learnable.

Each of 10 classes has a fixed random 3x32x32 template; a sample is its
class's template plus Gaussian noise of standard deviation 2. The labels of
the first two batches cycle through the classes, so a pruning method that
wants a class-balanced sample (GraSP) finds one at the start.
"""
import torch

NUM_CLASSES = 10
SHAPE = (3, 32, 32)


def synthetic_cifar(batch_size, seed=0, noise=2.0):
    """An endless stream of (images, labels) batches on the CPU."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(NUM_CLASSES, *SHAPE, generator=g)
    step = 0
    while True:
        if step < 2:
            y = (torch.arange(batch_size) + step * batch_size) % NUM_CLASSES
        else:
            y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
        yield templates[y] + noise * torch.randn(batch_size, *SHAPE, generator=g), y
        step += 1
