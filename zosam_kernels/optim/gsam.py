"""GSAM (Zhuang et al., "Surrogate Gap Guided Sharpness-Aware Minimization",
ICLR 2022): SAM's update minus the part of the plain gradient that raises the
surrogate gap.

    g = grad L(theta),  eps = rho_t g / ||g||,  g_p = grad L(theta + eps)
    g_perp = g - (<g, g_p> / ||g_p||^2) g_p        (g orthogonal to g_p)
    theta <- base_step(theta, g_p - alpha g_perp)

rho_t follows the learning rate when rho_min is given (the paper's schedule):
    rho_t = rho_min + (rho - rho_min) (lr - lr_min) / (lr_max - lr_min)
per param group, with lr the group's current lr (so any LR scheduler drives
it), lr_max its lr when the optimizer is built unless given; without rho_min,
rho is constant (and, as for SAM, may differ per group). Norms and inner
products are over the whole model. Keeps g: one parameter-sized set of tensors.
"""
import torch

from .base import check_nonnegative
from .sam import SAM
from .tensorlists import orthogonal_part


class GSAM(SAM):
    """GSAM(params, base_optimizer=torch.optim.SGD, rho=0.05, alpha=0.02, rho_min=None, lr_max=None,
    lr_min=0.0, masks=None, adaptive=False, check_finite=True, **base_kwargs)

    Passes: 2 forward + 2 backward per step, as SAM."""

    m_sharpness_allowed = False

    def __init__(self, params, base_optimizer=torch.optim.SGD, rho=0.05, alpha=0.02, rho_min=None,
                 lr_max=None, lr_min=0.0, masks=None, adaptive=False, check_finite=True,
                 **base_kwargs):
        check_nonnegative("alpha", alpha)
        check_nonnegative("lr_min", lr_min)
        if rho_min is not None:
            check_nonnegative("rho_min", rho_min)
        if lr_max is not None:
            check_nonnegative("lr_max", lr_max)
        super().__init__(params, base_optimizer, rho, adaptive, masks, check_finite, **base_kwargs)
        self._group_defaults(alpha=alpha, rho_min=rho_min, lr_min=lr_min, lr_max=lr_max)

    def _check_group(self, group):
        if group["lr_max"] is None:   # rho follows the group's own learning rate from where it starts
            group["lr_max"] = group["lr"]
        if group["rho_min"] is not None and not group["lr_max"] > group["lr_min"]:
            raise ValueError(f"lr_max must exceed lr_min for rho to follow the learning rate, "
                             f"got lr_max={group['lr_max']!r}, lr_min={group['lr_min']!r}")

    def _rho(self, group):
        rho, rho_min = group["rho"], group["rho_min"]
        if rho_min is None:
            return rho
        progress = (group["lr"] - group["lr_min"]) / (group["lr_max"] - group["lr_min"])
        return rho_min + (rho - rho_min) * progress

    def step(self, closure=None):
        alpha = self._hyper("alpha")
        check_nonnegative("alpha", alpha)
        params, loss = self._pass_at_theta(closure)
        perturbed, eps = self._perturbation()
        g = [p.grad for p in perturbed]   # kept: the next pass gives the params fresh .grad tensors
        with self._perturbed(params, perturbed, eps):
            loss_at_eps = self.passes.gradient(closure, params, freeze_batchnorm=True)
        with torch.no_grad():
            g_p = [p.grad for p in perturbed]
            torch._foreach_add_(g_p, orthogonal_part(g, g_p), alpha=-alpha)
        self._finish({"the first pass": loss, "the second pass": loss_at_eps})
        return loss
