"""ZO-SAM: SAM whose perturbation direction is a zeroth-order estimate.

    g_hat = 1/m sum_i (L(theta + delta u_i) - L(theta - delta u_i)) / (2 delta) u_i
    eps   = rho g_hat / (||g_hat|| + 1e-12)        (adaptive: rho T^2 g_hat / ||T g_hat||, T = |theta|)
    theta <- base_step(theta, grad L(theta + eps))

The directions u_i are never stored: they are regenerated from seeds derived
from (seed, step, i), so the weights move only by fused ops that add
coefficient-weighted directions, and a resumed run replays the same ones.
"""
import contextlib
import math

import torch

from .base import SharpnessAwareOptimizer, check_nonnegative
from .directions import FlatDirections, TensorDirections
from .passes import check_takes_indices, extra_pass, gradient_pass, phase

_M64 = (1 << 64) - 1


def _mix64(x):
    # splitmix64's finaliser: consecutive inputs give unrelated outputs
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def direction_seed(seed, step, index):
    """The 63-bit seed of direction `index` at optimizer step `step`."""
    return _mix64(_mix64(_mix64(seed) ^ step) ^ index) >> 1


def check_seed(seed):
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")


class ZOSAM(SharpnessAwareOptimizer):
    """ZOSAM(params, base_optimizer=torch.optim.SGD, rho=0.05, delta=1e-3, n_dirs=1,
    seed=0, masks=None, adaptive=False, backend="fused", check_finite=True,
    zo_batch_fraction=1.0, zo_autocast=None, zo_inference_mode=False, **base_kwargs)

    step(closure): 2 * n_dirs no-grad forward passes, one forward + backward at
    theta + eps, the base optimizer's step. Returns the mean of the L+ and L- losses.

    Two ways to make the zeroth-order passes cheaper, off by default:
    zo_batch_fraction < 1 runs them on the first ceil(fraction * B) samples of
    the batch (a shuffled loader makes those a random subset); the closure must
    then take the protocol's optional `indices` argument and return per-sample
    losses, whose count gives B (the first step, not knowing B yet, runs its
    zeroth-order passes on the whole batch). zo_autocast=torch.bfloat16 runs
    them under autocast; the weights stay float32, so delta still moves them.
    zo_inference_mode=True runs them under torch.inference_mode instead of
    no_grad (on the CPU no measurable gain per step, benchmarks/RESULTS.md);
    off by default because a model that caches a tensor during a forward
    would then hold an inference tensor that its next gradient pass cannot use.
    """

    def __init__(self, params, base_optimizer=torch.optim.SGD, rho=0.05, delta=1e-3, n_dirs=1,
                 seed=0, masks=None, adaptive=False, backend="fused", check_finite=True,
                 zo_batch_fraction=1.0, zo_autocast=None, zo_inference_mode=False, **base_kwargs):
        check_nonnegative("rho", rho)
        if not isinstance(delta, (int, float)) or not delta > 0:
            raise ValueError(f"delta must be a positive number, got {delta!r}")
        if not isinstance(n_dirs, int) or isinstance(n_dirs, bool) or n_dirs < 1:
            raise ValueError(f"n_dirs must be an int >= 1, got {n_dirs!r}")
        check_seed(seed)
        if backend not in ("fused", "reference"):
            raise ValueError(f"backend must be 'fused' or 'reference', got {backend!r}")
        if not isinstance(zo_batch_fraction, (int, float)) or not 0 < zo_batch_fraction <= 1:
            raise ValueError(f"zo_batch_fraction must be a number in (0, 1], got {zo_batch_fraction!r}")
        if zo_autocast not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"zo_autocast must be None, torch.bfloat16 or torch.float16, "
                             f"got {zo_autocast!r}")
        defaults = dict(rho=rho, delta=delta, adaptive=bool(adaptive))
        super().__init__(params, base_optimizer, defaults, base_kwargs, check_finite)
        params = self.params
        if not params:
            raise ValueError("params has no parameter that requires grad")
        for p in params:
            if p.dtype != torch.float32:
                raise TypeError(f"params: ZOSAM perturbs float32 parameters, got {p.dtype} (shape "
                                f"{tuple(p.shape)}); delta={delta} is below the resolution of "
                                "fp16/bf16 weights: keep float32 master weights and use autocast")
        self.n_dirs = n_dirs
        self.seed = seed
        self.backend = backend
        directions = FlatDirections if backend == "fused" else TensorDirections
        self.directions = directions(params, masks)
        self.zo_batch_fraction = float(zo_batch_fraction)
        self.zo_autocast = zo_autocast
        self.zo_inference_mode = bool(zo_inference_mode)
        self._batch_size = None   # samples in the last full-batch evaluation, for the fraction
        self.last_seeds = []
        self.last_coefficients = None
        self.last_eps = None

    def _zo_subset(self, closure):
        """The `indices` of the zeroth-order passes: None (whole batch) or a leading slice."""
        if self.zo_batch_fraction == 1:
            return None
        check_takes_indices(closure, f"zo_batch_fraction={self.zo_batch_fraction}")
        if self._batch_size is None:
            return None
        return slice(0, math.ceil(self.zo_batch_fraction * self._batch_size))

    def _zo_context(self, device):
        if self.zo_autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.zo_autocast)

    def _full_batch(self, closure):
        """closure, noting the batch size when it returns per-sample losses."""
        if self.zo_batch_fraction == 1:
            return closure

        def counted(*args):
            loss = closure(*args)
            if torch.is_tensor(loss):
                if loss.dim() != 1:
                    raise ValueError("closure must return per-sample losses (a 1-D tensor) when "
                                     f"zo_batch_fraction={self.zo_batch_fraction}: their count is B")
                if not args:
                    self._batch_size = loss.numel()
            return loss
        return counted

    def step(self, closure=None):
        if closure is None:
            raise ValueError("ZOSAM.step needs a closure that runs the forward pass and returns the loss")
        rho, delta, adaptive = self._hyper("rho"), self._hyper("delta"), self._hyper("adaptive")
        check_nonnegative("rho", rho)
        m, dirs = self.n_dirs, self.directions
        dirs.refresh_masks_()
        seeds = [direction_seed(self.seed, self.step_count, i) for i in range(m)]
        dirs.begin(seeds)

        subset = self._zo_subset(closure)
        closure = self._full_batch(closure)
        applied = []   # what has been added to the weights so far, undone on a fault

        def perturb(lo, hi, coefs):
            with phase("perturb"):
                dirs.add_(lo, hi, coefs)
            applied.append((lo, hi, coefs))

        def zo_pass():
            with self._zo_context(dirs.device):
                return extra_pass(closure, subset, name="zo_forward", inference=self.zo_inference_mode)

        def full(n, value):
            return torch.full((n,), value, dtype=torch.float32, device=dirs.device)

        if adaptive:
            dirs.save_()
        try:
            # Zeroth-order estimate: theta +- delta u_i, the restore of direction i
            # fused with the +delta of direction i + 1.
            plus, minus = [], []
            for i in range(m):
                perturb(max(i - 1, 0), i + 1, full(min(i + 1, 2), delta))
                plus.append(zo_pass())
                perturb(i, i + 1, full(1, -2 * delta))
                minus.append(zo_pass())
            plus = torch.stack(plus).float().to(dirs.device)
            minus = torch.stack(minus).float().to(dirs.device)
            coefs = (plus - minus) / (2 * delta)
            g_hat = coefs / m

            # eps = rho g_hat / ||g_hat||, applied together with the last restore.
            # A non-finite loss gives eps = 0 here (no sync needed) and a skipped step below.
            if adaptive:
                with phase("perturb"):
                    dirs.restore_()
                    applied.clear()
                    norm = dirs.sq_norm(g_hat, scale_power=1).sqrt()
                    eps = _finite_or_zero(rho * g_hat / (norm + 1e-12))
                    dirs.add_(0, m, eps, scale_power=2)
            else:
                with phase("perturb"):
                    norm = dirs.sq_norm(g_hat).sqrt()
                    eps = _finite_or_zero(rho * g_hat / (norm + 1e-12))
                perturb(0, m, eps + torch.cat([full(m - 1, 0.0), full(1, delta)]))
                applied[:] = [(0, m, eps)]   # net, so the un-apply is one op

            loss = gradient_pass(closure, dirs.params)
        except BaseException:
            _undo(dirs, applied, adaptive)
            raise
        _undo(dirs, applied, adaptive)

        self.last_seeds = seeds
        self.last_coefficients = coefs.detach()
        self.last_eps = eps.detach()   # eps = sum_i last_eps[i] u_i (times |theta|^2 when adaptive)
        losses = {"the +delta passes": plus, "the -delta passes": minus, "the gradient pass": loss}
        self._finish(losses, dirs)
        return (plus.mean() + minus.mean()) / 2

    def _extra_state(self):
        return super()._extra_state() | {"seed": self.seed, "n_dirs": self.n_dirs}

    def _load_extra_state(self, extra):
        super()._load_extra_state(extra)
        self.seed = int(extra.get("seed", self.seed))
        self.n_dirs = int(extra.get("n_dirs", self.n_dirs))


def _finite_or_zero(t):
    return torch.where(torch.isfinite(t), t, torch.zeros_like(t))


def _undo(dirs, applied, adaptive):
    """Bring the weights back to theta (within float32 rounding; exactly when adaptive)."""
    with torch.no_grad(), phase("restore"):
        if adaptive:
            dirs.restore_()
            dirs.release_()
        else:
            for lo, hi, coefs in reversed(applied):
                dirs.add_(lo, hi, -coefs)
    applied.clear()
