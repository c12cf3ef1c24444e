"""Synthetic CIFAR-shaped data: nothing to download, and learnable.

Each of 10 classes has a fixed random 3x32x32 template; a sample is its
class's template plus Gaussian noise of standard deviation 2. The labels of
the first two batches cycle through the classes, so a pruning method that
wants a class-balanced sample (GraSP) finds one at the start.

synthetic_cifar is that endless stream; synthetic_split is a finite train or
test set of the same classes, for a training run that counts epochs and
measures test accuracy.
"""
import torch

from .seeds import derived_seed

NUM_CLASSES = 10
SHAPE = (3, 32, 32)
SPLITS = ("train", "test")


def _templates(seed):
    """The class templates of `seed`, and the generator they were drawn from
    (synthetic_cifar goes on drawing its stream from it)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(NUM_CLASSES, *SHAPE, generator=g), g


def synthetic_cifar(batch_size, seed=0, noise=2.0):
    """An endless stream of (images, labels) batches on the CPU."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    templates, g = _templates(seed)
    step = 0
    while True:
        if step < 2:
            y = (torch.arange(batch_size) + step * batch_size) % NUM_CLASSES
        else:
            y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
        yield templates[y] + noise * torch.randn(batch_size, *SHAPE, generator=g), y
        step += 1


def synthetic_split(n, seed=0, split="train", noise=2.0):
    """(images, labels) of n samples: float32 (n, 3, 32, 32) and int64 (n,).

    Train and test of one seed share the templates (the same task) but not
    the noise, so test accuracy measures generalisation, not memory. Labels
    cycle through the classes, so every prefix is class balanced.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    templates, _ = _templates(seed)
    # each split draws its noise from its own generator, seeded with (seed,
    # split) mixed: the splits' noise is unrelated, and neither depends on
    # how much the other drew
    g = torch.Generator().manual_seed(derived_seed(seed, 0, SPLITS.index(split)))
    y = torch.arange(n) % NUM_CLASSES
    return templates[y] + noise * torch.randn(n, *SHAPE, generator=g), y
