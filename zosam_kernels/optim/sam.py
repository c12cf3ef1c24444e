"""SAM (Foret et al. 2021) and ASAM (Kwon et al. 2021), the baseline ZO-SAM is measured against.

    eps   = rho g / (||g|| + 1e-12)                  (adaptive: rho T^2 g / ||T g||, T = |theta|)
    theta <- base_step(theta, grad L(theta + eps))

Two forward + backward passes per step, and one parameter-sized buffer kept
to restore theta exactly after the second pass.
"""
import contextlib

import torch

from .base import SharpnessAwareOptimizer, check_nonnegative
from .passes import phase


class SAM(SharpnessAwareOptimizer):
    """SAM(params, base_optimizer=torch.optim.SGD, rho=0.05, adaptive=False, masks=None,
    check_finite=True, m_sharpness=False, **base_kwargs); rho may differ per param group.

    step(closure): the first gradient pass (at theta) updates BatchNorm
    statistics, the second (at theta + eps) leaves them alone. Returns the
    loss at theta.

    Under DDP, eps comes from DDP's averaged gradient of the first pass (the
    global batch's); m_sharpness=True takes it from each rank's own shard
    instead, as the SAM paper's runs did ("m-sharpness", m = the per-rank
    batch), while the update still uses DDP's averaged second-pass gradient.
    The SAM family's other members refuse it: GSAM and LookSAM update with
    the first pass's gradient (the replicas would drift apart), SSAM builds
    its masks from it (the ranks' states would differ), ESAM selects with it."""

    m_sharpness_allowed = True   # False where the first pass's gradient does more than make eps

    def __init__(self, params, base_optimizer=torch.optim.SGD, rho=0.05, adaptive=False,
                 masks=None, check_finite=True, m_sharpness=False, **base_kwargs):
        check_nonnegative("rho", rho)
        if m_sharpness and not self.m_sharpness_allowed:
            raise ValueError(f"m_sharpness: {type(self).__name__} uses the first pass's gradient for more "
                             "than eps, and it must be the same on every rank; only SAM offers m_sharpness")
        defaults = dict(rho=rho, adaptive=bool(adaptive))
        super().__init__(params, base_optimizer, defaults, base_kwargs, masks, check_finite)
        self.m_sharpness = bool(m_sharpness)
        self._saved = None   # theta, restored after the second pass (kept between steps)

    def _relayout(self, layout):
        super()._relayout(layout)
        self._saved = None

    @torch.no_grad()
    def _perturbation(self):
        """eps per parameter, from the gradients of the first pass."""
        adaptive = self._hyper("adaptive")
        pairs = [(p, self._rho(g)) for g in self.param_groups for p in g["params"] if p.grad is not None]
        scaled = [p.grad * p.abs() if adaptive else p.grad for p, _ in pairs]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in scaled]))
        eps = []
        for (p, rho), s in zip(pairs, scaled):
            check_nonnegative("rho", rho)
            e = s * p.abs() if adaptive else s.clone()   # T^2 g = |theta| (|theta| g)
            eps.append(e.mul_(rho / (norm + 1e-12)))
        return [p for p, _ in pairs], eps

    def _rho(self, group):
        """The radius of a param group at this step (GSAM makes it follow the learning rate)."""
        return group["rho"]

    @contextlib.contextmanager
    def _perturbed(self, params, perturbed, eps):
        """theta + eps inside the block; theta restored exactly (from a copy) when it ends, however."""
        if self._saved is None:
            self._saved = [torch.empty_like(p) for p in params]
        with torch.no_grad(), phase("perturb"):
            torch._foreach_copy_(self._saved, [p.detach() for p in params])
            if perturbed:
                torch._foreach_add_(perturbed, eps)
        try:
            yield
        finally:
            with torch.no_grad(), phase("restore"):
                torch._foreach_copy_(params, self._saved)

    def _pass_at_theta(self, closure):
        """The first gradient pass (at theta; it moves BatchNorm statistics), its
        gradients masked. Returns the parameters and the loss."""
        self._start(closure)
        params = self.params
        loss = self.passes.gradient(closure, params, local=self.m_sharpness)
        self.masks.mask_grads_()
        return params, loss

    def step(self, closure=None):
        params, loss = self._pass_at_theta(closure)
        with self._perturbed(params, *self._perturbation()):
            loss_at_eps = self.passes.gradient(closure, params, freeze_batchnorm=True)
        self._finish({"the first pass": loss, "the second pass": loss_at_eps})
        return loss
