"""ESAM (Du et al., "Efficient Sharpness-aware Minimization for Improved
Training of Neural Networks", ICLR 2022): SAM with two random savings.

Stochastic weight perturbation (SWP): at each step every parameter tensor
joins the perturbation with probability beta. The others sit out the first
backward (requires_grad off while it runs: that is the saving) and are not
perturbed; with g_S the first-pass gradient of the chosen tensors,

    eps = rho g_S / (beta (||g_S|| + 1e-12))

The 1/beta factor is the paper's (and its authors' code's) rescaling of the
partial gradient. Tensors are drawn from a generator seeded by (seed, step),
so a resumed run draws the same ones.

Sharpness-sensitive data selection (SDS), gamma < 1: from per-sample losses
l(theta) of the first pass and l(theta + eps) of one no-grad pass, the second
gradient pass runs on the k = max(1, floor(gamma B)) samples whose loss rose
most (torch.topk; ties broken by topk). The authors' code keeps the samples
strictly above the k-th largest rise, i.e. k - 1 of them; this keeps k. SDS
needs a closure that returns per-sample losses and accepts `indices`
(see passes.py).

beta = gamma = 1 is SAM exactly (no draw leaves a tensor out, no extra pass).
Passes per step: 2 forward + 2 backward, plus one no-grad forward if gamma < 1;
the first backward covers about beta of the weights, the second gamma of the batch.
"""
import torch

from ..seeds import check_seed, derived_seed
from .base import check_nonnegative
from .passes import check_takes_indices
from .sam import SAM


class ESAM(SAM):
    """ESAM(params, base_optimizer=torch.optim.SGD, rho=0.05, beta=0.6, gamma=0.5, seed=0,
    masks=None, adaptive=False, check_finite=True, **base_kwargs)

    Defaults beta = 0.6, gamma = 0.5 and rho = 0.05: the ESAM authors' CIFAR runs.
    `last_perturbed` (list of bool, one per parameter) and `last_indices` (the
    selected samples, None when gamma = 1) tell what the last step used."""

    m_sharpness_allowed = False

    compares_losses = True   # the selection ranks losses after − before: common random numbers by default

    def __init__(self, params, base_optimizer=torch.optim.SGD, rho=0.05, beta=0.6, gamma=0.5, seed=0,
                 masks=None, adaptive=False, check_finite=True, **base_kwargs):
        for name, value in (("beta", beta), ("gamma", gamma)):
            check_nonnegative(name, value)
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        check_seed(seed)
        super().__init__(params, base_optimizer, rho, adaptive, masks, check_finite, **base_kwargs)
        self.beta, self.gamma, self.seed = float(beta), float(gamma), seed
        self.last_perturbed, self.last_indices = [], None

    def _draw(self, n):
        g = torch.Generator().manual_seed(derived_seed(self.seed, self.step_count, 0))
        return (torch.rand(n, generator=g) < self.beta).tolist()

    def _first_pass(self, closure, params, chosen):
        """The gradient pass at theta, with autograd off for the tensors left out."""
        left_out = [p for p, c in zip(params, chosen) if not c] if any(chosen) else []
        for p in left_out:
            p.requires_grad_(False)
        try:
            losses = self.passes.gradient(closure, params, reduce=False)
        finally:
            for p in left_out:
                p.requires_grad_(True)
        for p, c in zip(params, chosen):
            if not c:   # only reached when no tensor was chosen: eps is then 0
                p.grad = None
        return losses

    def step(self, closure=None):
        self._start(closure)
        select = self.gamma < 1
        if select:
            check_takes_indices(closure, "ESAM's data selection (gamma < 1)")
        params = self.params
        chosen = self._draw(len(params))
        before = self._first_pass(closure, params, chosen)
        loss = before.mean() if before.dim() == 1 else before
        if select and before.dim() != 1:
            raise ValueError("closure must return per-sample losses (a 1-D tensor) for ESAM's data "
                             f"selection (gamma={self.gamma} < 1), got a scalar")
        self.masks.mask_grads_()
        perturbed, eps = self._perturbation() if any(chosen) else ([], [])
        if eps:
            torch._foreach_div_(eps, self.beta)
        losses = {"the first pass": loss}
        indices = None
        with self._perturbed(params, perturbed, eps):
            if select:
                after = self.passes.extra(closure, reduce=False, name="selection_pass")
                if after.shape != before.shape:
                    raise ValueError(f"closure returned {tuple(after.shape)} losses at theta + eps but "
                                     f"{tuple(before.shape)} at theta: ESAM needs one loss per sample")
                losses["the selection pass"] = after
                k = max(1, int(self.gamma * before.numel()))
                indices = torch.topk(after - before, k).indices
            losses["the second pass"] = self.passes.gradient(closure, params, freeze_batchnorm=True,
                                                             indices=indices, replay=True)
        self._finish(losses)
        self.last_perturbed, self.last_indices = chosen, indices
        return loss

    def _extra_state(self):
        return super()._extra_state() | {"seed": self.seed}

    def _load_extra_state(self, extra):
        super()._load_extra_state(extra)
        self.seed = int(extra.get("seed", self.seed))
