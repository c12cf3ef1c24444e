"""The ranks that train one model together (torch.distributed, DDP): what the
optimizers must agree on beyond the gradient, which DDP averages itself.

ZO-SAM's coefficients are means of losses over the batch, so the global
batch's are the mean of the ranks' (2m scalars per step, one all-reduce);
every rank then regenerates the same directions from the same seeds and
applies the same ε, and the replicas stay bit-identical. Whether a step is
taken must be decided together too: one rank's non-finite loss skips the step
on every rank.
"""
from typing import Any, Sequence, cast

import torch
import torch.distributed as dist

from ..sharded import is_sharded


class Replicas:
    """process_group: the group to agree with; None: the default group when
    torch.distributed is initialised, else this process alone; False: this
    process alone (ranks that train models of their own)."""

    def __init__(self, process_group: Any = None) -> None:
        if process_group is None and dist.is_available() and dist.is_initialized():
            process_group = dist.group.WORLD
        self.group = None if process_group is False else process_group
        self.size = 1 if self.group is None else dist.get_world_size(self.group)
        self.checked = self.size == 1

    def check_same_(self, params: Sequence[torch.Tensor]) -> None:
        """Once, at the first step: raise on every rank unless all hold the same
        weights (a data-parallel run), which a default group does not promise:
        averaging the losses of ranks that train models of their own would be
        a silent error. Sharded parameters (FSDP2) differ by design: not checked."""
        if self.checked:
            return
        local = [p.detach() for p in params if not is_sharded(p)]
        if local:
            total = cast(torch.Tensor, sum(p.double().sum() for p in local))
            squares = cast(torch.Tensor, sum(p.double().square().sum() for p in local))
            spread = torch.stack([total, squares, -total, -squares])
            dist.all_reduce(spread, op=dist.ReduceOp.MAX, group=self.group)
            if not bool((spread[:2] == -spread[2:]).all()):
                raise ValueError(f"params: the {self.size} ranks of the process group hold different "
                                 "weights; the optimizer averages over the ranks of a data-parallel run "
                                 "(DDP). For ranks that train models of their own, pass process_group=False")
        self.checked = True

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        """t = its mean over the ranks, in place; returns t."""
        if self.size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
            t.div_(self.size)
        return t

    def all_(self, flags: torch.Tensor) -> torch.Tensor:
        """flags (a bool tensor) = whether they hold on every rank."""
        if self.size == 1:
            return flags
        agreed = flags.to(torch.int32)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN, group=self.group)
        return agreed.bool()
