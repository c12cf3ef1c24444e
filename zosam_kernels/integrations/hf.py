"""ZOSAM and the SAM family in the Hugging Face Trainer (transformers 5.x).

The Trainer's loop calls `training_step` (forward and backward), clips, then
`optimizer.step()` with no closure. SharpnessAwareTrainer takes the whole step
in training_step, with `compute_loss` as the closure, and hands the loop a
stand-in optimizer (StepTakenInTrainingStep) whose step has nothing left to do;
the stand-in shares the optimizer's param_groups and state, so the LR
scheduler, checkpoints (optimizer.pt) and resuming see the real optimizer.
`args.max_grad_norm` clips the gradient the optimizer applies, right before
its base step (a pre-hook of `optimizer.base_optimizer`), as the Trainer
clips before its optimizer step.
"""
from typing import Any, Callable, Optional, Union, cast

import torch
from transformers import Trainer

from . import unwrap
from ..optim import Engine


class StepTakenInTrainingStep(torch.optim.Optimizer):
    """What the Trainer's loop steps after training_step, where the step was
    taken: step() does nothing; everything else is the optimizer's."""

    def __init__(self, optimizer: Engine) -> None:
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self.optimizer = optimizer
        self.param_groups, self.state = optimizer.param_groups, optimizer.state   # shared, not copied

    def step(self, closure: Optional[Callable[[], float]] = None) -> None:  # type: ignore[override]  # refuses closures
        if closure is not None:
            raise TypeError(f"this Trainer takes the step of {type(self.optimizer).__name__} in training_step; "
                            "step() takes no closure")

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)


class SharpnessAwareTrainer(Trainer):
    """A transformers.Trainer for ZOSAM and the SAM family: pass the optimizer as
    `optimizers=(ZOSAM(model.parameters(), torch.optim.AdamW, lr=...), None)`
    or `optimizer_cls_and_kwargs=(ZOSAM, {...})`. compute_loss is evaluated once
    per pass (ZOSAM: 2 n_dirs + 1 times a step); the logged loss is what the
    optimizer's step returns (ZOSAM: the mean of its zeroth-order losses, the
    estimate at θ). Refused, with the reason: gradient_accumulation_steps > 1,
    fp16 (bf16 works). Other optimizers train as under Trainer."""

    def create_optimizer(self, model: Optional[torch.nn.Module] = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        ours = unwrap(optimizer)
        if ours is None or isinstance(optimizer, StepTakenInTrainingStep):
            return optimizer
        self._check_args(ours)
        if self.args.max_grad_norm > 0:
            ours.base_optimizer.register_step_pre_hook(self._clip(ours))
        self._sharpness_aware = ours
        self.optimizer = StepTakenInTrainingStep(ours)
        return self.optimizer

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Union[torch.Tensor, Any]],
                      num_items_in_batch: Optional[Union[torch.Tensor, int]] = None) -> torch.Tensor:
        ours = getattr(self, "_sharpness_aware", None)
        if ours is None:
            return super().training_step(model, inputs, num_items_in_batch)
        self._check_args(ours)   # the arguments may change after the optimizer was made
        model.train()
        inputs = self._prepare_inputs(inputs)

        def closure() -> Any:
            with self.compute_loss_context_manager():
                return self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)

        return cast(torch.Tensor, ours.step(closure).detach())

    def _clip(self, ours: Engine) -> Callable[[torch.optim.Optimizer, Any, Any], None]:
        def hook(base_optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            params = [p for group in ours.param_groups for p in group["params"]]
            self._grad_norm = torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)
        return hook

    def _clip_grad_norm(self, model: torch.nn.Module) -> Any:
        """The Trainer's clipping, after training_step: done in the step, report its norm."""
        if getattr(self, "_sharpness_aware", None) is None:
            return super()._clip_grad_norm(model)  # type: ignore[no-untyped-call, unused-ignore]  # unannotated
        return self._grad_norm

    def _check_args(self, ours: Engine) -> None:
        name, args = type(ours).__name__, self.args
        if args.gradient_accumulation_steps != 1:
            raise ValueError(
                f"TrainingArguments(gradient_accumulation_steps={args.gradient_accumulation_steps}): a {name} step "
                "evaluates every pass on one batch, so gradients of earlier batches cannot be accumulated into "
                "it; use gradient_accumulation_steps=1 with a larger per_device_train_batch_size")
        if args.fp16:
            raise ValueError(
                f"TrainingArguments(fp16=True): the Trainer's GradScaler scales the loss and steps the "
                f"optimizer itself, which cannot drive {name} (it runs its own backward); use bf16=True")
        if args.n_gpu > 1:
            raise ValueError(f"{args.n_gpu} GPUs in one process (torch.nn.DataParallel): {name} needs one "
                             "process per device; launch with torchrun or accelerate launch")
