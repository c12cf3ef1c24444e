"""ZO-LookSAM (new here): ZO-SAM whose perturbation is estimated every k
steps and reused in between.

Every k-th step (step 0 included) is a ZO-SAM step; it keeps eps as its m
seeds and m coefficients (eps = sum_i c_i u_i), not as a tensor. In between,
eps is regenerated from them at the current weights by the fused op, and the
step is one forward + backward at theta + eps and the un-apply:

    theta <- base_step(theta, grad L(theta + eps_last))

So the in-between steps cost what SGD costs plus two passes over the flat
buffer, and no parameter-sized buffer is kept (LookSAM keeps g_v, one). The
analogy with LookSAM is loose: LookSAM reuses the gradient's sharpness part
g_v, this reuses the perturbation itself. The loss returned on an
in-between step is the loss at theta + eps (no pass at theta happens).
"""
import torch

from .passes import gradient_pass
from .zosam import ZOSAM, _undo


class ZOLookSAM(ZOSAM):
    """ZOLookSAM(params, base_optimizer=torch.optim.SGD, rho=0.05, k=5, delta=1e-3, n_dirs=1, seed=0,
    masks=None, adaptive=False, backend="fused", check_finite=True, **base_kwargs)

    Passes: 2 n_dirs + 1 forward and 1 backward every k-th step, 1 + 1 in between."""

    def __init__(self, params, base_optimizer=torch.optim.SGD, rho=0.05, k=5, delta=1e-3, n_dirs=1,
                 seed=0, masks=None, adaptive=False, backend="fused", check_finite=True, **base_kwargs):
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        super().__init__(params, base_optimizer, rho, delta, n_dirs, seed, masks, adaptive, backend,
                         check_finite, **base_kwargs)
        self.k = k
        self.eps_seeds, self.eps = [], None

    def step(self, closure=None):
        if self.step_count % self.k == 0 or self.eps is None:
            done = self.step_count
            loss = super().step(closure)
            if self.step_count > done:
                self.eps_seeds, self.eps = self.last_seeds, self.last_eps
            return loss
        if closure is None:
            raise ValueError("ZOLookSAM.step needs a closure that runs the forward pass and returns the loss")
        dirs, adaptive = self.directions, self._hyper("adaptive")
        dirs.refresh_masks_()
        dirs.begin(self.eps_seeds)
        applied = []
        if adaptive:
            dirs.save_()
        try:
            dirs.add_(0, len(self.eps_seeds), self.eps, scale_power=2 if adaptive else None)
            applied.append((0, len(self.eps_seeds), self.eps))
            loss = gradient_pass(closure, dirs.params)
        finally:
            _undo(dirs, applied, adaptive)
        self._finish({"the gradient pass": loss}, dirs)
        return loss

    def _extra_state(self):
        return super()._extra_state() | {"k": self.k, "eps_seeds": list(self.eps_seeds),
                                         "eps": None if self.eps is None else self.eps.tolist()}

    def _load_extra_state(self, extra):
        super()._load_extra_state(extra)
        self.k = int(extra.get("k", self.k))
        self.eps_seeds = list(extra.get("eps_seeds", []))
        eps = extra.get("eps")
        self.eps = None if eps is None else torch.tensor(eps, dtype=torch.float32,
                                                         device=self.directions.device)
