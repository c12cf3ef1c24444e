"""SSAM (Mi et al., NeurIPS 2022): SAM whose perturbation touches only the
weights of a sparse perturbation mask m (perturbation_mask.py: SSAM-F from
the empirical Fisher, SSAM-D by drop and grow).

    g = grad L(theta),  eps = rho (g / ||g||) * m,  theta <- base_step(theta, grad L(theta + eps))

As in the paper, ||g|| is the norm of the whole gradient, so ||eps|| <= rho.
The mask of step t is remade (at t = 0, T, 2T, ...) from this step's g before
eps is formed. The Fisher is summed from these mini-batch gradients g (no
extra pass); the paper instead sums per-sample gradients of N = 1024 samples
drawn for the purpose (N backward passes per remake, and a batch of one that
BatchNorm cannot train on). The mask and the Fisher sum live in the optimizer
state ("ssam_mask", "ssam_fisher"), so they resume from a checkpoint.
Passes: 2 forward + 2 backward per step, as SAM (a dense perturbation is no
cheaper to apply; the paper's savings assume sparse kernels).
"""
import torch

from .passes import gradient_pass
from .perturbation_mask import MaskRule, flatten, split
from .sam import SAM


class SSAM(SAM):
    """SSAM(params, base_optimizer=torch.optim.SGD, rho=0.1, sparsity=0.5, mask="fisher",
    update_interval=1950, drop_rate=0.5, total_steps=None, seed=0, masks=None, check_finite=True,
    **base_kwargs)

    Defaults from the SSAM paper and its authors' code: rho = 0.1 (CIFAR-10),
    sparsity = 0.5, the mask remade every 5 epochs (1950 steps of CIFAR at
    batch 128), drop_rate = 0.5. mask="dynamic" needs total_steps (the
    horizon of the cosine-decayed drop rate). `masks` are the sparse-training
    masks (pruned weights); the perturbation mask is chosen among active weights."""

    def __init__(self, params, base_optimizer=torch.optim.SGD, rho=0.1, sparsity=0.5, mask="fisher",
                 update_interval=1950, drop_rate=0.5, total_steps=None, seed=0, masks=None,
                 check_finite=True, **base_kwargs):
        self.rule = MaskRule(sparsity, mask, update_interval, drop_rate, total_steps, seed)
        super().__init__(params, base_optimizer, rho, False, masks, check_finite, **base_kwargs)

    def _active(self, params):
        return flatten(params, {id(p): self.masks.get(p) for p in params if self.masks.get(p) is not None},
                       default=True)

    def _stored(self, params, key):
        found = {id(p): self.state[p][key] for p in params if key in self.state.get(p, {})}
        return flatten(params, found) if len(found) == len(params) else None

    def _next_mask(self, params):
        """(mask, fisher sum) for this step, from the state and this step's gradients."""
        grad = flatten(params, {id(p): p.grad for p in params if p.grad is not None})
        mask = self._stored(params, "ssam_mask")
        fisher = None
        if self.rule.kind == "fisher":
            fisher = self._stored(params, "ssam_fisher")
            fisher = grad * grad if fisher is None else fisher + grad * grad
        if mask is None or self.rule.due(self.step_count):
            mask = self.rule.remake(self.step_count, None if mask is None else mask.bool(), fisher,
                                    grad, self._active(params))
            if fisher is not None:
                fisher = torch.zeros_like(fisher)
        return mask.bool(), fisher

    def step(self, closure=None):
        params, loss = self._pass_at_theta(closure)
        with torch.no_grad():
            mask, fisher = self._next_mask(params)
            per_param = split(params, mask)
            perturbed, eps = self._perturbation()
            torch._foreach_mul_(eps, [per_param[id(p)] for p in perturbed])
        with self._perturbed(params, perturbed, eps):
            loss_at_eps = gradient_pass(closure, params, freeze_batchnorm=True)
        if self._finish({"the first pass": loss, "the second pass": loss_at_eps}, self.masks):
            fisher = split(params, fisher) if fisher is not None else {}
            for p in params:
                self.state[p]["ssam_mask"] = per_param[id(p)]
                if fisher:
                    self.state[p]["ssam_fisher"] = fisher[id(p)]
        return loss
