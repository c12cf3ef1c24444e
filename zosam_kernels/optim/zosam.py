"""ZO-SAM: SAM whose perturbation direction is a zeroth-order estimate.

    c_i   = (L(θ + δ u_i) − L(θ − δ u_i)) / (2δ),     u_i ~ N(0, I), i < m
    ĝ     = 1/m Σ_i c_i u_i
    ε     = ρ ĝ / (‖ĝ‖ + 1e-12)          (adaptive: ρ T² ĝ / ‖T ĝ‖, T = |θ|)
    θ    ← base_step(θ, ∇L(θ + ε))

The directions are never stored: they are regenerated from seeds derived from
(seed, step, i), so ε is m coefficients on them and every move of the weights
is one pass of a fused op (directions.Walk); a resumed run replays the same
directions.
"""
import contextlib
import warnings

import torch

from ..flat import FlatParams
from ..sharded import ShardedParams, is_sharded
from ..seeds import check_seed, derived_seed
from .base import SharpnessAwareOptimizer, check_nonnegative, check_positive_int
from .directions import FusedDirections, UnfusedDirections, Walk
from .passes import mean_loss, phase

BACKENDS = {"fused": FusedDirections, "unfused": UnfusedDirections}


class ZOSAM(SharpnessAwareOptimizer):
    """ZOSAM(params, base_optimizer=torch.optim.SGD, rho=0.05, delta=1e-3, n_dirs=1,
    seed=0, masks=None, adaptive=False, backend="fused", check_finite=True,
    zo_batch_fraction=1.0, zo_autocast=None, **base_kwargs)

    step(closure): 2 * n_dirs no-grad forward passes, one forward + backward at
    θ + ε, the base optimizer's step. Returns the mean of the L+ and L- losses
    (the estimate of the loss at θ; SAM returns the loss at θ). `last_seeds`,
    `last_coefficients` (the c_i) and `last_eps` (ε = Σ_i last_eps[i] u_i, times
    T² when adaptive) tell what the last step taken used.

    zo_batch_fraction and zo_autocast make the zeroth-order passes cheaper
    (passes.Passes): on a leading fraction of the batch (the closure then
    takes `indices` and returns per-sample losses), under autocast.
    backend="unfused" materialises each direction per tensor (the baseline)."""

    compares_losses = True   # L(θ + δu) − L(θ − δu): common random numbers by default

    def __init__(self, params, base_optimizer=torch.optim.SGD, rho=0.05, delta=1e-3, n_dirs=1,
                 seed=0, masks=None, adaptive=False, backend="fused", check_finite=True,
                 zo_batch_fraction=1.0, zo_autocast=None, **base_kwargs):
        check_nonnegative("rho", rho)
        if not isinstance(delta, (int, float)) or not delta > 0:
            raise ValueError(f"delta must be a positive number, got {delta!r}")
        check_positive_int("n_dirs", n_dirs)
        check_seed(seed)
        if "zo_inference_mode" in base_kwargs:
            raise TypeError("zo_inference_mode was removed: inference_mode measured no gain over "
                            "no_grad for the zeroth-order passes (benchmarks/RESULTS.md); drop the argument")
        if backend == "reference":
            warnings.warn('backend="reference" is now called backend="unfused" (the per-tensor '
                          "path, not ops/reference.py)", FutureWarning, stacklevel=2)
            backend = "unfused"
        if backend not in BACKENDS:
            raise ValueError(f"backend must be 'fused' or 'unfused', got {backend!r}")
        defaults = dict(rho=rho, delta=delta, adaptive=bool(adaptive))
        super().__init__(params, base_optimizer, defaults, base_kwargs, masks, check_finite)
        self.n_dirs, self.seed, self.backend = n_dirs, seed, backend
        self.passes = self._new_passes(batch_fraction=zo_batch_fraction, autocast=zo_autocast, name="zo")
        for group in self.param_groups:
            self._check_group(group)
        self._flatten()
        self.last_seeds, self.last_coefficients, self.last_eps = [], None, None

    def _relayout(self, layout):
        super()._relayout(layout)
        self._flatten()

    def _check_group(self, group):
        for p in group["params"]:
            if p.requires_grad and p.dtype != torch.float32:
                raise TypeError(f"params: ZOSAM perturbs float32 parameters, got {p.dtype} (shape "
                                f"{tuple(p.shape)}); {_WHY_FLOAT32.get(p.dtype, _WHY_FLOAT32[None])}")

    def _flatten(self):
        """The layout's parameters into flat buffers (FSDP2's: their local shards,
        left where they are), and the directions over them."""
        sharded = [is_sharded(p) for p in self.params]
        if any(sharded):
            if not all(sharded) or self.backend != "fused" or self.masks.masked \
                    or type(self)._direction_masks is not ZOSAM._direction_masks:
                raise NotImplementedError(f"params: {type(self).__name__} on FSDP2 (fully_shard) "
                                          "needs every parameter sharded, backend='fused', no masks "
                                          "and directions over all weights (not ZOSSAM's)")
            self.flat = ShardedParams(self.layout)
        else:
            self.flat = FlatParams(self.layout)
        self.directions = BACKENDS[self.backend](self.flat)
        self._saved = None   # θ, for the adaptive ε (one parameter-sized copy, kept between steps)

    def step(self, closure=None):
        self._start(closure)
        rho, delta = self._hyper("rho"), self._hyper("delta")
        check_nonnegative("rho", rho)
        seeds = [derived_seed(self.seed, self.step_count, i) for i in range(self.n_dirs)]
        with self._perturbed(seeds) as walk:
            plus, minus = self._estimate(walk, closure, delta)
            coefs = (plus - minus) / (2 * delta)
            eps = self._eps(walk, coefs, rho)
            walk.move_(eps, power=2 if self._hyper("adaptive") else 0)   # θ + ε; the last −δu rides along
            with self.flat.gathering():
                returned = self.passes.gradient(closure, self.params, reduce=False, replay=True)
        if self._finish({"the +delta passes": plus, "the -delta passes": minus,
                         "the gradient pass": mean_loss(returned)}):
            self.passes.observe_batch(returned)
            self.last_seeds, self.last_coefficients, self.last_eps = seeds, coefs, eps
        return (plus.mean() + minus.mean()) / 2

    @contextlib.contextmanager
    def _perturbed(self, seeds):
        """A walk along the directions of `seeds`; the weights are θ again when
        the block ends, however it ends."""
        self.flat.check_bound()
        saved = self._saved_theta() if self._hyper("adaptive") else None
        with phase("perturb"):
            walk = Walk(self.directions, seeds, self._direction_masks(), saved)
        try:
            yield walk
        finally:
            with phase("restore"):
                walk.restore_()

    def _direction_masks(self):
        """The mask of the directions, per buffer (ZOSSAM narrows it to its perturbation mask)."""
        return self.masks.buffers if isinstance(self.flat, FlatParams) else [None] * len(self.flat.buffers)

    def _saved_theta(self):
        if self._saved is None:
            self._saved = [torch.empty_like(b) for b in self.flat.buffers]
        return self._saved

    def _estimate(self, walk, closure, delta):
        """(L(θ + δu_i), L(θ − δu_i)) for every direction i, as two device tensors.
        The move to θ + δu_i also takes back the −δu_{i−1} of the direction
        before; the weights are left at θ − δu_{m−1}."""
        up = torch.full((2,), delta, device=walk.device)
        up[0] = 0.0                                     # (u_{i−1}, u_i) to (0, +δ)
        down = torch.full((1,), -delta, device=walk.device)
        plus, minus = [], []
        for i in range(walk.m):
            with phase("perturb"):
                walk.move_(up if i else up[1:], lo=max(i - 1, 0))
            with self.flat.gathering():
                plus.append(self.passes.extra(closure, name="zo_forward"))
            with phase("perturb"):
                walk.move_(down, lo=i)
            with self.flat.gathering():
                minus.append(self.passes.extra(closure, name="zo_forward"))
        # under DDP, the global batch's losses: the mean of the ranks' (2m scalars, one all-reduce)
        losses = self.replicas.mean_(torch.stack([torch.stack(plus), torch.stack(minus)]).float().to(walk.device))
        return losses[0], losses[1]

    def _eps(self, walk, coefs, rho):
        """ε as coefficients on the directions (times T² when adaptive). A non-finite
        loss gives ε = 0 here (no sync needed) and a skipped step in _finish."""
        g_hat = coefs / walk.m
        with phase("perturb"):
            norm = walk.sq_norm(g_hat, power=1 if self._hyper("adaptive") else 0).sqrt()   # ‖ĝ‖, ‖Tĝ‖
        eps = rho * g_hat / (norm + 1e-12)
        return torch.where(torch.isfinite(eps), eps, torch.zeros_like(eps))

    def _extra_state(self):
        return super()._extra_state() | {"seed": self.seed, "n_dirs": self.n_dirs}

    def _load_extra_state(self, extra):
        super()._load_extra_state(extra)
        for name in ("seed", "n_dirs"):
            value = int(extra.get(name, getattr(self, name)))
            if value != getattr(self, name):
                warnings.warn(f"load_state_dict: the checkpoint's {name}={value} replaces "
                              f"{name}={getattr(self, name)} given to the constructor (a resumed run "
                              "replays the checkpoint's directions)", UserWarning, stacklevel=3)
            setattr(self, name, value)


_WHY_FLOAT32 = {
    torch.float16: "delta is below the resolution of fp16 weights: keep float32 master weights "
                   "and use autocast (zo_autocast for the zeroth-order passes)",
    torch.bfloat16: "delta is below the resolution of bf16 weights: keep float32 master weights "
                    "and use autocast (zo_autocast for the zeroth-order passes)",
    None: "the fused ops work on float32 buffers: convert the model with model.float()",
}
