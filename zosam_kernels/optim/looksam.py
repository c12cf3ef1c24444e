"""LookSAM (Liu et al., "Towards Efficient and Scalable Sharpness-Aware
Minimization", CVPR 2022): SAM's second pass only every k steps.

Every k-th step (step 0 included) is a SAM step, g = grad L(theta) and
g_s = grad L(theta + eps), which also stores the part of g_s orthogonal to g,

    g_v = g_s - (<g_s, g> / ||g||^2) g.

In between, one forward + backward gives g at theta and the update uses

    g + alpha (||g|| / ||g_v||) g_v

with no perturbation and hence nothing to restore (the weights are never
moved on these steps: a reset there is a bug reported against a public
implementation). Norms and inner products are over the whole model (LookSAM,
not its layer-wise variant). g_v lives in the optimizer state
("looksam_g_v", one tensor per parameter), so it resumes from a checkpoint.
"""
import torch

from .base import check_nonnegative, check_positive_int
from .sam import SAM
from .tensorlists import norm, orthogonal_part


class LookSAM(SAM):
    """LookSAM(params, base_optimizer=torch.optim.SGD, rho=0.05, k=5, alpha=0.7, masks=None,
    check_finite=True, **base_kwargs)

    k = 5 and alpha = 0.7: the LookSAM paper's setting (its tables use k = 5).
    Passes: 2 forward + 2 backward on every k-th step, 1 + 1 in between."""

    m_sharpness_allowed = False

    def __init__(self, params, base_optimizer=torch.optim.SGD, rho=0.05, k=5, alpha=0.7, masks=None,
                 check_finite=True, **base_kwargs):
        check_positive_int("k", k)
        check_nonnegative("alpha", alpha)
        super().__init__(params, base_optimizer, rho, False, masks, check_finite, **base_kwargs)
        self._group_defaults(alpha=alpha)
        self.k = k

    def step(self, closure=None):
        params, loss = self._pass_at_theta(closure)
        if self.step_count % self.k == 0:
            perturbed, eps = self._perturbation()
            g = [p.grad for p in perturbed]   # kept: the next pass gives the params fresh .grad tensors
            with self._perturbed(params, perturbed, eps):
                loss_at_eps = self.passes.gradient(closure, params, freeze_batchnorm=True)
            self.masks.mask_grads_()   # g_v (and its norm) on the active weights only
            g_v = orthogonal_part([p.grad for p in perturbed], g)
            if self._finish({"the first pass": loss, "the second pass": loss_at_eps}):
                for p, v in zip(perturbed, g_v):
                    self.state[p]["looksam_g_v"] = v
            return loss

        alpha = self._hyper("alpha")
        check_nonnegative("alpha", alpha)
        with torch.no_grad():
            pairs = [(p.grad, self.state[p]["looksam_g_v"]) for p in params
                     if p.grad is not None and "looksam_g_v" in self.state.get(p, {})]
            if pairs:
                grads, g_v = [g for g, _ in pairs], [v for _, v in pairs]
                scale = alpha * norm(grads) / (norm(g_v) + 1e-12)
                torch._foreach_add_(grads, torch._foreach_mul(g_v, scale))
        self._finish({"the gradient pass": loss})
        return loss

    def _extra_state(self):
        return super()._extra_state() | {"k": self.k}

    def _load_extra_state(self, extra):
        super()._load_extra_state(extra)
        self.k = int(extra.get("k", self.k))
