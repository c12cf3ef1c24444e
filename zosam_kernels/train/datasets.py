"""The data of zosam-train: six datasets behind one load(), and CIFAR-10-C.

Every dataset is map-style and yields (float32 CHW normalised image, int
label), or for mnist1d (float32 (1, 40) signal, int label). Nothing is ever
downloaded: a run on a machine without the data should fail at once with the
files to fetch, not stall on the network; mnist1d is generated.

CIFAR is read here from the official python version rather than through
torchvision.datasets.CIFAR10/100, which check the md5 sums of the full
files: a trimmed copy, or the tiny files the tests write, would be refused.
The batches are pickles, so they are unpickled with an allow-list of the
numpy names a CIFAR batch holds; any other object in a file is an error,
not code that runs.

The random augmentations are torchvision's, which draw from torch's global
generator: a run that saves and restores that generator's state on resume
replays the same crops and flips.
"""
import os
import pickle
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

try:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2
except ImportError as e:
    raise ImportError("zosam_kernels.train needs torchvision: pip install zosam_kernels[train]") from e

from ..data import NUM_CLASSES as SYNTHETIC_CLASSES, SHAPE as SYNTHETIC_SHAPE, synthetic_split
from ..seeds import check_seed, derived_seed

DATASETS = ("synthetic", "digits", "mnist1d", "cifar10", "cifar100", "imagefolder")

SYNTHETIC_SIZES = (5000, 1000)     # (train, test) when no size is given
# (train, validation, test) when no size is given: MNIST-1D's own 4000 training examples, of
# which 1000 are held out, and a test set large enough that a 3-point difference is several
# standard errors (sqrt(p(1 - p)/5000) < 0.71 points)
MNIST1D_SIZES = (3000, 1000, 5000)
MNIST1D_SEED = 0                   # of the generator: one dataset for every run seed
DIGITS_TRAIN = 1437                # of load_digits' 1797 images; the other 360 are the test set
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10C_URL = "https://zenodo.org/records/2535967"

# The official python version of each CIFAR: the folder its archive unpacks
# to, its training files (the first is required, the others read when
# present), its test file, and the key of its labels.
_CIFAR = {
    "cifar10": dict(
        folder="cifar-10-batches-py", train=tuple(f"data_batch_{k}" for k in range(1, 6)),
        test="test_batch", files="data_batch_1..5 and test_batch (data_batch_2..5 may be left out)",
        label_key=b"labels", classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": dict(
        folder="cifar-100-python", train=("train",), test="test", files="train and test",
        label_key=b"fine_labels", classes=100,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}
_CIFAR_PIXELS = 3 * 32 * 32


@dataclass
class Data:
    """A dataset's train and test sets and what a model and a report need to know of them."""
    train: Dataset         # augmented (random per item) unless `augmented` is False
    test: Dataset          # not augmented
    num_classes: int
    image_shape: tuple     # (C, H, W) of the items, or (C, L) of 1-D signals
    mean: tuple            # the per-channel normalisation the items went through
    std: tuple
    augmented: bool = True  # False: a training item is the same at every read
    val: Dataset = None    # a held-out validation split (mnist1d), its labels as noisy as train's


def load(name, data_dir=None, *, train_size=None, test_size=None, val_size=None, label_noise=0.0,
         image_size=224, seed=0):
    """The dataset `name` (one of DATASETS).

    data_dir: the folder holding cifar10, cifar100 or imagefolder data
    (--data-dir); synthetic, digits and mnist1d take none. cifar10 needs
    data_batch_1 and test_batch, and reads whichever of data_batch_2..5 are
    there (a trimmed copy makes a quick run).
    train_size, test_size: keep the first N items (None: all; synthetic and
    mnist1d generate N). val_size: mnist1d's validation examples, generated
    with the others (the other datasets have no validation split).
    label_noise: the fraction of training labels (and of mnist1d's validation
    labels) replaced by a different class, chosen with `seed` (see
    NoisyLabels). image_size: the side of imagefolder's crops. seed:
    synthetic's class templates and the label noise; the other datasets'
    splits are fixed (mnist1d is generated with MNIST1D_SEED whatever the
    seed, so that runs of every seed share one test set).
    """
    if name not in DATASETS:
        raise ValueError(f"--data must be one of {', '.join(DATASETS)}, got {name!r}")
    check_seed(seed)
    if isinstance(label_noise, bool) or not isinstance(label_noise, (int, float)) or not 0 <= label_noise < 1:
        raise ValueError(f"label_noise must be a fraction in [0, 1), got {label_noise!r}")
    for size_name, size in (("train_size", train_size), ("test_size", test_size), ("val_size", val_size)):
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"{size_name} must be None (all) or an int >= 1, got {size!r}")
    if val_size is not None and name != "mnist1d":
        raise ValueError(f"--val-size: --data {name} has no validation split (only mnist1d has)")
    if name in ("synthetic", "digits", "mnist1d"):
        # a --data-dir given to a dataset that reads none is most likely a
        # forgotten --data: better to say so than to train on the wrong data
        if data_dir is not None:
            raise ValueError(f"--data {name} reads no --data-dir (only cifar10, cifar100 and imagefolder "
                             f"do); drop --data-dir {data_dir}, or name the dataset it holds with --data")
    elif data_dir is None:
        raise ValueError(f"--data {name} needs --data-dir (data_dir): the folder holding its files, "
                         "which are never downloaded")

    if name == "synthetic":
        data = _synthetic(train_size or SYNTHETIC_SIZES[0], test_size or SYNTHETIC_SIZES[1], seed)
    elif name == "mnist1d":
        data = _mnist1d(*(given or default for given, default in zip((train_size, val_size, test_size),
                                                                     MNIST1D_SIZES)))
    else:
        if name == "digits":
            data = _digits()
        elif name == "imagefolder":
            data = _imagefolder(data_dir, image_size)
        else:
            data = _cifar(name, data_dir)
        data.train = _first(data.train, train_size, "train_size", "training")
        data.test = _first(data.test, test_size, "test_size", "test")
    if label_noise:
        data.train = NoisyLabels(data.train, data.num_classes, label_noise, seed)
        if data.val is not None:
            # a generator of its own: the training draws with the same seed would pick
            # the same positions of a split of the same size
            data.val = NoisyLabels(data.val, data.num_classes, label_noise, derived_seed(seed, 0, 1))
    return data


def cifar10c(directory, mean, std):
    """CIFAR-10-C's test sets: a list of (corruption, severity, dataset),
    sorted by corruption name, then severity 1..5.

    The official layout: <corruption>.npy, uint8 (5*N, 32, 32, 3) with
    severities 1..5 in consecutive blocks of N, and labels.npy (5*N,); every
    .npy but labels.npy is a corruption. Items are normalised with (mean,
    std), the training set's, as the model expects. The files (19 of 150 MB)
    are memory-mapped, an item read at a time.
    """
    layout = (f"CIFAR-10-C is <corruption>.npy (uint8, 5*N x 32 x 32 x 3, severities 1..5 in blocks of N) "
              f"and labels.npy (5*N labels) in one folder: download CIFAR-10-C.tar from {CIFAR10C_URL} "
              f"and extract it, then pass the CIFAR-10-C folder")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"--cifar10c {directory} is not a directory. {layout}")
    labels_path = os.path.join(directory, "labels.npy")
    if not os.path.isfile(labels_path):
        raise FileNotFoundError(f"no labels.npy in {directory}. {layout}")
    labels = _load_npy(labels_path)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or len(labels) == 0 or len(labels) % 5:
        raise ValueError(f"{labels_path}: expected a non-empty 1-d integer array whose length (5*N) is "
                         f"divisible by 5, got {labels.dtype} of shape {labels.shape}")
    corruptions = sorted(f[:-len(".npy")] for f in os.listdir(directory)
                         if f.endswith(".npy") and f != "labels.npy")
    if not corruptions:
        raise FileNotFoundError(f"no <corruption>.npy besides labels.npy in {directory}. {layout}")
    n = len(labels) // 5
    labels = torch.from_numpy(labels.astype(np.int64))
    transform = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    sets = []
    for corruption in corruptions:
        path = os.path.join(directory, corruption + ".npy")
        images = _load_npy(path, mmap_mode="r")   # reads the header only
        if images.dtype != np.uint8 or images.shape != (len(labels), 32, 32, 3):
            raise ValueError(f"{path}: expected uint8 of shape ({len(labels)}, 32, 32, 3), as many images as "
                             f"labels.npy has labels, got {images.dtype} of shape {images.shape}")
        for severity in range(1, 6):
            block = slice((severity - 1) * n, severity * n)
            sets.append((corruption, severity, _MappedImages(path, block, labels[block], transform)))
    return sets


class NoisyLabels(Dataset):
    """`dataset` with round(fraction * len) of its labels, chosen with a
    generator seeded by `seed`, replaced by a uniformly drawn different class.

    The change is drawn once, as a shift of 1..num_classes-1 added modulo
    num_classes (each other class equally likely): the original labels need
    not be known up front, which for an image folder would mean reading every
    image. shifts is 0 where the label is kept, and `changed` marks the items
    whose label the noise replaced.
    """

    def __init__(self, dataset, num_classes, fraction, seed):
        if num_classes < 2:
            raise ValueError(f"label noise needs at least 2 classes, the dataset has {num_classes}")
        n = len(dataset)
        changed = round(fraction * n)
        g = torch.Generator().manual_seed(seed)
        self.dataset, self.num_classes = dataset, num_classes
        self.shifts = torch.zeros(n, dtype=torch.int64)
        chosen = torch.randperm(n, generator=g)[:changed]
        self.shifts[chosen] = torch.randint(1, num_classes, (changed,), generator=g)

    @property
    def changed(self):
        return self.shifts != 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return x, (y + int(self.shifts[i])) % self.num_classes


class _Images(Dataset):
    """Images (or signals) held in one tensor, labels in another; `transform` runs per item."""

    def __init__(self, images, labels, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i]
        return (x if self.transform is None else self.transform(x)), int(self.labels[i])


class _MappedImages(Dataset):
    """The rows `block` of a (N, 32, 32, 3) uint8 .npy file, read an item at a time."""

    def __init__(self, path, block, labels, transform):
        self.path, self.block, self.labels, self.transform = path, block, labels, transform
        self._images = None

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        # the map is opened on first use, and dropped when pickled (below): a
        # DataLoader worker started by spawn would otherwise receive the
        # whole array, read from disk
        if self._images is None:
            self._images = np.load(self.path, mmap_mode="r")[self.block]
        # copied out of the read-only map, HWC to CHW
        x = torch.from_numpy(np.array(self._images[i])).permute(2, 0, 1)
        return self.transform(x), int(self.labels[i])

    def __getstate__(self):
        return {**self.__dict__, "_images": None}


def _first(dataset, size, size_name, split):
    if size is None:
        return dataset
    if size > len(dataset):
        raise ValueError(f"{size_name}={size} exceeds the {len(dataset)} {split} images there are")
    return Subset(dataset, range(size))


def _synthetic(train_size, test_size, seed):
    # no augmentation and no normalisation: the samples are already
    # template + noise of mean 0, and a random crop would move the template
    train = _Images(*synthetic_split(train_size, seed, "train"))
    test = _Images(*synthetic_split(test_size, seed, "test"))
    channels = SYNTHETIC_SHAPE[0]
    return Data(train, test, SYNTHETIC_CLASSES, SYNTHETIC_SHAPE, (0.0,) * channels, (1.0,) * channels,
                augmented=False)


def _mnist1d(train_size, val_size, test_size):
    """MNIST-1D (Greydanus 2020), made by the mnist1d package's generator with
    its default transformations and MNIST1D_SEED; its download path, which
    fetches a pickle from the web, is never called.

    The generator makes num_samples // 10 examples of each digit, shuffles
    them and splits off the test set at int(train_split * count); it is asked
    for the total rounded up to a multiple of 10, with a split that puts
    train_size + val_size before the cut, the validation examples last. Its
    signals are already standardised (mean 0, std 1 over the whole set).
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise ImportError("--data mnist1d generates MNIST-1D with the mnist1d package: pip install "
                          "mnist1d==0.0.2.post1") from e
    before = train_size + val_size
    count = -(-(before + test_size) // 10) * 10
    args = get_dataset_args()
    args.num_samples, args.seed = count, MNIST1D_SEED
    args.train_split = (before + 0.5) / count       # int(count * split) is `before`, whatever the rounding
    # make_dataset seeds numpy's and Python's global generators: loading data leaves them as they were
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        made = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    x = torch.tensor(made["x"], dtype=torch.float32).unsqueeze(1)              # (N, 1, 40)
    y = torch.tensor(made["y"], dtype=torch.int64)
    x_test = torch.tensor(made["x_test"][:test_size], dtype=torch.float32).unsqueeze(1)
    y_test = torch.tensor(made["y_test"][:test_size], dtype=torch.int64)
    return Data(_Images(x[:train_size], y[:train_size]), _Images(x_test, y_test), 10, tuple(x.shape[1:]),
                (0.0,), (1.0,), augmented=False, val=_Images(x[train_size:], y[train_size:]))


def _digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("--data digits reads scikit-learn's bundled digits: pip install scikit-learn "
                          "(or pip install zosam_kernels[train])") from e
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16    # values 0..16
    # 8x8 to 32x32 gray to RGB: the CIFAR models take the digits unchanged
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    y = torch.tensor(digits.target, dtype=torch.int64)
    # a fixed split, whatever the seed: runs of different seeds are compared on one test set
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:DIGITS_TRAIN], order[DIGITS_TRAIN:]
    mean = tuple(x[train].mean(dim=(0, 2, 3)).tolist())
    std = tuple(x[train].std(dim=(0, 2, 3), correction=0).tolist())
    # crops but no flips: a mirrored 2 or 7 is no digit; the padding is the
    # black background, so it comes before the normalisation
    augment = v2.Compose([v2.RandomCrop(32, padding=4), v2.Normalize(mean, std)])
    return Data(_Images(x[train], y[train], augment), _Images(x[test], y[test], v2.Normalize(mean, std)),
                10, (3, 32, 32), mean, std)


def _cifar(name, data_dir):
    spec = _CIFAR[name]
    folder, required = spec["folder"], (spec["train"][0], spec["test"])
    where = (f"{name} reads the official python version, {folder}/ with {spec['files']}: download "
             f"{spec['url']} and extract it into DIR (tar xzf), then pass --data-dir DIR (or DIR/{folder})")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data-dir {data_dir} is not a directory. {where}")
    # --data-dir may name the folder the archive unpacks to, or its parent
    inner = os.path.join(data_dir, folder)
    directory = inner if os.path.isdir(inner) else data_dir
    missing = [f for f in required if not os.path.isfile(os.path.join(directory, f))]
    if missing:
        looked = directory if directory == inner else f"{directory}, which has no {folder}/ either"
        raise FileNotFoundError(f"no {' and no '.join(missing)} in {looked}. {where}")
    train = [_read_cifar_batch(os.path.join(directory, f), spec["label_key"], spec["classes"])
             for f in spec["train"] if os.path.isfile(os.path.join(directory, f))]
    test = _read_cifar_batch(os.path.join(directory, spec["test"]), spec["label_key"], spec["classes"])
    mean, std = spec["mean"], spec["std"]
    augment = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
                          v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    plain = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    train_images, train_labels = (torch.cat(parts) for parts in zip(*train))
    return Data(_Images(train_images, train_labels, augment), _Images(*test, plain),
                spec["classes"], (3, 32, 32), mean, std)


class _CifarUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR batch holds: numpy arrays (by either name of
    numpy's core module), dtypes, scalars, and the byte strings protocol 2
    encodes through _codecs. Anything else is refused, not imported."""

    ALLOWED = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype")} | {
        (module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch never does")
        return super().find_class(module, name)


def _read_cifar_batch(path, label_key, classes):
    """(uint8 images (N, 3, 32, 32), int64 labels (N,)) of one official batch file."""
    with open(path, "rb") as f:
        try:
            # Python 2 pickles: encoding="bytes" keeps their str keys as bytes
            batch = _CifarUnpickler(f, encoding="bytes").load()
        except Exception as e:  # a damaged pickle fails in many ways (EOFError, KeyError, ...)
            raise ValueError(f"{path} is not a CIFAR batch: unpickling failed "
                             f"({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict):
        raise ValueError(f"{path} is not a CIFAR batch: it holds a {type(batch).__name__}, not a dict")
    missing = [k for k in (b"data", label_key) if k not in batch]
    if missing:
        raise ValueError(f"{path} is not a CIFAR batch with {label_key!r}: it lacks {missing}, "
                         f"its keys are {sorted(map(repr, batch))}")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != _CIFAR_PIXELS or len(data) == 0:
        got = f"{data.dtype} of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: b'data' must be a uint8 array of shape (N, {_CIFAR_PIXELS}), N >= 1, "
                         f"got {got}")
    labels = np.asarray(batch[label_key])
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: {label_key!r} must hold {len(data)} integer labels, one per image, "
                         f"got {labels.dtype} of shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"{path}: {label_key!r} must lie in [0, {classes}), "
                         f"got [{labels.min()}, {labels.max()}]")
    # each row: the R, then G, then B plane, each 32x32 row-major
    return torch.tensor(data.reshape(-1, 3, 32, 32)), torch.tensor(labels, dtype=torch.int64)


def _load_npy(path, mmap_mode=None):
    try:
        return np.load(path, mmap_mode=mmap_mode)
    except (ValueError, EOFError) as e:   # not a .npy, a truncated one, or a pickled object array
        raise ValueError(f"{path} is not a readable .npy array ({e})") from e


def _imagefolder(data_dir, image_size):
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be an int >= 1, got {image_size!r}")
    layout = "imagefolder expects the ImageNet layout: DIR/train/<class>/<image> and DIR/val/<class>/<image>"
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(data_dir, split)):
            raise FileNotFoundError(f"no folder {os.path.join(data_dir, split)}. {layout}")
    # the images become uint8 tensors first: torchvision's tensor kernels are
    # its fast path; ToPureTensor leaves plain tensors, not tv_tensors.Image
    augment = v2.Compose([v2.ToImage(), v2.RandomResizedCrop(image_size), v2.RandomHorizontalFlip(),
                          v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
                          v2.ToPureTensor()])
    # the usual evaluation: resize to image_size / 0.875, then the centre crop
    plain = v2.Compose([v2.ToImage(), v2.Resize(round(image_size / 0.875)), v2.CenterCrop(image_size),
                        v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
                        v2.ToPureTensor()])
    try:
        train = ImageFolder(os.path.join(data_dir, "train"), transform=augment)
        test = ImageFolder(os.path.join(data_dir, "val"), transform=plain)
    except FileNotFoundError as e:   # a split with no class folder, or a class with no image
        raise FileNotFoundError(f"{e} {layout}") from e
    if train.classes != test.classes:
        differ = sorted(set(train.classes) ^ set(test.classes))
        raise ValueError(f"{data_dir}: train/ and val/ must hold the same class folders (the labels are "
                         f"their sorted order); {len(differ)} are in one only: {differ[:10]}")
    return Data(train, test, len(train.classes), (3, image_size, image_size), IMAGENET_MEAN, IMAGENET_STD)
