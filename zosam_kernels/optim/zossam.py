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
fused ops (one more flat bool buffer read, ANDed with the sparse mask); the
gradients and weights stay under the sparse mask only. Mask and Fisher sum
live in the optimizer state ("ssam_mask", "ssam_fisher"); the Fisher sum is a
parameter-sized buffer (mask="dynamic" keeps none).
"""
import torch

from .perturbation_mask import MaskRule, flatten, split
from .zosam import ZOSAM


class ZOSSAM(ZOSAM):
    """ZOSSAM(params, base_optimizer=torch.optim.SGD, rho=0.05, sparsity=0.5, mask="fisher",
    update_interval=1950, drop_rate=0.5, total_steps=None, delta=1e-3, n_dirs=1, seed=0, masks=None,
    adaptive=False, backend="fused", check_finite=True, **base_kwargs)

    Mask options as SSAM's. Passes: 2 n_dirs forward + 1 forward and backward, as ZOSAM."""

    def __init__(self, params, base_optimizer=torch.optim.SGD, rho=0.05, sparsity=0.5, mask="fisher",
                 update_interval=1950, drop_rate=0.5, total_steps=None, delta=1e-3, n_dirs=1, seed=0,
                 masks=None, adaptive=False, backend="fused", check_finite=True, **base_kwargs):
        self.rule = MaskRule(sparsity, mask, update_interval, drop_rate, total_steps, seed)
        super().__init__(params, base_optimizer, rho, delta, n_dirs, seed, masks, adaptive, backend,
                         check_finite, **base_kwargs)
        self._mask = None   # the flat perturbation mask in use; None: read it from the state

    def _active(self):
        """The flat sparse-training mask (True: an unpruned weight)."""
        dirs = self.directions
        mask_of = dirs.flat.mask_of if hasattr(dirs, "flat") else dirs.masks.get
        masks = {id(p): mask_of(p) for p in dirs.params}
        return flatten(dirs.params, {k: m for k, m in masks.items() if m is not None}, default=True)

    def _stored(self, key):
        params = self.directions.params
        found = {id(p): self.state[p][key] for p in params if key in self.state.get(p, {})}
        return flatten(params, found) if len(found) == len(params) else None

    def step(self, closure=None):
        self.directions.refresh_masks_()
        if self._mask is None:
            stored = self._stored("ssam_mask")
            self._mask = (self.rule.random(self.step_count, self._active()) if stored is None
                          else stored.bool())
        self.directions.set_perturbation_mask_(self._mask)
        return super().step(closure)

    @torch.no_grad()
    def _finish(self, losses, masks):
        """The base step, then (if it was taken) the mask of the next step from this step's gradient."""
        params = self.directions.params
        grad = flatten(params, {id(p): p.grad for p in params if p.grad is not None})
        grad = grad * self._active()
        fisher = None
        if self.rule.kind == "fisher":
            fisher = self._stored("ssam_fisher")
            fisher = grad * grad if fisher is None else fisher + grad * grad
        mask = self._mask
        if self.rule.due(self.step_count + 1):
            mask = self.rule.remake(self.step_count + 1, mask, fisher, grad, self._active())
            if fisher is not None:
                fisher = torch.zeros_like(fisher)
        if not super()._finish(losses, masks):
            return False
        per_param = split(params, mask)
        fisher = split(params, fisher) if fisher is not None else {}
        for p in params:
            self.state[p]["ssam_mask"] = per_param[id(p)]
            if fisher:
                self.state[p]["ssam_fisher"] = fisher[id(p)]
        self._mask = mask
        return True

    def _load_extra_state(self, extra):
        super()._load_extra_state(extra)
        self._mask = None
