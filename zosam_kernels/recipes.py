"""Build any member of the family by the name the command lines use
(zosam-train --optimizer, zosam-bench --methods) at its paper's defaults
(the registry optim.family.FAMILY; README, "The SAM family"), so the
benchmark and the training command build the same optimizer from the same
name.
"""
import torch

from .optim.family import FAMILY


def options_of(name):
    """The keyword options the optimizer `name` takes besides the base optimizer's
    (its own, masks, check_finite and the training loop's, optim/engine.py LOOP_OPTIONS)."""
    return FAMILY[name].takes()


def make_optimizer(name, params, base=torch.optim.SGD, base_kwargs=None, **options):
    """The optimizer `name` over `params`: its defaults, overridden by `options`,
    wrapped around `base(**base_kwargs)`. An option the optimizer does not take
    is an error that names it."""
    if name not in FAMILY:
        raise ValueError(f"optimizer: unknown {name!r}; choose from {', '.join(FAMILY)}")
    member = FAMILY[name]
    base_kwargs = dict(base_kwargs or {})
    unknown = sorted(set(options) - options_of(name))
    if unknown:
        raise ValueError(f"optimizer {name!r} does not take {unknown}; it takes "
                         f"{sorted(options_of(name)) or 'only the base optimizer options'}")
    return member.build(params, base, **options, **base_kwargs)
