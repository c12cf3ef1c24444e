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

from .base import check_positive_int
from .zosam import ZOSAM


class ZOLookSAM(ZOSAM):
    """ZOLookSAM(params, base_optimizer=torch.optim.SGD, rho=0.05, k=5, delta=1e-3, n_dirs=1, seed=0,
    masks=None, adaptive=False, backend="fused", check_finite=True, **base_kwargs)

    Passes: 2 n_dirs + 1 forward and 1 backward every k-th step, 1 + 1 in between.
    The ε in use is `last_seeds` and `last_eps` of the last full step: a full step
    that is skipped (non-finite loss) leaves step_count where it was, so the
    next step is a full step again."""

    def __init__(self, params, base_optimizer=torch.optim.SGD, rho=0.05, k=5, delta=1e-3, n_dirs=1,
                 seed=0, masks=None, adaptive=False, backend="fused", check_finite=True, **base_kwargs):
        check_positive_int("k", k)
        super().__init__(params, base_optimizer, rho, delta, n_dirs, seed, masks, adaptive, backend,
                         check_finite, **base_kwargs)
        self.k = k

    def step(self, closure=None):
        if self.step_count % self.k == 0 or self.last_eps is None:
            return super().step(closure)
        self._start(closure)
        with self._perturbed(self.last_seeds) as walk:
            walk.move_(self.last_eps, power=2 if self._hyper("adaptive") else 0)
            with self.flat.gathering():
                loss = self.passes.gradient(closure, self.params)
        self._finish({"the gradient pass": loss})
        return loss

    def _extra_state(self):
        return super()._extra_state() | {"k": self.k, "eps_seeds": list(self.last_seeds),
                                         "eps": None if self.last_eps is None else self.last_eps.tolist()}

    def _load_extra_state(self, extra):
        super()._load_extra_state(extra)
        self.k = int(extra.get("k", self.k))
        self.last_seeds = list(extra.get("eps_seeds", []))
        eps = extra.get("eps")
        self.last_eps = None if eps is None else torch.tensor(eps, dtype=torch.float32,
                                                              device=self.params[0].device)
