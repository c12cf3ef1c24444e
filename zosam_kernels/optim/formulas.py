"""The family's pure math: functions of tensors, no state, no passes
(tests/test_formulas.py checks each against float64). A model's gradient is a
list of tensors seen as one vector."""
from __future__ import annotations

from typing import Optional, Sequence, cast

import torch

EPS = 1e-12   # keeps a zero gradient's direction finite (0, not nan)


def dot(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_i <xs[i], ys[i]> as a 0-d tensor on the device of xs[0] (no host sync)."""
    device = xs[0].device
    return torch.stack([torch.vdot(x.reshape(-1), y.reshape(-1)).to(device) for x, y in zip(xs, ys)]).sum()


def norm(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    device = xs[0].device
    return cast(torch.Tensor,
                torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x).to(device) for x in xs])))


def orthogonal_part(xs: list[torch.Tensor] | tuple[torch.Tensor, ...],
                    ys: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The component of the vector xs orthogonal to the vector ys: xs - (<xs,ys>/|ys|^2) ys (new tensors)."""
    coef = dot(xs, ys) / (dot(ys, ys) + EPS)
    return torch._foreach_sub(xs, torch._foreach_mul(ys, coef))


def sam_perturbation(grads: Sequence[torch.Tensor], weights: Sequence[torch.Tensor], rhos: Sequence[float],
                     adaptive: bool, eta: float = 0.0, unscaled: Sequence[bool] = ()) -> list[torch.Tensor]:
    """SAM's eps per tensor (new tensors): rho g / (||g|| + 1e-12); ASAM's
    (adaptive): rho T^2 g / (||T g|| + 1e-12), T = |theta| + eta, T = 1 on the
    tensors flagged in `unscaled` (the ASAM authors' code scales weights, not
    biases). rhos: one radius per tensor (a param group's); the norm is over
    all of them."""
    flags = list(unscaled) or [False] * len(grads)
    scale = [None if not adaptive or u else w.abs() + eta for w, u in zip(weights, flags)]
    scaled = [g if t is None else g * t for g, t in zip(grads, scale)]
    total = norm(scaled)
    eps = []
    for s, t, rho in zip(scaled, scale, rhos):
        e = s.clone() if t is None else s * t   # T^2 g = T (T g)
        eps.append(e.mul_(rho / (total + EPS)))
    return eps


def active_count(weight: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The number of active entries of a weight tensor (its mask's, else all), as a tensor."""
    return torch.tensor(float(weight.numel())) if mask is None else mask.sum().to(torch.float32)


def tensor_rms(weight: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """||weight|| / sqrt(n), n its active entries: the unit of the relative radius."""
    return cast(torch.Tensor,
                torch.linalg.vector_norm(weight) / active_count(weight, mask).to(weight.device).clamp(min=1).sqrt())


def zo_coefficients(plus: torch.Tensor, minus: torch.Tensor, delta: float) -> torch.Tensor:
    """c_i = (L(theta + delta u_i) - L(theta - delta u_i)) / (2 delta)."""
    return (plus - minus) / (2 * delta)


def zo_perturbation(coefs: torch.Tensor, norm_of_estimate: torch.Tensor, rho: float | torch.Tensor) -> torch.Tensor:
    """eps as coefficients on the directions: rho g_hat / (||g_hat|| + 1e-12) with
    g_hat = mean_i c_i u_i, i.e. rho (c / m) / (||g_hat|| + 1e-12). A non-finite
    coefficient gives eps = 0 (the step is then skipped; no host sync here)."""
    eps = rho * (coefs / coefs.numel()) / (norm_of_estimate + EPS)
    return torch.where(torch.isfinite(eps), eps, torch.zeros_like(eps))


def lr_following_radius(rho: float, rho_min: float, lr: float, lr_min: float, lr_max: float) -> float:
    """GSAM's radius schedule: rho_t = rho_min + (rho - rho_min)(lr - lr_min)/(lr_max - lr_min)."""
    return rho_min + (rho - rho_min) * (lr - lr_min) / (lr_max - lr_min)


def gsam_update_(g_p: list[torch.Tensor] | tuple[torch.Tensor, ...], g: list[torch.Tensor] | tuple[torch.Tensor, ...],
                 alpha: float) -> None:
    """GSAM's update direction, in place of g_p: g_p - alpha g_perp, g_perp the part
    of g orthogonal to g_p."""
    torch._foreach_add_(g_p, orthogonal_part(g, g_p), alpha=-alpha)


def looksam_scale(g: Sequence[torch.Tensor], g_v: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    """LookSAM's in-between weight of g_v: alpha ||g|| / (||g_v|| + 1e-12)."""
    return alpha * norm(g) / (norm(g_v) + EPS)
