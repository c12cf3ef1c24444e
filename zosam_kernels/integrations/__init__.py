"""The package's optimizers inside the trainers people use.

Our closure runs the forward pass and returns the loss; the optimizer calls
backward itself, as many times as its method needs (ZO-SAM: once, after 2m
no-grad passes; SAM: twice). Trainers are built the other way round: Lightning
hands the optimizer a closure that also zeroes the gradients and calls
backward, the Hugging Face Trainer and Accelerate call backward and then
`optimizer.step()` with no closure. Each module here adapts one of them:

    lightning.py    SharpnessAwareModule: a LightningModule base class for automatic
                    optimization (manual optimization needs nothing: README)
    hf.py           SharpnessAwareTrainer: a transformers.Trainer whose training_step
                    takes the step
    accelerate.py   prepare(): accelerator.prepare, refusing what cannot work

They work for every member of the family (optim.is_engine), through its
public API only: step(closure), base_optimizer, state_dict. Each needs its
extra (pip install 'zosam_kernels[lightning]' or '[hf]').
"""
from typing import Optional

from ..optim import Engine, is_engine


def unwrap(optimizer: object) -> Optional[Engine]:
    """The family's optimizer inside a trainer's wrappers (Lightning's
    LightningOptimizer, whose class subclasses the wrapped one's, and
    Accelerate's AcceleratedOptimizer hold it as `.optimizer`), or None if
    there is none of ours."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer if is_engine(optimizer) else None
