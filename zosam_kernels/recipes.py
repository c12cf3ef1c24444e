"""Every optimizer of the package by the name the command lines use
(zosam-train --optimizer, zosam-bench --methods), with its paper's defaults
(README, "The SAM family"). One table, so the benchmark and the training
command build the same optimizer from the same name.
"""
import inspect

import torch

from .optim import ESAM, GSAM, SAM, SSAM, ZOSAM, ZOSSAM, LookSAM, ZOLookSAM
from .optim.base import LOOP_OPTIONS

# name -> (class, its defaults); "sgd" is the plain base optimizer
OPTIMIZERS = {
    "sgd": (None, {}),
    "sam": (SAM, dict(rho=0.05)),
    "zosam": (ZOSAM, dict(rho=0.05, delta=1e-3)),
    "esam": (ESAM, dict(rho=0.05, beta=0.6, gamma=0.5)),
    "looksam": (LookSAM, dict(rho=0.05, k=5, alpha=0.7)),
    "gsam": (GSAM, dict(rho=0.05, alpha=0.02)),
    "ssam-f": (SSAM, dict(rho=0.1, sparsity=0.5)),
    "ssam-d": (SSAM, dict(rho=0.1, sparsity=0.5, mask="dynamic")),
    "zolooksam": (ZOLookSAM, dict(rho=0.05, k=5)),
    "zossam": (ZOSSAM, dict(rho=0.05, sparsity=0.5)),
}


def options_of(name):
    """The keyword options the optimizer `name` takes besides the base optimizer's
    (its own and the training loop's, optim/base.py LOOP_OPTIONS)."""
    cls = OPTIMIZERS[name][0]
    if cls is None:
        return set()
    own = {n for n, p in inspect.signature(cls.__init__).parameters.items()
           if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)} - {"self", "params", "base_optimizer"}
    return own | set(LOOP_OPTIONS)


def make_optimizer(name, params, base=torch.optim.SGD, base_kwargs=None, **options):
    """The optimizer `name` over `params`: its defaults, overridden by `options`,
    wrapped around `base(**base_kwargs)`. An option the optimizer does not take
    is an error that names it."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: unknown {name!r}; choose from {', '.join(OPTIMIZERS)}")
    cls, defaults = OPTIMIZERS[name]
    base_kwargs = dict(base_kwargs or {})
    unknown = sorted(set(options) - options_of(name))
    if unknown:
        raise ValueError(f"optimizer {name!r} does not take {unknown}; it takes "
                         f"{sorted(options_of(name)) or 'only the base optimizer options'}")
    if cls is None:
        return base(params, **base_kwargs)
    return cls(params, base, **{**defaults, **options}, **base_kwargs)
