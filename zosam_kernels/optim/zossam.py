"""ZO-SSAM (new here): ZO-SAM whose random directions are restricted to an
SSAM perturbation mask m (perturbation_mask.py), so the zeroth-order
estimate, and eps, live on the masked weights only:

    g_hat = 1/m_dirs sum_i c_i (u_i * m),   eps = rho g_hat / ||g_hat||

The norm is that of the masked estimate (SSAM's eps divides by the whole
gradient's norm, which a zeroth-order estimate on the mask does not see), so
||eps|| = rho. The mask needs gradients, and the only one of a ZO-SAM step is
grad L(theta + eps) of its update: the Fisher sums those, SSAM-D drops by
them, and the mask of step t (t = T, 2T, ...) is made from step t - 1's;
step 0's mask is random (both kinds). The restriction costs nothing in the
fused ops: they read the perturbation mask instead of the sparse one (it is
kept within the active weights); the gradients and weights stay under the
sparse mask only. The Fisher sum is a parameter-sized buffer, accumulated in
place (mask="dynamic" keeps none).
"""
import torch

from .perturbation_mask import PerturbationMask, PerturbationMasked, active_weights
from .zosam import ZOSAM


class ZOSSAM(PerturbationMasked, ZOSAM):
    """ZOSSAM(params, base_optimizer=torch.optim.SGD, rho=0.05, sparsity=0.5, mask="fisher",
    update_interval=1950, drop_rate=0.5, total_steps=None, delta=1e-3, n_dirs=1, seed=0, masks=None,
    adaptive=False, backend="fused", check_finite=True, **base_kwargs)

    Mask options as SSAM's. Passes: 2 n_dirs forward + 1 forward and backward, as ZOSAM."""

    def __init__(self, params, base_optimizer=torch.optim.SGD, rho=0.05, sparsity=0.5, mask="fisher",
                 update_interval=1950, drop_rate=0.5, total_steps=None, delta=1e-3, n_dirs=1, seed=0,
                 masks=None, adaptive=False, backend="fused", check_finite=True, **base_kwargs):
        self.perturbation_mask = PerturbationMask(sparsity, mask, update_interval, drop_rate,
                                                  total_steps, seed)
        super().__init__(params, base_optimizer, rho, delta, n_dirs, seed, masks, adaptive, backend,
                         check_finite, **base_kwargs)
        self.perturbation_mask.relayout_(self.layout)
        self._topology = self.masks.changes   # the topology the perturbation mask lies within

    def _direction_masks(self):
        """The perturbation mask, made at the first step (random) and kept among
        the active weights when the sparse topology changes."""
        pm = self.perturbation_mask
        if pm.buffers is None:   # installed by _finish if the step is taken
            self._first_mask = pm.random(self.step_count, active_weights(self.masks))
            return self._first_mask
        if self._topology != self.masks.changes:   # perturbed weights that were pruned leave it
            for b, a in zip(pm.buffers, active_weights(self.masks)):
                b.logical_and_(a)
            self._topology = self.masks.changes
        return pm.buffers

    def _finish(self, losses):
        """The base step, then (if it was taken) this step's gradient into the
        Fisher sum, or into the mask of the next step when that one is due."""
        if not super()._finish(losses):
            return False
        pm = self.perturbation_mask
        if pm.buffers is None:
            pm.commit_(self._first_mask, [], remade=True)
        grads = [p.grad for p in self.params]
        mask, remade = self._mask_for_step(self.step_count, grads)
        pm.commit_(mask, grads, remade)
        return True
