"""Tiny files in the official layouts of the data zosam-train reads, so that
tests exercise the real readers without the real (GB-sized) downloads.

Each write_* takes the root folder to write under and returns the folder to
pass as --data-dir (or --cifar10c); the content is random but fixed by
`seed`. write_cifar_batch writes one batch of given images, for a test that
needs known pixels.
"""
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def write_cifar_batch(path, images, labels, label_key=b"labels", extra=None):
    """One official CIFAR batch file: a protocol-2 pickle (the official files
    are Python 2's) of a dict with bytes keys, b"data" the uint8 (N, 3072)
    rows of each image's R, G and B 32x32 planes, the labels as a list of
    ints, and the `extra` entries."""
    images = np.asarray(images, dtype=np.uint8)
    batch = {b"batch_label": b"written by tests/train_files.py",
             b"data": images.reshape(len(images), 3 * 32 * 32),
             label_key: [int(y) for y in labels], **(extra or {})}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def _random_images(rng, n, classes):
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, classes, n)


def write_cifar10(root, n_per_batch=4, n_test=4, batches=5, seed=0):
    """cifar-10-batches-py/ with data_batch_1..`batches` and test_batch."""
    directory = Path(root) / "cifar-10-batches-py"
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(1, batches + 1):
        write_cifar_batch(directory / f"data_batch_{k}", *_random_images(rng, n_per_batch, 10))
    write_cifar_batch(directory / "test_batch", *_random_images(rng, n_test, 10))
    return Path(root)


def write_cifar100(root, n_train=8, n_test=4, seed=0):
    """cifar-100-python/ with train and test (fine labels, and coarse ones as the official files have)."""
    directory = Path(root) / "cifar-100-python"
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("test", n_test)):
        images, fine = _random_images(rng, n, 100)
        write_cifar_batch(directory / name, images, fine, label_key=b"fine_labels",
                          extra={b"coarse_labels": [int(y) // 5 for y in fine]})
    return Path(root)


def write_cifar10c(root, n=4, corruptions=("gaussian_noise", "fog"), seed=0):
    """CIFAR-10-C/: <corruption>.npy uint8 (5n, 32, 32, 3), severities 1..5 in
    blocks of n, and labels.npy, the n test labels once per severity."""
    directory = Path(root) / "CIFAR-10-C"
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    np.save(directory / "labels.npy", np.tile(rng.integers(0, 10, n), 5).astype(np.uint8))
    for corruption in corruptions:
        np.save(directory / f"{corruption}.npy", rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8))
    return directory


def write_imagefolder(root, classes=("ant", "bee"), per_class=3, size=40, seed=0):
    """train/<class>/<k>.png and val/<class>/<k>.png: RGB noise, size x size."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for name in classes:
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{k}.png")
    return Path(root)
