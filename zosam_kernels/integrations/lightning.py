"""ZOSAM and the SAM family under Lightning's automatic optimization.

Lightning's automatic loop hands `optimizer_step` a closure that runs
`training_step`, zeroes the gradients and calls backward. Our optimizers call
backward themselves, once per gradient pass, and evaluate some passes without
autograd, so SharpnessAwareModule changes two hooks:

- `backward`: while one of our optimizers steps, it keeps the loss instead of
  backpropagating it; the closure the optimizer sees runs Lightning's closure
  (training_step, zero_grad, this backward) and returns that loss. So every pass
  goes through the strategy's training_step: under DDP through the DDP wrapper
  (whose gradient pass syncs the gradients), under a precision flag inside
  its autocast.
- `optimizer_step`: steps the optimizer itself with that closure, not through
  the precision plugin, whose closure wrapper would fire
  `on_before_optimizer_step` and Lightning's gradient clipping after every pass,
  before any backward. They fire once instead, from a pre-hook of
  `optimizer.base_optimizer`: after the optimizer has unscaled and masked the
  gradient it is about to apply, right before the base step.

What it costs: Lightning's closure always runs training_step with autograd on,
so the optimizer's no-grad passes record a graph they never use (time, not a
result: the trajectory equals our plain loop's bit for bit, tests/test_lightning.py).
Under DDP those passes run inside `no_sync()`, so the DDP wrapper does not
expect a backward after them.
"""
import contextlib
from typing import Any, Callable, Optional, Union, cast

import torch
import lightning.pytorch as pl
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.nn.parallel import DistributedDataParallel

from . import unwrap
from ..optim import Engine

_NO_LOSS = object()   # training_step has not returned a loss in this pass


class SharpnessAwareModule(pl.LightningModule):
    """A LightningModule whose optimizer may be ZOSAM or any optimizer of the
    SAM family, with automatic optimization: subclass it instead of
    LightningModule, write `training_step` as usual (it returns the loss) and
    return one of our optimizers from `configure_optimizers`.

    training_step then runs once per pass (ZOSAM: 2 n_dirs + 1 times a step, the
    last at θ + ε; SAM: twice), and so do on_before_zero_grad,
    on_before_backward and on_after_backward (no gradient exists yet in
    them); on_before_optimizer_step and gradient clipping run once, on the
    gradient about to be applied. Refused, with the reason: precision
    "16-mixed", accumulate_grad_batches > 1. Other optimizers train as under
    LightningModule."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held_loss: Any = None    # _NO_LOSS while a pass runs: `backward` keeps the loss here
        self._hooked: set[int] = set()   # ids of the optimizers whose base step fires the hooks

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        if self._held_loss is _NO_LOSS:
            self._held_loss = loss
        else:
            super().backward(loss, *args, **kwargs)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Union[torch.optim.Optimizer, LightningOptimizer],
                       optimizer_closure: Optional[Callable[[], Any]] = None) -> Any:
        ours = unwrap(optimizer)
        if ours is None:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self._check_trainer()   # at every step: the trainer's settings may change after the first
        if id(ours) not in self._hooked:
            ours.base_optimizer.register_step_pre_hook(self._before_base_step(ours))
            self._hooked.add(id(ours))
        ddp = self.trainer.strategy.model

        def closure() -> Any:
            # The optimizer's extra passes run without autograd; Lightning's closure
            # turns it back on, and a DDP forward with autograd on awaits a backward.
            no_sync = (ddp.no_sync() if isinstance(ddp, DistributedDataParallel) and not torch.is_grad_enabled()
                       else contextlib.nullcontext())
            self._held_loss = _NO_LOSS
            try:
                with no_sync:
                    cast(Callable[[], Any], optimizer_closure)()
                loss = self._held_loss
            finally:
                self._held_loss = None
            if loss is _NO_LOSS:
                raise RuntimeError(f"training_step returned no loss: {type(ours).__name__} evaluates it "
                                   "once per pass and cannot skip a pass; return the loss in every call")
            return loss

        return ours.step(closure)

    def _before_base_step(self, ours: Engine) -> Callable[[torch.optim.Optimizer, Any, Any], None]:
        def hook(base_optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            trainer = self.trainer
            for callback in trainer.callbacks:  # type: ignore[attr-defined]  # a property the stubs miss
                callback.on_before_optimizer_step(trainer, self, ours)
            self.on_before_optimizer_step(ours)
            # Clipped as the base optimizer's: the gradients are the same, unscaled already, and Lightning
            # refuses to clip for an optimizer that unscales itself (ours does, with a grad_scaler of its own).
            self.configure_gradient_clipping(base_optimizer, gradient_clip_val=trainer.gradient_clip_val,
                                             gradient_clip_algorithm=trainer.gradient_clip_algorithm)
        return hook

    def _check_trainer(self) -> None:
        trainer = self.trainer
        precision = trainer.precision_plugin
        if isinstance(precision, MixedPrecision) and precision.scaler is not None:
            raise ValueError(
                f'Trainer(precision="{precision.precision}"): Lightning scales the loss before our backward and '
                "steps through GradScaler.step, which cannot drive a SAM-family optimizer; use "
                'precision="bf16-mixed" (no scaler), or precision="32-true" with fp16 autocast in training_step '
                "and grad_scaler=torch.amp.GradScaler() given to the optimizer")
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                f"Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches}): a SAM-family step evaluates "
                "every pass on one batch, so gradients of earlier batches cannot be accumulated into it; "
                "use accumulate_grad_batches=1 with a larger batch")
