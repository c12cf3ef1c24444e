"""Loss along random directions around the current weights: 1-D curves and 2-D
surfaces, for the paper's "flat vs sharp minima" pictures.

The directions are the filter-normalised random directions of Li et al. 2018
("Visualizing the loss landscape of neural nets"): a Gaussian direction d, and
for every parameter of at least 2 dimensions each filter d_i (slice along dim
0: an output channel of a convolution, a row of a linear layer) rescaled to the
norm of the weight's filter,

    d_i <- d_i * ||w_i|| / ||d_i||,

so that a step α d moves every filter by the same fraction α of its own size;
without it, the scale invariance of ReLU networks with BatchNorm makes raw
directions meaningless to compare between two minima. Parameters of at most 1
dimension (biases, norm affines) get direction 0, Li et al.'s choice. With
masks, d is zeroed on pruned weights before normalising, and each filter is
normalised against the active part of the weight's filter: the picture stays
in the sparse model's own weight space and pruned weights are never moved.

The loss is the mean of loss_fn over the given batches (each weighted equally),
in eval mode under torch.no_grad(), so it is a fixed function of the weights.
The weights are copied before and copied back after, bit for bit; buffers,
modes and the global RNG state are restored. Results are plain lists of floats,
ready for json.dump, and plot_landscape draws them.
"""
import math

import numpy as np
import torch

from .common import active_parameters, checked_batches, preserved_state, scalar_loss


def random_direction(model, masks=None, *, generator):
    """A filter-normalised random direction (see the module docstring): one tensor
    per trainable parameter of `model`, in model.parameters() order, of its shape,
    dtype and device. Gaussian entries are drawn from `generator` (a
    torch.Generator, on its own device, then moved), only for the parameters of
    at least 2 dimensions, so successive calls continue one stream."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), "
                        f"got {type(generator).__name__}")
    direction = []
    for p, m in active_parameters(model, masks):
        if p.dim() <= 1:
            direction.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype, device=generator.device).to(p.device)
        w = p.detach()
        if m is not None:
            d, w = d * m, w * m
        d_norm = d.double().flatten(1).norm(dim=1)
        w_norm = w.double().flatten(1).norm(dim=1)
        # a fully pruned filter has d_i = 0: it stays 0 rather than 0/0
        scale = torch.where(d_norm > 0, w_norm / d_norm, 0.0)
        direction.append(d * scale.to(d.dtype).view(-1, *[1] * (p.dim() - 1)))
    if all(not bool(d.any()) for d in direction):
        raise ValueError("model: the direction is zero everywhere (no trainable parameter of at least 2 "
                         "dimensions with a nonzero active weight), so the landscape would be flat; "
                         "check masks and requires_grad")
    return direction


def _grid(span, points):
    if not (math.isfinite(span) and span > 0):
        raise ValueError(f"span must be a positive finite number, got {span!r}")
    if int(points) != points or points < 2:
        raise ValueError(f"points must be an integer >= 2, got {points!r}")
    return np.linspace(-span, span, int(points)).tolist()


def _losses(model, loss_fn, batches, masks, directions, coefficients):
    """Mean loss over `batches` at θ + sum_k c_k directions[k], for each tuple c of
    `coefficients`; θ is restored exactly afterwards, whatever happens."""
    params = [p for p, _ in active_parameters(model, masks)]
    out = []
    with preserved_state(model), torch.no_grad():
        model.eval()
        origin = [p.detach().clone() for p in params]
        try:
            for cs in coefficients:
                for k, p in enumerate(params):
                    # from the copy every time, so rounding does not accumulate over the grid
                    p.copy_(origin[k])
                    for c, d in zip(cs, directions):
                        p.add_(d[k], alpha=c)
                out.append(math.fsum(float(scalar_loss(loss_fn, model, x, y)) for x, y in batches)
                           / len(batches))
        finally:
            for p, o in zip(params, origin):
                p.copy_(o)
    return out


def landscape_1d(model, loss_fn, batches, masks=None, span=1.0, points=21, seed=0):
    """L(θ + α d) for α in linspace(-span, span, points), d = random_direction from
    torch.Generator().manual_seed(seed). Returns {"alphas", "losses",
    "direction_seed"}: lists of floats and the seed, from which the same d is
    made again."""
    batches = checked_batches(batches)
    alphas = _grid(span, points)
    d = random_direction(model, masks, generator=torch.Generator().manual_seed(seed))
    losses = _losses(model, loss_fn, batches, masks, [d], [(a,) for a in alphas])
    return {"alphas": alphas, "losses": losses, "direction_seed": seed}


def landscape_2d(model, loss_fn, batches, masks=None, span=1.0, points=11, seed=0):
    """L(θ + α d1 + β d2) on the grid linspace(-span, span, points)^2, with d1 then d2
    two independent random_directions from one torch.Generator().manual_seed(seed).
    Returns {"alphas", "betas", "losses", "direction_seed"}, losses[i][j] being
    at alphas[i], betas[j]."""
    batches = checked_batches(batches)
    alphas = _grid(span, points)
    gen = torch.Generator().manual_seed(seed)
    d1 = random_direction(model, masks, generator=gen)
    d2 = random_direction(model, masks, generator=gen)
    flat = _losses(model, loss_fn, batches, masks, [d1, d2], [(a, b) for a in alphas for b in alphas])
    n = len(alphas)
    losses = [flat[i * n:(i + 1) * n] for i in range(n)]
    return {"alphas": alphas, "betas": list(alphas), "losses": losses, "direction_seed": seed}


def plot_landscape(result, path, title=""):
    """Write a PNG of a landscape_1d (a line) or landscape_2d (filled contours with
    contour lines, levels log-spaced when every loss is positive) result to `path`.
    Non-finite losses (a diverged point far out) are left blank."""
    # the object-oriented API: no pyplot, so no global figure state and no GUI backend
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    if not all(k in result for k in ("alphas", "losses")):
        raise ValueError("result must be what landscape_1d or landscape_2d returned (keys alphas, losses)")
    alphas = np.asarray(result["alphas"], dtype=float)
    losses = np.ma.masked_invalid(np.asarray(result["losses"], dtype=float))
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.subplots()
    if "betas" in result:
        betas = np.asarray(result["betas"], dtype=float)
        if losses.shape != (len(alphas), len(betas)):
            raise ValueError(f"result: losses has shape {losses.shape}, expected (len(alphas), len(betas)) "
                             f"= {(len(alphas), len(betas))}")
        lo, hi = (float(losses.min()), float(losses.max())) if losses.count() else (0.0, 0.0)
        if lo > 0 and hi > lo:
            levels, norm = np.geomspace(lo, hi, 25), LogNorm(lo, hi)
        else:
            levels, norm = 25, None
        # contourf wants z[y, x]: betas run along y
        filled = ax.contourf(alphas, betas, losses.T, levels=levels, norm=norm, cmap="viridis")
        if hi > lo:
            ax.contour(alphas, betas, losses.T, levels=filled.levels, colors="k", linewidths=0.4)
        # every 4th level, in plain numbers: a log norm would otherwise label them as 1.2x10^0
        fig.colorbar(filled, ax=ax, label="loss", ticks=filled.levels[::4], format="%.4g")
        ax.plot([0], [0], marker="*", color="w", markeredgecolor="k", markersize=12)
        ax.set_ylabel("β")
        ax.locator_params(nbins=5)   # the colour bar takes width: fewer tick labels, so they do not touch
    else:
        if losses.shape != alphas.shape:
            raise ValueError(f"result: losses has shape {losses.shape}, expected that of alphas "
                             f"{alphas.shape}")
        ax.plot(alphas, losses, marker=".")
        ax.axvline(0.0, color="0.6", linewidth=0.8)
        ax.set_ylabel("loss")
    ax.set_xlabel("α")
    if title:
        ax.set_title(title)
    fig.savefig(path, format="png", dpi=120)
