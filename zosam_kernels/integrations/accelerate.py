"""ZOSAM and the SAM family with Hugging Face Accelerate.

`accelerator.prepare(model, optimizer)` works as it is with our optimizers:
the AcceleratedOptimizer passes `step(closure)` on, under DDP the closure's
forward passes go through the DDP wrapper (whose gradient pass syncs the
gradients), and mixed_precision="bf16" is autocast in every pass. Two settings
of the Accelerator cannot work, and plain accelerator.prepare would not say so:
gradient accumulation (the AcceleratedOptimizer skips `step(closure)` on the
batches it accumulates, so their data would be dropped) and fp16 (its
GradScaler steps the optimizer itself). And on several processes the model
must be prepared before the optimizer is built: wrapping it in DDP leaves its
parameters outside the flat buffer of an optimizer built before. prepare()
refuses these, with the reason, and is otherwise accelerator.prepare:

    model = prepare(accelerator, model)
    opt = prepare(accelerator, zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1))
"""
import functools
from typing import Any, Callable, Optional

import torch

from . import unwrap
from ..optim import Engine


def prepare(accelerator: Any, *objects: Any, **kwargs: Any) -> Any:
    """accelerator.prepare(*objects, **kwargs), after refusing the settings that
    cannot drive the package's optimizers among `objects`; the settings are
    checked again at every step of a prepared optimizer (an Accelerator's
    gradient_accumulation_steps may be set after prepare)."""
    modules = any(isinstance(o, torch.nn.Module) for o in objects)
    ours: Optional[Engine]
    for ours in filter(None, map(unwrap, objects)):
        _refuse(accelerator, ours, modules)
    prepared = accelerator.prepare(*objects, **kwargs)
    for wrapper in prepared if isinstance(prepared, tuple) else (prepared,):
        ours = unwrap(wrapper)
        if ours is not None and wrapper is not ours:
            wrapper.step = _checked(accelerator, ours, wrapper.step)
    return prepared


def _checked(accelerator: Any, ours: Engine, step: Callable[..., Any]) -> Callable[..., Any]:
    """The wrapper's step, refusing first what cannot work (before the wrapper skips a batch)."""
    @functools.wraps(step)
    def checked(*args: Any, **kwargs: Any) -> Any:
        _refuse(accelerator, ours, modules=False)
        return step(*args, **kwargs)
    return checked


def _refuse(accelerator: Any, ours: Engine, modules: bool) -> None:
    name = type(ours).__name__
    if modules and accelerator.num_processes > 1:
        raise ValueError(
            f"prepare(accelerator, model, {name}(...)) on {accelerator.num_processes} processes: wrapping the "
            "model in DDP leaves its parameters outside the flat buffer of an optimizer built before; "
            "prepare the model first, then build the optimizer on its parameters and prepare that")
    if accelerator.gradient_accumulation_steps != 1:
        raise ValueError(
            f"Accelerator(gradient_accumulation_steps={accelerator.gradient_accumulation_steps}): a {name} "
            "step evaluates every pass on one batch, and accumulating skips step(closure) on the other "
            "batches, dropping them; use gradient_accumulation_steps=1 with a larger batch")
    if accelerator.scaler is not None:
        raise ValueError(
            f"Accelerator(mixed_precision={accelerator.mixed_precision!r}): its GradScaler steps the optimizer "
            f"itself, which cannot drive {name} (it runs its own backward); use mixed_precision='bf16'")
