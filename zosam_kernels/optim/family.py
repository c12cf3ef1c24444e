"""The family: the public optimizers as compositions of an ascent and parts
(engine.py), and FAMILY, the one registry of them by the name the command
lines use (zosam-train --optimizer, zosam-bench --methods), with each
paper's defaults. recipes.py, zosam-bench, zosam-train and the tests read it.

Every constructor takes `params`, `base_optimizer` (a torch.optim class, wrapped
and stepped by the engine), the method's options, `masks`, `check_finite`, the
loop's options (engine.LOOP_OPTIONS) and the base optimizer's keyword arguments.
`step(closure)` takes a closure that runs the forward pass and returns the loss
and never calls backward (Engine.step says what it must be).

Any other composition is one Engine call, e.g. ZO-GSAM:

    Engine(params, torch.optim.SGD, ascent=ZerothOrderAscent(rho=0.05, n_dirs=4),
           parts=[SurrogateGap(alpha=0.02)], lr=0.1)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch

from .ascents import CoinFlipAscent, GradientAscent, RandomAscent, ZerothOrderAscent
from .free_ascents import MomentumAscent, NoisyOracleAscent
from .guided import GuidedAscent
from .checks import check_nonnegative
from .engine import Engine
from .parts import DataSelection, LearningRateRadius, LookAhead, Reuse, SurrogateGap
from .perturbation_mask import PerturbationMasking

SGD = torch.optim.SGD


class SAM(Engine):
    """SAM (Foret et al. 2021) and ASAM (adaptive=True, Kwon et al. 2021):
    eps = rho g/||g||, 2 forward + 2 backward per step; rho may differ per
    param group. m_sharpness=True takes eps from each rank's own shard under
    DDP (the SAM paper's m-sharpness), the update from DDP's average."""

    def __init__(self, params: Iterable, base_optimizer: type = SGD, rho: float = 0.05, adaptive: bool = False,
                 masks: Any = None, check_finite: bool = True, m_sharpness: bool = False, **kwargs: Any):
        super().__init__(params, base_optimizer, ascent=GradientAscent(rho, adaptive, m_sharpness),
                         masks=masks, check_finite=check_finite, **kwargs)


class ZOSAM(Engine):
    """ZO-SAM (arXiv 2603.13115): eps from 2 n_dirs no-grad forward passes along
    random directions regenerated from seeds (ascents.ZerothOrderAscent), one
    forward + backward at theta + eps. Returns the mean of the L+ and L-
    losses (the estimate of the loss at theta). zo_batch_fraction and
    zo_autocast make the zeroth-order passes cheaper; backend="unfused"
    materialises the directions (the baseline)."""

    def __init__(self, params: Iterable, base_optimizer: type = SGD, rho: float = 0.05, delta: float = 1e-3,
                 n_dirs: int = 1, seed: int = 0, masks: Any = None, adaptive: bool = False,
                 backend: str = "fused", check_finite: bool = True, zo_batch_fraction: float = 1.0,
                 zo_autocast: Optional[torch.dtype] = None, **kwargs: Any):
        ascent = ZerothOrderAscent(rho, delta, n_dirs, seed, adaptive, backend, zo_batch_fraction, zo_autocast)
        super().__init__(params, base_optimizer, ascent=ascent, masks=masks, check_finite=check_finite, **kwargs)


class ESAM(Engine):
    """ESAM (Du et al., ICLR 2022): SAM with stochastic weight perturbation (beta:
    the share of parameter tensors perturbed, the rest skip the first
    backward) and sharpness-sensitive data selection (gamma: the share of the
    batch in the second backward). beta = gamma = 1 is SAM exactly.
    `last_perturbed` and `last_indices` (None when gamma = 1) tell what the
    last step used."""

    def __init__(self, params: Iterable, base_optimizer: type = SGD, rho: float = 0.05, beta: float = 0.6,
                 gamma: float = 0.5, seed: int = 0, masks: Any = None, adaptive: bool = False,
                 check_finite: bool = True, **kwargs: Any):
        selection = [DataSelection(gamma)] if gamma != 1 else []
        super().__init__(params, base_optimizer, ascent=GradientAscent(rho, adaptive, beta=beta, seed=seed),
                         parts=selection, masks=masks, check_finite=check_finite, **kwargs)

    @property
    def last_indices(self) -> Optional[torch.Tensor]:
        return self.parts[0].last_indices if self.parts else None


class LookSAM(Engine):
    """LookSAM (Liu et al., CVPR 2022): SAM every k-th step, in between one
    forward + backward and the kept g_v (parts.LookAhead)."""

    def __init__(self, params: Iterable, base_optimizer: type = SGD, rho: float = 0.05, k: int = 5,
                 alpha: float = 0.7, masks: Any = None, check_finite: bool = True, **kwargs: Any):
        super().__init__(params, base_optimizer, ascent=GradientAscent(rho), parts=[LookAhead(k, alpha)],
                         masks=masks, check_finite=check_finite, **kwargs)


class GSAM(Engine):
    """GSAM (Zhuang et al., ICLR 2022): SAM's update minus alpha times the part of
    the plain gradient orthogonal to it (parts.SurrogateGap); with rho_min,
    rho follows the learning rate (parts.LearningRateRadius)."""

    def __init__(self, params: Iterable, base_optimizer: type = SGD, rho: float = 0.05, alpha: float = 0.02,
                 rho_min: Optional[float] = None, lr_max: Optional[float] = None, lr_min: float = 0.0,
                 masks: Any = None, adaptive: bool = False, check_finite: bool = True, **kwargs: Any):
        for name, value in (("lr_min", lr_min), ("lr_max", lr_max)):
            if value is not None:
                check_nonnegative(name, value)
        parts: list = [SurrogateGap(alpha)]
        if rho_min is not None:
            parts.append(LearningRateRadius(rho_min, lr_max, lr_min))
        super().__init__(params, base_optimizer, ascent=GradientAscent(rho, adaptive), parts=parts,
                         masks=masks, check_finite=check_finite, **kwargs)


class SSAM(Engine):
    """SSAM (Mi et al., NeurIPS 2022): SAM whose eps touches only a perturbation
    mask of the active weights, from the Fisher (mask="fisher", SSAM-F) or
    by drop and grow (mask="dynamic", SSAM-D, needs total_steps)."""

    def __init__(self, params: Iterable, base_optimizer: type = SGD, rho: float = 0.1, sparsity: float = 0.5,
                 mask: str = "fisher", update_interval: int = 1950, drop_rate: float = 0.5,
                 total_steps: Optional[int] = None, seed: int = 0, masks: Any = None, check_finite: bool = True,
                 **kwargs: Any):
        part = PerturbationMasking(sparsity, mask, update_interval, drop_rate, total_steps, seed)
        super().__init__(params, base_optimizer, ascent=GradientAscent(rho), parts=[part], masks=masks,
                         check_finite=check_finite, **kwargs)


class ZOLookSAM(Engine):
    """ZO-LookSAM: ZO-SAM whose eps is found every k-th step and reused in between
    (parts.Reuse): the in-between steps cost SGD's passes plus two passes over
    the flat buffer, and keep no parameter-sized buffer."""

    def __init__(self, params: Iterable, base_optimizer: type = SGD, rho: float = 0.05, k: int = 5,
                 delta: float = 1e-3, n_dirs: int = 1, seed: int = 0, masks: Any = None, adaptive: bool = False,
                 backend: str = "fused", check_finite: bool = True, **kwargs: Any):
        ascent = ZerothOrderAscent(rho, delta, n_dirs, seed, adaptive, backend)
        super().__init__(params, base_optimizer, ascent=ascent, parts=[Reuse(k)], masks=masks,
                         check_finite=check_finite, **kwargs)


class ZOSSAM(Engine):
    """ZO-SSAM: ZO-SAM whose directions are restricted to an SSAM perturbation mask."""

    def __init__(self, params: Iterable, base_optimizer: type = SGD, rho: float = 0.05, sparsity: float = 0.5,
                 mask: str = "fisher", update_interval: int = 1950, drop_rate: float = 0.5,
                 total_steps: Optional[int] = None, delta: float = 1e-3, n_dirs: int = 1, seed: int = 0,
                 masks: Any = None, adaptive: bool = False, backend: str = "fused", check_finite: bool = True,
                 **kwargs: Any):
        ascent = ZerothOrderAscent(rho, delta, n_dirs, seed, adaptive, backend)
        part = PerturbationMasking(sparsity, mask, update_interval, drop_rate, total_steps, seed)
        super().__init__(params, base_optimizer, ascent=ascent, parts=[part], masks=masks,
                         check_finite=check_finite, **kwargs)


def zo_gsam(params: Iterable, base_optimizer: type = SGD, rho: float = 0.05, alpha: float = 0.02,
            delta: float = 1e-3, n_dirs: int = 1, seed: int = 0, masks: Any = None, check_finite: bool = True,
            **kwargs: Any) -> Engine:
    """ZO-GSAM: GSAM's surgery on the zeroth-order estimate g_hat."""
    return Engine(params, base_optimizer, ascent=ZerothOrderAscent(rho, delta, n_dirs, seed),
                  parts=[SurrogateGap(alpha)], masks=masks, check_finite=check_finite, **kwargs)


def zo_esam(params: Iterable, base_optimizer: type = SGD, rho: float = 0.05, gamma: float = 0.5,
            delta: float = 1e-3, n_dirs: int = 1, seed: int = 0, masks: Any = None, check_finite: bool = True,
            **kwargs: Any) -> Engine:
    """ZO-ESAM: ESAM's data selection after the zeroth-order ascent."""
    return Engine(params, base_optimizer, ascent=ZerothOrderAscent(rho, delta, n_dirs, seed),
                  parts=[DataSelection(gamma)], masks=masks, check_finite=check_finite, **kwargs)


def msam(params: Iterable, base_optimizer: type = SGD, rho: float = 0.3, sign: int = -1, masks: Any = None,
         check_finite: bool = True, **kwargs: Any) -> Engine:
    """MSAM (Becker et al. 2024): eps along the base optimizer's momentum, no extra pass."""
    return Engine(params, base_optimizer, ascent=MomentumAscent(rho, sign), masks=masks,
                  check_finite=check_finite, **kwargs)


def rwp(params: Iterable, base_optimizer: type = SGD, rho: float = 0.05, seed: int = 0, masks: Any = None,
        check_finite: bool = True, **kwargs: Any) -> Engine:
    """Random weight perturbation: eps = rho u/||u||, one direction of the stream, no extra pass."""
    return Engine(params, base_optimizer, ascent=RandomAscent(rho, seed), masks=masks, check_finite=check_finite,
                  **kwargs)


def zosam_coin(params: Iterable, base_optimizer: type = SGD, rho: float = 0.05, delta: float = 1e-3,
               n_dirs: int = 1, seed: int = 0, masks: Any = None, check_finite: bool = True,
               **kwargs: Any) -> Engine:
    """ZO-SAM's control: its own passes and directions, each coefficient given a coin-flip sign."""
    return Engine(params, base_optimizer, ascent=CoinFlipAscent(rho, delta, n_dirs, seed), masks=masks,
                  check_finite=check_finite, **kwargs)


def noisy_oracle_sam(params: Iterable, base_optimizer: type = SGD, rho: float = 0.05, cosine: float = 0.5,
                     seed: int = 0, masks: Any = None, check_finite: bool = True, **kwargs: Any) -> Engine:
    """An instrument: SAM's eps mixed with a random orthogonal direction, cos(eps, grad) = cosine."""
    return Engine(params, base_optimizer, ascent=NoisyOracleAscent(rho, cosine, seed), masks=masks,
                  check_finite=check_finite, **kwargs)


def guided_zosam(params: Iterable, base_optimizer: type = SGD, rho: float = 0.05, delta: float = 1e-3,
                 n_dirs: int = 1, prior: str = "momentum", seed: int = 0, masks: Any = None,
                 check_finite: bool = True, **kwargs: Any) -> Engine:
    """The guided zeroth-order ascent: finite differences along a free prior and n_dirs directions."""
    return Engine(params, base_optimizer, ascent=GuidedAscent(rho, delta, n_dirs, prior, seed), masks=masks,
                  check_finite=check_finite, **kwargs)


@dataclass(frozen=True)
class Member:
    """A registry entry: how to build it, and the defaults its paper uses."""
    build: Optional[Callable[..., Engine]]   # None: the plain base optimizer
    defaults: dict = field(default_factory=dict)
    needs_total_steps: bool = False          # a schedule over the run (SSAM-D's drop rate)


FAMILY: dict[str, Member] = {
    "sgd": Member(None),
    "sam": Member(SAM, dict(rho=0.05)),
    "zosam": Member(ZOSAM, dict(rho=0.05, delta=1e-3)),
    "esam": Member(ESAM, dict(rho=0.05, beta=0.6, gamma=0.5)),
    "looksam": Member(LookSAM, dict(rho=0.05, k=5, alpha=0.7)),
    "gsam": Member(GSAM, dict(rho=0.05, alpha=0.02)),
    "ssam-f": Member(SSAM, dict(rho=0.1, sparsity=0.5)),
    "ssam-d": Member(SSAM, dict(rho=0.1, sparsity=0.5, mask="dynamic"), needs_total_steps=True),
    "zolooksam": Member(ZOLookSAM, dict(rho=0.05, k=5)),
    "zossam": Member(ZOSSAM, dict(rho=0.05, sparsity=0.5)),
    "zogsam": Member(zo_gsam, dict(rho=0.05, alpha=0.02)),
    "zoesam": Member(zo_esam, dict(rho=0.05, gamma=0.5)),
    "msam": Member(msam, dict(rho=0.3)),
    "rwp": Member(rwp, dict(rho=0.05)),
    "zosam-coin": Member(zosam_coin, dict(rho=0.05, delta=1e-3)),
    "oracle": Member(noisy_oracle_sam, dict(rho=0.05, cosine=0.5)),
    "zosam-guided": Member(guided_zosam, dict(rho=0.05, delta=1e-3, n_dirs=1, prior="momentum")),
}
