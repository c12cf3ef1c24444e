"""SSAM (Mi et al., NeurIPS 2022): SAM whose perturbation touches only the
weights of a sparse perturbation mask m (perturbation_mask.py: SSAM-F from
the empirical Fisher, SSAM-D by drop and grow).

    g = grad L(theta),  eps = rho (g / ||g||) * m,  theta <- base_step(theta, grad L(theta + eps))

As in the paper, ||g|| is the norm of the whole gradient, so ||eps|| <= rho.
The mask of step t is remade (at t = 0, T, 2T, ...) from this step's g before
eps is formed. The Fisher is summed from these mini-batch gradients g (no
extra pass); the paper instead sums per-sample gradients of N = 1024 samples
drawn for the purpose (N backward passes per remake, and a batch of one that
BatchNorm cannot train on). The mask and the Fisher sum live in the
perturbation-mask object, whose state is part of the optimizer's state_dict.
Passes: 2 forward + 2 backward per step, as SAM (a dense perturbation is no
cheaper to apply; the paper's savings assume sparse kernels).
"""
import torch

from ..masks import zero_pruned_
from .perturbation_mask import PerturbationMask, PerturbationMasked
from .sam import SAM


class SSAM(PerturbationMasked, SAM):
    """SSAM(params, base_optimizer=torch.optim.SGD, rho=0.1, sparsity=0.5, mask="fisher",
    update_interval=1950, drop_rate=0.5, total_steps=None, seed=0, masks=None, check_finite=True,
    **base_kwargs)

    Defaults from the SSAM paper and its authors' code: rho = 0.1 (CIFAR-10),
    sparsity = 0.5, the mask remade every 5 epochs (1950 steps of CIFAR at
    batch 128), drop_rate = 0.5. mask="dynamic" needs total_steps (the
    horizon of the cosine-decayed drop rate). `masks` are the sparse-training
    masks (pruned weights); the perturbation mask (`perturbation_mask.views()`)
    is chosen among active weights."""

    m_sharpness_allowed = False

    def __init__(self, params, base_optimizer=torch.optim.SGD, rho=0.1, sparsity=0.5, mask="fisher",
                 update_interval=1950, drop_rate=0.5, total_steps=None, seed=0, masks=None,
                 check_finite=True, **base_kwargs):
        self.perturbation_mask = PerturbationMask(sparsity, mask, update_interval, drop_rate,
                                                  total_steps, seed)
        super().__init__(params, base_optimizer, rho, False, masks, check_finite, **base_kwargs)
        self.perturbation_mask.relayout_(self.layout)

    def step(self, closure=None):
        params, loss = self._pass_at_theta(closure)
        grads = [p.grad for p in params]
        mask, remade = self._mask_for_step(self.step_count, grads)
        with torch.no_grad():
            perturbed, eps = self._perturbation()
            by_param = dict(zip(map(id, params), self.layout.views(mask)))
            for e, p in zip(eps, perturbed):
                zero_pruned_(e, by_param[id(p)])
        with self._perturbed(params, perturbed, eps):
            loss_at_eps = self.passes.gradient(closure, params, freeze_batchnorm=True)
        if self._finish({"the first pass": loss, "the second pass": loss_at_eps}):
            self.perturbation_mask.commit_(mask, grads, remade)
        return loss
