"""CIFAR-10-C corruptions in torch: robustness measured without the released files.

CIFAR-10-C (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness
to Common Corruptions and Perturbations", ICLR 2019) is CIFAR-10's test set
run through 19 corruptions at 5 severities and saved as uint8. The files are
only CIFAR-10's; this module re-implements the corruptions that are fully
specified by numpy/skimage/scipy arithmetic, so any test set (CIFAR-100, a
subset, synthetic data) can be corrupted the same way, reproducibly, from a
torch.Generator. The corruptions that need ImageMagick, OpenCV's filters or
image files (motion/defocus/glass/zoom blur, snow, frost, fog, spatter,
elastic, pixelate, JPEG) are left out rather than approximated.

Each corruption follows make_cifar_c.py of the release
(github.com/hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py), in
pixel space [0, 1]:

  gaussian_noise  x + N(0, c^2)
  shot_noise      Poisson(x * c) / c
  impulse_noise   skimage's random_noise(mode='s&p', amount=c): each of the
                  3*H*W values (per value, not per pixel) independently
                  becomes 0 or 1 with probability c, salt and pepper equally
                  likely (skimage >= 0.13's per-value Bernoulli draw)
  speckle_noise   x + x * N(0, c^2)
  gaussian_blur   skimage's gaussian(sigma=c, multichannel=True): a Gaussian
                  of standard deviation c pixels over H and W, none across
                  channels, truncated at 4 sigma, edges extended ('nearest')
  contrast        (x - m) * c + m, m the mean over H and W of each channel of
                  the image (np.mean(x, axis=(0, 1)) of an H x W x 3 array)
  brightness      in HSV (skimage's rgb2hsv/hsv2rgb), V <- clip(V + c, 0, 1)

then clipped to [0, 1] and quantised as the release saved it: np.uint8 of
x * 255, which truncates, so the output is floor(255 x) / 255. Random draws
differ from numpy's, so results match the release in distribution, not bit
for bit; the deterministic corruptions (contrast, brightness, gaussian_blur)
match it value for value on uint8 inputs.

The severity parameters are CIFAR-10-C's, which are milder than
ImageNet-C's: CIFAR images are 32 x 32, and the blur's sigma is in pixels,
so on larger images gaussian_blur is relatively weaker than intended.
"""
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..seeds import check_seed, derived_seed

# Values within this distance outside [0, 1] are float rounding (of
# un-normalising, or of k/255 in float32) and are clipped; anything further
# out means the images were not un-normalised.
RANGE_TOLERANCE = 1e-5
# np.uint8 truncates; a float32 k/255 times 255 can land a hair below k, and
# truncation would then drop a whole level, so a value this close below a
# level (in levels) counts as reaching it.
_LEVEL_SLACK = 1e-4


def _normal(x, generator):
    # drawn where the generator lives (a CPU generator cannot fill a CUDA
    # tensor), then moved to the images
    return torch.randn(x.shape, generator=generator, dtype=x.dtype,
                       device=generator.device).to(x.device)


def _uniform(x, generator):
    return torch.rand(x.shape, generator=generator, dtype=x.dtype,
                      device=generator.device).to(x.device)


def gaussian_noise(x, c, generator):
    """x + N(0, c^2), per value."""
    return x + c * _normal(x, generator)


def shot_noise(x, c, generator):
    """Poisson(x * c) / c: photon counts of an exposure of c photons at full scale."""
    rate = (x * c).to(generator.device)
    return torch.poisson(rate, generator=generator).to(x.device) / c


def impulse_noise(x, c, generator):
    """Salt and pepper: each value independently set, with probability c, to 0 or 1 (equally likely)."""
    flipped = _uniform(x, generator) < c
    salt = _uniform(x, generator) < 0.5
    return torch.where(flipped, salt.to(x.dtype), x)


def speckle_noise(x, c, generator):
    """x + x * N(0, c^2): noise proportional to the intensity."""
    return x + x * c * _normal(x, generator)


def gaussian_blur(x, c, generator):
    """A Gaussian blur of c pixels over H and W, as scipy.ndimage.gaussian_filter
    with mode='nearest' and truncate=4 (what skimage's gaussian calls)."""
    radius = int(4.0 * c + 0.5)   # scipy's kernel radius: int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / c) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    # separable: along W, then along H; 'replicate' padding is scipy's 'nearest'
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"),
                 kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"),
                    kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def contrast(x, c, generator):
    """(x - m) * c + m, m the per-image, per-channel mean over H and W."""
    means = x.mean(dim=(-2, -1), keepdim=True)
    return (x - means) * c + means


def brightness(x, c, generator):
    """V <- clip(V + c, 0, 1) in HSV; hue and saturation kept."""
    hsv = rgb_to_hsv(x)
    hsv[..., 2, :, :] = (hsv[..., 2, :, :] + c).clamp(0.0, 1.0)
    return hsv_to_rgb(hsv)


# name -> (function, CIFAR-10-C's parameter c of severities 1..5). The values
# are those of make_cifar_c.py in github.com/hendrycks/robustness (the script
# that made the released CIFAR-10-C); ImageNet-C's differ.
CORRUPTIONS = {
    "gaussian_noise": (gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10)),   # noise std
    "shot_noise": (shot_noise, (500, 250, 100, 75, 50)),                  # photons at full scale
    "impulse_noise": (impulse_noise, (0.01, 0.02, 0.03, 0.05, 0.07)),     # fraction of values hit
    "speckle_noise": (speckle_noise, (0.06, 0.10, 0.12, 0.16, 0.20)),     # relative noise std
    "gaussian_blur": (gaussian_blur, (0.4, 0.6, 0.7, 0.8, 1.0)),          # sigma in pixels
    "contrast": (contrast, (0.75, 0.5, 0.4, 0.3, 0.15)),                  # contrast kept
    "brightness": (brightness, (0.05, 0.1, 0.15, 0.2, 0.3)),              # added to V
}


def rgb_to_hsv(rgb):
    """RGB (..., 3, H, W) in [0, 1] to HSV (..., 3, H, W), every component in
    [0, 1], as skimage's rgb2hsv: H and S are 0 where R = G = B."""
    r, g, b = rgb.unbind(-3)
    v = rgb.amax(-3)
    delta = v - rgb.amin(-3)
    chromatic = delta > 0
    # torch.where evaluates both branches: dividing by 1 where delta is 0
    # keeps 0/0 out of the branch that is then discarded
    safe_delta = torch.where(chromatic, delta, torch.ones_like(delta))
    safe_v = torch.where(chromatic, v, torch.ones_like(v))   # delta > 0 implies v > 0
    s = torch.where(chromatic, delta / safe_v, torch.zeros_like(v))
    # hue sector of the largest channel, in sixths of the circle
    h = torch.where(r == v, (g - b) / safe_delta,
                    torch.where(g == v, 2.0 + (b - r) / safe_delta, 4.0 + (r - g) / safe_delta))
    h = torch.where(chromatic, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return torch.stack((h, s, v), dim=-3)


# For each of the six hue sectors, which of (v, t, p, q) each of R, G, B takes.
_SECTOR_SOURCES = torch.tensor([[0, 1, 2], [3, 0, 2], [2, 0, 1],
                                [2, 3, 0], [1, 2, 0], [0, 2, 3]])


def hsv_to_rgb(hsv):
    """HSV (..., 3, H, W) in [0, 1] to RGB (..., 3, H, W), the inverse of rgb_to_hsv."""
    h, s, v = hsv.unbind(-3)
    h6 = h * 6.0
    sector_floor = torch.floor(h6)
    f = h6 - sector_floor
    sector = sector_floor.long() % 6   # h = 1 is h = 0
    p = v * (1.0 - s)
    q = v * (1.0 - f * s)
    t = v * (1.0 - (1.0 - f) * s)
    sources = _SECTOR_SOURCES.to(sector.device)[sector].movedim(-1, -3)   # (..., 3, H, W)
    return torch.stack((v, t, p, q), dim=-3).gather(-3, sources)


def _check_name_severity(name, severity):
    if name not in CORRUPTIONS:
        raise ValueError(f"name must be one of {sorted(CORRUPTIONS)}, got {name!r}")
    if not isinstance(severity, int) or isinstance(severity, bool) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an int in 1..5 (CIFAR-10-C's levels), got {severity!r}")


def corrupt(images, name, severity, generator):
    """`images` corrupted with corruption `name` at `severity` (1..5).

    images: float tensor (N, 3, H, W) or (3, H, W), values in [0, 1] (un-
    normalised; values within RANGE_TOLERANCE outside are clipped). Returns a
    tensor of the same shape, dtype and device, clipped to [0, 1] and
    quantised to multiples of 1/255 by truncation, as the released uint8 files
    are. The corruption is computed in float64, as the numpy original is.
    Every random draw comes from `generator` (a torch.Generator), so the
    result is reproducible; a batch draws as one tensor, so it differs from
    corrupting its images one at a time from the same generator.
    """
    _check_name_severity(name, severity)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), "
                        f"got {type(generator).__name__}")
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        kind = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"images must be a float tensor with values in [0, 1], got {kind}; "
                        f"convert uint8 images with images.float() / 255")
    if images.dim() not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"images must be (N, 3, H, W) or (3, H, W) RGB, got shape {tuple(images.shape)}")
    if images.numel() == 0:
        raise ValueError(f"images must hold at least one pixel, got shape {tuple(images.shape)}")
    lo, hi = images.min().item(), images.max().item()
    # the negated test also catches NaN
    if not (lo >= -RANGE_TOLERANCE and hi <= 1.0 + RANGE_TOLERANCE):
        raise ValueError(f"images must have values in [0, 1], got [{lo:.4g}, {hi:.4g}]: un-normalise "
                         f"them first (x * std + mean per channel), or use CorruptedDataset, which does")
    function, levels = CORRUPTIONS[name]
    x = images.to(torch.float64).clamp(0.0, 1.0)
    batched = x if x.dim() == 4 else x.unsqueeze(0)
    out = function(batched, levels[severity - 1], generator).clamp(0.0, 1.0)
    out = torch.floor(out * 255.0 + _LEVEL_SLACK) / 255.0
    return out.reshape(images.shape).to(images.dtype)


class CorruptedDataset(Dataset):
    """`dataset` with its images corrupted by `name` at `severity`.

    The items of `dataset` are (image, label), the image a float (3, H, W)
    tensor normalised as (x - mean) / std per channel; each image is
    un-normalised, corrupted, and normalised again, so a model sees what it
    was trained on. Labels pass through unchanged. Item i's draws come from a
    generator seeded by (seed, i) alone: any item is reproducible on its own,
    in any order, and DataLoader workers give the same items as the main
    process.
    """

    def __init__(self, dataset, mean, std, name, severity, seed=0):
        _check_name_severity(name, severity)
        check_seed(seed)
        self.mean = self._per_channel(mean, "mean")
        self.std = self._per_channel(std, "std")
        if not bool((self.std > 0).all()):
            raise ValueError(f"std must be positive per channel, got {self.std.flatten().tolist()}")
        self.dataset, self.name, self.severity, self.seed = dataset, name, severity, seed

    @staticmethod
    def _per_channel(values, argument):
        t = torch.as_tensor(values, dtype=torch.float64).flatten()
        if t.numel() != 3:
            raise ValueError(f"{argument} must hold 3 values (one per RGB channel), got {t.numel()}")
        return t.view(3, 1, 1)

    def __len__(self):
        return len(self.dataset)

    def generator_for(self, index):
        """The generator item `index` draws from, freshly seeded."""
        # derived_seed mixes (seed, index): neighbouring items' draws are unrelated
        return torch.Generator().manual_seed(derived_seed(self.seed, 0, index))

    def __getitem__(self, index):
        if index < 0:
            index += len(self)   # dataset[-1] and dataset[len - 1] draw the same
        image, label = self.dataset[index]
        if not isinstance(image, torch.Tensor) or image.dim() != 3:
            raise ValueError(f"dataset items must be (normalised float (3, H, W) image, label), item {index} "
                             f"holds {type(image).__name__} {tuple(getattr(image, 'shape', ()))}")
        mean, std = self.mean.to(image.device), self.std.to(image.device)
        pixels = image.to(torch.float64) * std + mean
        lo, hi = pixels.min().item(), pixels.max().item()
        # checked here too, to blame mean and std rather than the caller of corrupt
        if not (lo >= -RANGE_TOLERANCE and hi <= 1.0 + RANGE_TOLERANCE):
            raise ValueError(f"item {index} un-normalised with mean {self.mean.flatten().tolist()} and std "
                             f"{self.std.flatten().tolist()} has values in [{lo:.4g}, {hi:.4g}], outside [0, 1]: "
                             f"pass the mean and std the dataset was normalised with")
        corrupted = corrupt(pixels, self.name, self.severity, self.generator_for(index))
        return ((corrupted - mean) / std).to(image.dtype), label
