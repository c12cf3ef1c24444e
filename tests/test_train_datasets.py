"""zosam-train's data: every dataset read from tiny files in the official
layouts (tests/train_files.py), checked against what was written: counts,
labels, pixels through the normalisation, the augmentation, the label noise,
and every error a wrong --data-dir or a damaged file should give."""
import os
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from train_files import (write_cifar10, write_cifar100, write_cifar10c, write_cifar_batch,
                         write_imagefolder)
from zosam_kernels.train.datasets import DATASETS, NoisyLabels, cifar10c, load

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def normalised(pixels, mean, std):
    """uint8 (3, H, W) pixels as the test items should hold them."""
    pixels = torch.as_tensor(np.asarray(pixels), dtype=torch.float32) / 255
    return (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def read_batch(path, label_key=b"labels"):
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    return batch[b"data"].reshape(-1, 3, 32, 32), batch[label_key]


def is_crop(item, originals, flips):
    """Whether `item` is a 32x32 crop of one of `originals` (a stack of images
    shaped like it) zero-padded by 4, or where `flips`, of its mirror image."""
    padded = F.pad(originals, (4, 4, 4, 4))
    return any((p[..., top:top + 32, left:left + 32] - item).abs().flatten(1).amax(1).min() < 1e-4
               for p in ([padded, padded.flip(-1)] if flips else [padded])
               for top in range(9) for left in range(9))


def items(dataset):
    return [dataset[i] for i in range(len(dataset))]


@pytest.fixture(scope="module")
def digits():
    return load("digits")


@pytest.fixture
def cifar10_dir(tmp_path):
    return write_cifar10(tmp_path, n_per_batch=3, n_test=4)


# --- synthetic ---------------------------------------------------------------

def test_synthetic_shares_templates_between_train_and_test_and_draws_new_noise():
    data = load("synthetic", train_size=200, test_size=50, seed=4)
    assert (len(data.train), len(data.test), data.num_classes) == (200, 50, 10)
    assert data.image_shape == (3, 32, 32) and data.mean == (0.0,) * 3 and data.std == (1.0,) * 3
    templates = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    noise = {}
    for split in ("train", "test"):
        xs, ys = zip(*items(getattr(data, split)))
        assert all(isinstance(y, int) for y in ys) and set(ys) == set(range(10))
        noise[split] = torch.stack(xs) - templates[list(ys)]
        assert noise[split].dtype == torch.float32
        assert abs(noise[split].std().item() - 2) < 0.05 and abs(noise[split].mean().item()) < 0.05
    assert not torch.allclose(noise["train"][:50], noise["test"])
    again = load("synthetic", train_size=200, test_size=50, seed=4)
    assert torch.equal(again.train[7][0], data.train[7][0]) and torch.equal(again.test[7][0], data.test[7][0])
    assert not torch.equal(load("synthetic", train_size=10, test_size=10, seed=5).test[0][0], data.test[0][0])


def test_synthetic_default_sizes():
    data = load("synthetic")
    assert (len(data.train), len(data.test)) == (5000, 1000)


# --- digits ------------------------------------------------------------------

def upsampled_digits():
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    return F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)[:, 0], digits.target


def test_digits_split_pixels_and_normalisation(digits):
    assert (len(digits.train), len(digits.test), digits.num_classes) == (1437, 360, 10)
    assert digits.image_shape == (3, 32, 32)
    images, targets = upsampled_digits()
    mean, std = torch.tensor(digits.mean).view(3, 1, 1), torch.tensor(digits.std).view(3, 1, 1)
    test = [(x * std + mean, y) for x, y in items(digits.test)]
    # every test item is one of the 1797 digits, gray in 3 channels, with its label; none twice
    matched = []
    for x, y in test:
        assert torch.allclose(x[0], x[1], atol=1e-5) and torch.allclose(x[0], x[2], atol=1e-5)
        j = int((images - x[0]).abs().amax(dim=(1, 2)).argmin())
        assert torch.allclose(images[j], x[0], atol=1e-5) and targets[j] == y
        matched.append(j)
    assert len(set(matched)) == 360
    # the stored mean and std are the other 1437 (training) images' pixels'
    rest = torch.ones(len(images), dtype=torch.bool)
    rest[matched] = False
    for c in range(3):
        assert digits.mean[c] == pytest.approx(images[rest].mean().item(), abs=1e-5)
        assert digits.std[c] == pytest.approx(images[rest].std(correction=0).item(), abs=1e-5)


def test_digits_split_ignores_the_seed_and_training_items_are_crops_not_flips(digits):
    other = load("digits", seed=9)
    assert torch.equal(other.test[5][0], digits.test[5][0]) and other.test[5][1] == digits.test[5][1]
    images, targets = upsampled_digits()
    mean, std = torch.tensor(digits.mean).view(3, 1, 1), torch.tensor(digits.std).view(3, 1, 1)
    torch.manual_seed(0)
    draws = [digits.train[0] for _ in range(8)]
    label = draws[0][1]
    for x, y in draws:
        assert y == label
        assert is_crop((x * std + mean)[0], images[targets == label], flips=False)
    assert len({tuple(x.flatten().tolist()) for x, _ in draws}) > 1


def test_digits_without_scikit_learn_says_what_to_install(monkeypatch):
    # a None entry in sys.modules makes the import fail
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load("digits")


# --- CIFAR -------------------------------------------------------------------

def test_cifar10_counts_labels_and_parent_or_inner_folder(cifar10_dir):
    data = load("cifar10", cifar10_dir)
    assert (len(data.train), len(data.test), data.num_classes, data.image_shape) == (15, 4, 10, (3, 32, 32))
    assert (data.mean, data.std) == (CIFAR10_MEAN, CIFAR10_STD)
    inner = cifar10_dir / "cifar-10-batches-py"
    train_labels = sum((read_batch(inner / f"data_batch_{k}")[1] for k in range(1, 6)), [])
    assert [y for _, y in items(data.train)] == train_labels
    images, labels = read_batch(inner / "test_batch")
    for (x, y), image, label in zip(items(data.test), images, labels):
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and y == label
        assert torch.allclose(x, normalised(image, CIFAR10_MEAN, CIFAR10_STD), atol=1e-5)
    from_inner = load("cifar10", str(inner))
    assert len(from_inner.train) == 15 and torch.equal(from_inner.test[3][0], data.test[3][0])


def test_cifar10_planes_are_red_green_blue_and_rows_major(cifar10_dir):
    image = np.zeros((3, 32, 32), np.uint8)
    image[0], image[1], image[2] = 10, 20, 30
    image[0, 1, 2] = 200     # R, row 1, column 2
    image[2, 31, 0] = 250    # B, last row, first column
    write_cifar_batch(cifar10_dir / "cifar-10-batches-py" / "test_batch", image[None], [7])
    x, y = load("cifar10", cifar10_dir).test[0]
    assert y == 7

    def pixel(v, c):
        return pytest.approx((v / 255 - CIFAR10_MEAN[c]) / CIFAR10_STD[c], abs=1e-5)
    assert [x[c, 0, 0].item() for c in range(3)] == [pixel(10, 0), pixel(20, 1), pixel(30, 2)]
    assert x[0, 1, 2].item() == pixel(200, 0) and x[0, 2, 1].item() == pixel(10, 0)
    assert x[2, 31, 0].item() == pixel(250, 2) and x[2, 0, 31].item() == pixel(30, 2)


def test_cifar10_reads_the_batches_there_are(tmp_path):
    data = load("cifar10", write_cifar10(tmp_path, n_per_batch=5, n_test=2, batches=2))
    assert (len(data.train), len(data.test)) == (10, 2)


def test_cifar100_fine_labels_pixels_and_constants(tmp_path):
    root = write_cifar100(tmp_path, n_train=6, n_test=3, seed=2)
    data = load("cifar100", root)
    assert (len(data.train), len(data.test), data.num_classes) == (6, 3, 100)
    assert (data.mean, data.std) == (CIFAR100_MEAN, CIFAR100_STD)
    inner = root / "cifar-100-python"
    assert [y for _, y in items(data.train)] == read_batch(inner / "train", b"fine_labels")[1]
    images, labels = read_batch(inner / "test", b"fine_labels")
    assert [y for _, y in items(data.test)] == labels
    assert torch.allclose(data.test[2][0], normalised(images[2], CIFAR100_MEAN, CIFAR100_STD), atol=1e-5)
    assert len(load("cifar100", inner).train) == 6


def test_cifar_augmentation_is_a_padded_crop_or_its_mirror_and_follows_torch_seed(cifar10_dir):
    data = load("cifar10", cifar10_dir)
    original = torch.from_numpy(read_batch(cifar10_dir / "cifar-10-batches-py" / "data_batch_1")[0][1].copy())
    torch.manual_seed(3)
    draws = [data.train[1][0] for _ in range(6)]
    torch.manual_seed(3)
    assert all(torch.equal(a, data.train[1][0]) for a in draws)
    assert len({tuple(x.flatten().tolist()) for x in draws}) > 1
    mean, std = torch.tensor(CIFAR10_MEAN).view(3, 1, 1), torch.tensor(CIFAR10_STD).view(3, 1, 1)
    for x in draws:
        assert is_crop(x * std + mean, original[None].float() / 255, flips=True)


def test_sizes_keep_the_first_items(cifar10_dir):
    full = load("cifar10", cifar10_dir)
    part = load("cifar10", cifar10_dir, train_size=4, test_size=2)
    assert (len(part.train), len(part.test)) == (4, 2)
    assert [y for _, y in items(part.train)] == [full.train[i][1] for i in range(4)]
    assert torch.equal(part.test[1][0], full.test[1][0])
    with pytest.raises(ValueError, match="train_size=16 exceeds the 15"):
        load("cifar10", cifar10_dir, train_size=16)
    with pytest.raises(ValueError, match="test_size=5 exceeds the 4"):
        load("cifar10", cifar10_dir, test_size=5)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="train_size must be"):
            load("cifar10", cifar10_dir, train_size=bad)


# --- label noise -------------------------------------------------------------

def test_label_noise_changes_exactly_its_share_of_training_labels_only(tmp_path):
    root = write_cifar10(tmp_path, n_per_batch=20, n_test=10)
    clean = load("cifar10", root)
    noisy = load("cifar10", root, label_noise=0.3, seed=1)
    assert isinstance(noisy.train, NoisyLabels) and len(noisy.train) == 100
    before, after = [y for _, y in items(clean.train)], [y for _, y in items(noisy.train)]
    changed = [i for i in range(100) if before[i] != after[i]]
    assert len(changed) == 30 and all(0 <= y < 10 for y in after)
    assert changed == noisy.train.shifts.nonzero().flatten().tolist()
    assert [y for _, y in items(noisy.test)] == [y for _, y in items(clean.test)]
    assert [y for _, y in items(load("cifar10", root, label_noise=0.3, seed=1).train)] == after
    assert [y for _, y in items(load("cifar10", root, label_noise=0.3, seed=2).train)] != after
    # applied after train_size: a share of the kept items
    assert int((load("cifar10", root, train_size=10, label_noise=0.3).train.shifts != 0).sum()) == 3


def test_label_noise_draws_every_other_class_alike():
    clean = load("synthetic", train_size=1800, test_size=10)
    noisy = load("synthetic", train_size=1800, test_size=10, label_noise=0.5)
    shifts = torch.tensor([(b[1] - a[1]) % 10 for a, b in zip(items(clean.train), items(noisy.train))])
    counts = shifts.bincount(minlength=10)
    assert counts[0] == 900 and counts[1:].sum() == 900 and counts[1:].min() > 60   # 100 expected each


def test_label_noise_must_be_a_fraction_below_one():
    for bad in (1.0, -0.1, "0.2", True):
        with pytest.raises(ValueError, match="label_noise"):
            load("synthetic", train_size=10, test_size=10, label_noise=bad)


# --- imagefolder -------------------------------------------------------------

def test_imagefolder_counts_classes_shapes_and_augmentation(tmp_path):
    data = load("imagefolder", write_imagefolder(tmp_path), image_size=32)
    assert (len(data.train), len(data.test), data.num_classes, data.image_shape) == (6, 6, 2, (3, 32, 32))
    assert (data.mean, data.std) == (IMAGENET_MEAN, IMAGENET_STD)
    for split in (data.train, data.test):
        assert [y for _, y in items(split)] == [0, 0, 0, 1, 1, 1]
        assert all(type(x) is torch.Tensor and x.dtype == torch.float32 and x.shape == (3, 32, 32)
                   for x, _ in items(split))
    torch.manual_seed(0)
    draws = [data.train[0][0] for _ in range(4)]
    torch.manual_seed(0)
    assert all(torch.equal(a, data.train[0][0]) for a in draws)
    assert not torch.equal(draws[0], draws[1])
    assert torch.equal(data.test[0][0], data.test[0][0])


def test_imagefolder_eval_pixels_are_normalised_with_imagenet_constants(tmp_path):
    root = write_imagefolder(tmp_path, per_class=1)
    Image.new("RGB", (40, 50), (200, 100, 50)).save(root / "val" / "ant" / "0.png")
    x, y = load("imagefolder", root, image_size=24).test[0]
    assert y == 0 and x.shape == (3, 24, 24)
    expected = normalised(np.array([200, 100, 50], np.uint8).reshape(3, 1, 1), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.allclose(x, expected.expand(3, 24, 24), atol=1.01 / 255 / 0.224)
    # the crop is image_size of the image resized to image_size / 0.875 =
    # 27: a black square filling the middle 24 of 48 white pixels shrinks to
    # 13.5, leaving white corners (a crop without the resize would be black)
    square = np.full((48, 48, 3), 255, np.uint8)
    square[12:36, 12:36] = 0
    Image.fromarray(square).save(root / "val" / "bee" / "0.png")
    x, y = load("imagefolder", root, image_size=24).test[1]
    gray = (x * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)).mean(0)
    assert y == 1 and gray[12, 12] < 0.01 and gray[0, 0] > 0.99 and gray[23, 23] > 0.99
    # resized, the square spans 6.75 to 20.25 of 27; cropped, from about 5
    assert gray[12, 3] > 0.99 and gray[12, 6] < 0.01


def test_imagefolder_errors(tmp_path):
    root = write_imagefolder(tmp_path, per_class=1)
    shutil.rmtree(root / "val")
    with pytest.raises(FileNotFoundError, match=r"no folder .*val\. .*ImageNet layout"):
        load("imagefolder", root)
    write_imagefolder(tmp_path, per_class=1)
    (root / "val" / "cat").mkdir()
    with pytest.raises(FileNotFoundError, match="cat.*ImageNet layout"):
        load("imagefolder", root)
    Image.new("RGB", (8, 8)).save(root / "val" / "cat" / "0.png")
    with pytest.raises(ValueError, match=r"same class folders.*\['cat'\]"):
        load("imagefolder", root)
    with pytest.raises(ValueError, match="image_size"):
        load("imagefolder", root, image_size=0)


# --- CIFAR-10-C --------------------------------------------------------------

def test_cifar10c_order_severity_blocks_and_normalisation(tmp_path):
    directory = write_cifar10c(tmp_path, n=3, corruptions=("gaussian_noise", "fog"))
    sets = cifar10c(str(directory), CIFAR10_MEAN, CIFAR10_STD)
    assert [(c, s) for c, s, _ in sets] == [(c, s) for c in ("fog", "gaussian_noise") for s in range(1, 6)]
    labels = np.load(directory / "labels.npy")
    for corruption, severity, dataset in sets:
        images = np.load(directory / f"{corruption}.npy")
        assert len(dataset) == 3
        for i, (x, y) in enumerate(items(dataset)):
            row = (severity - 1) * 3 + i
            assert y == labels[row] and isinstance(y, int)
            expected = normalised(images[row].transpose(2, 0, 1), CIFAR10_MEAN, CIFAR10_STD)
            assert torch.allclose(x, expected, atol=1e-5)


def test_cifar10c_datasets_pickle_without_their_images(tmp_path):
    # a DataLoader worker started by spawn receives the dataset pickled: it
    # should reopen the memory map, not carry a copy of the block
    directory = write_cifar10c(tmp_path, n=40, corruptions=("fog",))
    _, _, dataset = cifar10c(directory, CIFAR10_MEAN, CIFAR10_STD)[3]
    first = dataset[0]
    copy = pickle.loads(pickle.dumps(dataset))
    assert len(pickle.dumps(dataset)) < 40 * 3072 // 2
    assert torch.equal(copy[0][0], first[0]) and copy[0][1] == first[1]


def test_cifar10c_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory.*labels.npy.*zenodo"):
        cifar10c(tmp_path / "nowhere", CIFAR10_MEAN, CIFAR10_STD)
    directory = write_cifar10c(tmp_path, n=2, corruptions=("fog",))
    (directory / "fog.npy").rename(directory / "fog.bak")
    with pytest.raises(FileNotFoundError, match="no <corruption>.npy"):
        cifar10c(directory, CIFAR10_MEAN, CIFAR10_STD)
    np.save(directory / "fog.npy", np.zeros((9, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"fog.npy: expected uint8 of shape \(10, 32, 32, 3\)"):
        cifar10c(directory, CIFAR10_MEAN, CIFAR10_STD)
    np.save(directory / "fog.npy", np.zeros((10, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="fog.npy: expected uint8"):
        cifar10c(directory, CIFAR10_MEAN, CIFAR10_STD)
    (directory / "fog.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match="fog.npy is not a readable .npy"):
        cifar10c(directory, CIFAR10_MEAN, CIFAR10_STD)
    np.save(directory / "labels.npy", np.zeros(9, np.int64))
    with pytest.raises(ValueError, match="labels.npy: .*divisible by 5"):
        cifar10c(directory, CIFAR10_MEAN, CIFAR10_STD)
    (directory / "labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match="no labels.npy"):
        cifar10c(directory, CIFAR10_MEAN, CIFAR10_STD)


# --- errors ------------------------------------------------------------------

def test_dataset_names_and_data_dir_requirements(tmp_path):
    assert DATASETS == ("synthetic", "digits", "mnist1d", "cifar10", "cifar100", "imagefolder")
    with pytest.raises(ValueError, match="--data must be one of"):
        load("mnist")
    for name in ("cifar10", "cifar100", "imagefolder"):
        with pytest.raises(ValueError, match="needs --data-dir"):
            load(name)
    with pytest.raises(ValueError, match="reads no --data-dir"):
        load("synthetic", tmp_path)


def test_missing_cifar_files_say_what_to_fetch(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory.*cifar-10-python.tar.gz.*extract it into"):
        load("cifar10", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no data_batch_1 and no test_batch in .*which has no "
                                                "cifar-10-batches-py/ either.*cifar-10-python.tar.gz"):
        load("cifar10", tmp_path)
    write_cifar10(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_1")
    with pytest.raises(FileNotFoundError, match=r"no data_batch_1 in .*cifar-10-batches-py\. "):
        load("cifar10", tmp_path)
    write_cifar100(tmp_path)
    os.remove(tmp_path / "cifar-100-python" / "test")
    with pytest.raises(FileNotFoundError, match="no test in .*cifar-100-python.tar.gz"):
        load("cifar100", tmp_path)


def batch(data, labels):
    return pickle.dumps({b"data": data, b"labels": labels}, protocol=2)


@pytest.mark.parametrize("content, error", [
    (b"\x80\x02 not a pickle", "unpickling failed"),
    (pickle.dumps([1, 2], protocol=2), "holds a list, not a dict"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, protocol=2), r"lacks \[b'labels'\]"),
    (batch(np.zeros((2, 3000), np.uint8), [0, 1]), r"shape \(N, 3072\)"),
    (batch(np.zeros((2, 3072), np.int16), [0, 1]), "must be a uint8"),
    (batch(np.zeros((2, 3072), np.uint8), [0]), "must hold 2 integer labels"),
    (batch(np.zeros((2, 3072), np.uint8), [0, 10]), r"in \[0, 10\)"),
    (batch(os.getcwd, [0]), "refers to .*getcwd"),     # no other object is built, let alone called
])
def test_malformed_cifar_batches_name_the_file_and_the_fault(cifar10_dir, content, error):
    path = cifar10_dir / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"data_batch_3.*{error}"):
        load("cifar10", cifar10_dir)
