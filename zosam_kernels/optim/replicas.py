"""The ranks that train one model together (torch.distributed, DDP): what the
optimizers must agree on beyond the gradient, which DDP averages itself.

ZO-SAM's coefficients are means of losses over the batch, so the global
batch's are the mean of the ranks' (2m scalars per step, one all-reduce);
every rank then regenerates the same directions from the same seeds and
applies the same ε, and the replicas stay bit-identical. Whether a step is
taken must be decided together too: one rank's non-finite loss skips the step
on every rank.
"""
import torch
import torch.distributed as dist


class Replicas:
    """process_group: the group to agree with; None: the default group when
    torch.distributed is initialised, else this process alone."""

    def __init__(self, process_group=None):
        if process_group is None and dist.is_available() and dist.is_initialized():
            process_group = dist.group.WORLD
        self.group = process_group
        self.size = 1 if process_group is None else dist.get_world_size(process_group)

    def mean_(self, t):
        """t = its mean over the ranks, in place; returns t."""
        if self.size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
            t.div_(self.size)
        return t

    def all_(self, flags):
        """flags (a bool tensor) = whether they hold on every rank."""
        if self.size == 1:
            return flags
        agreed = flags.to(torch.int32)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN, group=self.group)
        return agreed.bool()
