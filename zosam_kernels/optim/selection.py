"""Which tensors a partial ascent perturbs (GradientAscent and ZerothOrderAscent's
`perturb`), picked from a model:

    "norm"      the parameters of its normalization layers (BatchNorm, LayerNorm,
                GroupNorm, InstanceNorm, RMSNorm): SAM-ON's set (Mueller et al.,
                NeurIPS 2023, "Normalization Layers Are All That Sharpness-Aware
                Minimization Needs")
    "last:k"    the parameters of the last k modules that hold parameters of their
                own, in the order the model registers its modules (the output side
                of a network built in forward order)
    a callable  f(name, parameter) -> bool, on model.named_parameters()

Only parameters that require grad are chosen. `biases` gives the chosen tensors
that are a module's `bias`, which ASAM's scaling leaves alone in its authors'
code (GradientAscent's `unscaled`).
"""
from __future__ import annotations

from typing import Any, Callable, Union

import torch

NORMS = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm)

Spec = Union[str, Callable[[str, torch.nn.Parameter], bool]]


def _own(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def select(model: torch.nn.Module, spec: Spec) -> list[torch.nn.Parameter]:
    """The parameters of `model` that `spec` names (module docstring)."""
    if callable(spec):
        chosen = [p for n, p in model.named_parameters() if p.requires_grad and spec(n, p)]
    elif spec == "norm":
        chosen = [p for m in model.modules() if isinstance(m, NORMS) for p in _own(m)]
    elif isinstance(spec, str) and spec.startswith("last:") and spec[5:].isdigit() and int(spec[5:]) > 0:
        holders = [m for m in model.modules() if _own(m)]
        chosen = [p for m in holders[-int(spec[5:]):] for p in _own(m)]
    else:
        raise ValueError(f"perturb: {spec!r} is not a selection; use 'norm', 'last:k' (k >= 1) or a "
                         "callable f(name, parameter) -> bool")
    if not chosen:
        raise ValueError(f"perturb={spec!r} chose no trainable parameter of this model")
    return chosen


def biases(model: torch.nn.Module, chosen: Any) -> list[Any]:
    """The tensors among `chosen` that are some module's `bias`."""
    ids = {id(p) for p in chosen}
    return [m.bias for m in model.modules()
            if isinstance(getattr(m, "bias", None), torch.nn.Parameter) and id(m.bias) in ids]
