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

from typing import Any, Callable, Optional, Union

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


def chosen_tensors(tensors: Any) -> Optional[frozenset[int]]:
    """The ids of the tensors an ascent is kept to (perturb=), None for all. A selection by
    name or module (selection.py) must be resolved against the model first."""
    if tensors is None:
        return None
    if isinstance(tensors, str) or callable(tensors):
        raise TypeError(f"perturb={tensors!r} names parts of a model: resolve it first, "
                        "zk.optim.select(model, spec), or build through make_optimizer(..., model=model)")
    tensors = list(tensors)
    if not tensors or not all(torch.is_tensor(t) for t in tensors):
        raise ValueError("perturb: give a non-empty collection of the model's parameters (None: all)")
    return frozenset(map(id, tensors))


def check_chosen(chosen: Optional[frozenset[int]], layout: Any) -> None:
    if chosen is not None and not chosen & {id(p) for p in layout.params}:
        raise ValueError("perturb: none of these tensors is a trainable parameter of the optimizer")
