"""CIFAR-10-C corruptions in torch against independent expectations.

Statistics are checked on large constant images with tolerances from the
sample size; the deterministic corruptions against closed forms, Python's
colorsys and scipy.ndimage. Outputs are truncated to k/255 as the released
uint8 files are, which lowers a continuous value by half a level on average:
the expectations below allow for it.
"""
import colorsys
import math

import numpy as np
import pytest
import scipy.ndimage
import torch
from torch.utils.data import DataLoader, TensorDataset

from zosam_kernels.diagnostics.corruptions import (CORRUPTIONS, CorruptedDataset, corrupt, hsv_to_rgb,
                                                    rgb_to_hsv)

LEVEL = 1.0 / 255
GRAY = 128 / 255            # a k/255 value away from both clipping ends
BIG = (1, 3, 256, 256)      # 196608 values: sample means to ~1e-3 of a std
RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def levels_image(shape, seed=0):
    """Random uint8 levels as floats, what ToTensor makes of a CIFAR image."""
    return torch.randint(0, 256, shape, generator=gen(seed)).to(torch.float32) / 255


def constant(value, shape=BIG):
    return torch.full(shape, value, dtype=torch.float64)


def test_table_holds_cifar10c_parameters():
    # make_cifar_c.py of github.com/hendrycks/robustness, typed again here
    published = {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "shot_noise": (500, 250, 100, 75, 50),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
        "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    }
    assert {name: levels for name, (_, levels) in CORRUPTIONS.items()} == published


@pytest.mark.parametrize("name,scale", [("gaussian_noise", 1.0), ("speckle_noise", GRAY)])
@pytest.mark.parametrize("severity", [1, 5])
def test_additive_noise_mean_and_std(name, scale, severity):
    c = CORRUPTIONS[name][1][severity - 1]
    residual = corrupt(constant(GRAY), name, severity, gen()) - GRAY
    n = residual.numel()
    # truncation: a uniform error in (-1, 0] levels, independent of the noise
    expected_std = math.sqrt((scale * c) ** 2 + LEVEL ** 2 / 12)
    assert abs(residual.mean().item() + LEVEL / 2) < 5 * expected_std / math.sqrt(n)
    assert abs(residual.std().item() - expected_std) < 5 * expected_std / math.sqrt(2 * n)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_shot_noise_keeps_mean_with_variance_x_over_c(severity):
    c = CORRUPTIONS["shot_noise"][1][severity - 1]
    out = corrupt(constant(GRAY), "shot_noise", severity, gen())
    std = math.sqrt(GRAY / c)
    se = 5 * std / math.sqrt(out.numel())
    # truncation lowers the mean by less than one level
    assert GRAY - LEVEL - se < out.mean().item() < GRAY + se
    assert out.var().item() == pytest.approx(GRAY / c, rel=0.03)


@pytest.mark.parametrize("severity", [1, 5])
def test_impulse_noise_hits_a_fraction_c_of_values_half_salt(severity):
    c = CORRUPTIONS["impulse_noise"][1][severity - 1]
    x = constant(GRAY)
    out = corrupt(x, "impulse_noise", severity, gen())
    salt, pepper = out == 1.0, out == 0.0
    hit = salt | pepper
    n = out.numel()
    assert abs(hit.double().mean().item() - c) < 5 * math.sqrt(c * (1 - c) / n)
    hits = hit.sum().item()
    assert abs(salt.sum().item() / hits - 0.5) < 5 * math.sqrt(0.25 / hits)
    # values not hit are exactly the input: k/255 survives truncation
    assert torch.equal(out[~hit], x[~hit])
    # per value, not per pixel: a pixel with exactly one of its 3 channels hit
    # has probability 3 c (1 - c)^2 (per pixel it would be 0)
    one = (hit.sum(dim=1) == 1).double()
    p = 3 * c * (1 - c) ** 2
    assert abs(one.mean().item() - p) < 5 * math.sqrt(p * (1 - p) / one.numel())


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_contrast_is_per_channel_closed_form(severity):
    c = CORRUPTIONS["contrast"][1][severity - 1]
    x = levels_image((2, 3, 8, 8))
    x[:, 1] = x[:, 1] * 0.3              # channels of different means
    x[:, 2] = 1.0 - 0.5 * x[:, 2]
    m = x.double().mean(dim=(2, 3), keepdim=True)
    expected = (x.double() - m) * c + m
    gap = expected - corrupt(x, "contrast", severity, gen()).double()
    # truncation only: below by less than a level (float32 output: 1e-6)
    assert gap.min().item() > -1e-6 and gap.max().item() < LEVEL + 1e-6


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_brightness_lifts_gray_by_c(severity):
    c = CORRUPTIONS["brightness"][1][severity - 1]
    k = torch.arange(256, dtype=torch.float32) / 255
    x = k.view(1, 1, 16, 16).expand(1, 3, 16, 16)
    out = corrupt(x, "brightness", severity, gen())
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])   # gray stays gray
    gap = (x + c).clamp(max=1.0).double() - out.double()
    assert gap.min().item() > -1e-6 and gap.max().item() < LEVEL + 1e-6


@pytest.mark.parametrize("severity", [1, 5])
def test_brightness_keeps_hue_and_scales_colour(severity):
    c = CORRUPTIONS["brightness"][1][severity - 1]
    colours = torch.tensor([[0.6, 0.1, 0.3], [0.1, 0.5, 0.2], [0.2, 0.3, 0.65], [0.4, 0.4, 0.1]])
    x = colours.T.reshape(1, 3, 2, 2)
    out = corrupt(x, "brightness", severity, gen())
    for rgb, new in zip(colours.tolist(), out.reshape(3, 4).T.tolist()):
        h, s, v = colorsys.rgb_to_hsv(*rgb)
        h2, s2, v2 = colorsys.rgb_to_hsv(*new)
        assert h2 == pytest.approx(h, abs=0.01) and s2 == pytest.approx(s, abs=0.02)
        # with hue and saturation kept, every channel scales by V'/V
        for a, b in zip(rgb, new):
            assert -1e-6 < a * (v + c) / v - b < LEVEL + 1e-6


def test_brightness_matches_colorsys_per_pixel():
    x = levels_image((2, 3, 12, 12), seed=3).double()
    out = corrupt(x, "brightness", 3, gen())
    c = CORRUPTIONS["brightness"][1][2]
    pixels = x.permute(0, 2, 3, 1).reshape(-1, 3).tolist()
    ref = []
    for rgb in pixels:
        h, s, v = colorsys.rgb_to_hsv(*rgb)
        ref.append(colorsys.hsv_to_rgb(h, s, min(v + c, 1.0)))
    ref = torch.tensor(ref, dtype=torch.float64).reshape(2, 12, 12, 3).permute(0, 3, 1, 2)
    ref = torch.floor(ref * 255 + 1e-4) / 255
    # identical but where two float paths straddle a level boundary
    assert (out - ref).abs().max().item() <= LEVEL + 1e-9
    assert (out != ref).double().mean().item() < 0.01


def test_hsv_round_trip_and_colorsys_agreement():
    rgb = torch.rand(4, 3, 16, 16, generator=gen(5), dtype=torch.float64)
    rgb[0, :, :4] = rgb[0, :1, :4]          # gray pixels: hue and saturation 0
    rgb[1, :, :4] = (rgb[1, :, :4] * 4).round() / 4   # ties for the largest channel
    hsv = rgb_to_hsv(rgb)
    assert (hsv_to_rgb(hsv) - rgb).abs().max().item() < 1e-6
    assert (hsv_to_rgb(rgb_to_hsv(rgb.float())) - rgb.float()).abs().max().item() < 1e-6
    ref = torch.tensor([colorsys.rgb_to_hsv(*p) for p in rgb.permute(0, 2, 3, 1).reshape(-1, 3).tolist()],
                       dtype=torch.float64)
    mine = hsv.permute(0, 2, 3, 1).reshape(-1, 3)
    hue_gap = (mine[:, 0] - ref[:, 0]).abs()
    hue_gap = torch.minimum(hue_gap, 1 - hue_gap)   # hue is circular
    assert hue_gap.max().item() < 1e-9 and (mine[:, 1:] - ref[:, 1:]).abs().max().item() < 1e-9


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_gaussian_blur_matches_scipy(severity):
    c = CORRUPTIONS["gaussian_blur"][1][severity - 1]
    x = levels_image((2, 3, 32, 32), seed=7).double()
    ref = scipy.ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, c, c), mode="nearest", truncate=4.0)
    ref = np.floor(np.clip(ref, 0, 1) * 255 + 1e-4) / 255
    np.testing.assert_array_equal(corrupt(x, "gaussian_blur", severity, gen()).numpy(), ref)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_outputs_are_levels_in_range_of_input_shape_and_dtype(name):
    x = levels_image((3, 3, 16, 16))
    for severity in range(1, 6):
        out = corrupt(x, name, severity, gen())
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.min().item() >= 0 and out.max().item() <= 1
        scaled = out.double() * 255
        assert (scaled - scaled.round()).abs().max().item() < 1e-4
    single = corrupt(x[0], name, 3, gen())
    assert single.shape == x[0].shape


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_reproducible_from_the_generator(name):
    x = levels_image((2, 3, 16, 16))
    assert torch.equal(corrupt(x, name, 4, gen(1)), corrupt(x, name, 4, gen(1)))
    if name in RANDOM:
        assert not torch.equal(corrupt(x, name, 4, gen(1)), corrupt(x, name, 4, gen(2)))


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_change_grows_with_severity(name):
    x = levels_image((8, 3, 32, 32), seed=11)
    change = [(corrupt(x, name, s, gen(s)) - x).abs().mean().item() for s in range(1, 6)]
    assert all(a < b for a, b in zip(change, change[1:])), change


MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def normalised_set(n=6):
    pixels = levels_image((n, 3, 8, 8), seed=13)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    return TensorDataset((pixels - mean) / std, torch.arange(n) * 7), pixels


def test_dataset_items_are_corrupted_pixels_renormalised():
    base, pixels = normalised_set()
    ds = CorruptedDataset(base, MEAN, STD, "gaussian_noise", 5, seed=4)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    for i in range(len(ds)):
        image, label = ds[i]
        assert label == base[i][1] and image.dtype == torch.float32
        expected = corrupt(pixels[i], "gaussian_noise", 5, ds.generator_for(i))
        assert torch.allclose(image * std + mean, expected, atol=1e-6)


def test_dataset_items_are_reproducible_alone_and_through_workers():
    base, _ = normalised_set()
    ds = CorruptedDataset(base, MEAN, STD, "impulse_noise", 5, seed=2)
    first = [ds[i][0] for i in range(len(ds))]
    backwards = [ds[i][0] for i in reversed(range(len(ds)))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(first, backwards))
    assert torch.equal(ds[-1][0], first[-1])
    assert not torch.equal(first[0], CorruptedDataset(base, MEAN, STD, "impulse_noise", 5, seed=3)[0][0])
    loaded = torch.cat([x for x, _ in DataLoader(ds, batch_size=2, num_workers=2)])
    assert torch.equal(loaded, torch.stack(first))


def test_errors_name_the_argument():
    x = levels_image((1, 3, 4, 4))
    with pytest.raises(ValueError, match="name must be one of .*brightness.*speckle_noise"):
        corrupt(x, "fog", 1, gen())
    for severity in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match="severity must be an int in 1..5"):
            corrupt(x, "contrast", severity, gen())
    with pytest.raises(ValueError, match="un-normalise"):
        corrupt(x * 2 - 1, "contrast", 1, gen())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        corrupt(x * float("nan"), "contrast", 1, gen())
    for shape in ((4, 4), (1, 1, 4, 4), (4, 4, 3), (1, 1, 3, 4, 4)):
        with pytest.raises(ValueError, match="must be \\(N, 3, H, W\\) or \\(3, H, W\\)"):
            corrupt(torch.zeros(shape), "contrast", 1, gen())
    with pytest.raises(TypeError, match="images.float\\(\\) / 255"):
        corrupt((x * 255).to(torch.uint8), "contrast", 1, gen())
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        corrupt(x, "gaussian_noise", 1, 0)
    base, _ = normalised_set()
    with pytest.raises(ValueError, match="mean must hold 3 values"):
        CorruptedDataset(base, (0.5,), STD, "contrast", 1)
    with pytest.raises(ValueError, match="std must be positive"):
        CorruptedDataset(base, MEAN, (0.2, 0.0, 0.2), "contrast", 1)
    with pytest.raises(ValueError, match="severity"):
        CorruptedDataset(base, MEAN, STD, "contrast", 9)
    with pytest.raises(ValueError, match="seed"):
        CorruptedDataset(base, MEAN, STD, "contrast", 1, seed=-1)
    wrong = CorruptedDataset(base, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "contrast", 1)
    with pytest.raises(ValueError, match="pass the mean and std the dataset was normalised with"):
        wrong[0]
