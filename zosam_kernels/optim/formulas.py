"""The family's pure math: functions of tensors, no state, no passes
(tests/test_formulas.py checks each against float64). A model's gradient is a
list of tensors seen as one vector."""
import torch

EPS = 1e-12   # keeps a zero gradient's direction finite (0, not nan)


def dot(xs, ys):
    """sum_i <xs[i], ys[i]> as a 0-d tensor on the device of xs[0] (no host sync)."""
    device = xs[0].device
    return torch.stack([torch.vdot(x.reshape(-1), y.reshape(-1)).to(device) for x, y in zip(xs, ys)]).sum()


def norm(xs):
    device = xs[0].device
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x).to(device) for x in xs]))


def orthogonal_part(xs, ys):
    """The component of the vector xs orthogonal to the vector ys: xs - (<xs,ys>/|ys|^2) ys (new tensors)."""
    coef = dot(xs, ys) / (dot(ys, ys) + EPS)
    return torch._foreach_sub(xs, torch._foreach_mul(ys, coef))


def sam_perturbation(grads, weights, rhos, adaptive):
    """SAM's eps per tensor (new tensors): rho g / (||g|| + 1e-12); ASAM's
    (adaptive): rho T^2 g / (||T g|| + 1e-12), T = |theta|. rhos: one radius per
    tensor (a param group's); the norm is over all of them."""
    scaled = [g * w.abs() if adaptive else g for g, w in zip(grads, weights)]
    total = norm(scaled)
    eps = []
    for s, w, rho in zip(scaled, weights, rhos):
        e = s * w.abs() if adaptive else s.clone()   # T^2 g = |theta| (|theta| g)
        eps.append(e.mul_(rho / (total + EPS)))
    return eps


def zo_coefficients(plus, minus, delta):
    """c_i = (L(theta + delta u_i) - L(theta - delta u_i)) / (2 delta)."""
    return (plus - minus) / (2 * delta)


def zo_perturbation(coefs, norm_of_estimate, rho):
    """eps as coefficients on the directions: rho g_hat / (||g_hat|| + 1e-12) with
    g_hat = mean_i c_i u_i, i.e. rho (c / m) / (||g_hat|| + 1e-12). A non-finite
    coefficient gives eps = 0 (the step is then skipped; no host sync here)."""
    eps = rho * (coefs / coefs.numel()) / (norm_of_estimate + EPS)
    return torch.where(torch.isfinite(eps), eps, torch.zeros_like(eps))


def lr_following_radius(rho, rho_min, lr, lr_min, lr_max):
    """GSAM's radius schedule: rho_t = rho_min + (rho - rho_min)(lr - lr_min)/(lr_max - lr_min)."""
    return rho_min + (rho - rho_min) * (lr - lr_min) / (lr_max - lr_min)


def gsam_update_(g_p, g, alpha):
    """GSAM's update direction, in place of g_p: g_p - alpha g_perp, g_perp the part
    of g orthogonal to g_p."""
    torch._foreach_add_(g_p, orthogonal_part(g, g_p), alpha=-alpha)


def looksam_scale(g, g_v, alpha):
    """LookSAM's in-between weight of g_v: alpha ||g|| / (||g_v|| + 1e-12)."""
    return alpha * norm(g) / (norm(g_v) + EPS)
