"""Parameters sharded by FSDP2 (torch.distributed.fsdp.fully_shard): each rank
holds rows [start, start + n) of every parameter (DTensor, Shard(0) on a 1-D
device mesh) and perturbs only those, in place, with no gather.

The direction stream is defined by global position (docs/DESIGN.md): element j of
a parameter whose layout offset is o is stream element o + j on every rank.
The local shard of rows [start, ...) is the contiguous run of elements
starting at start · (elements per row), so each rank regenerates exactly the
part of the direction that falls on its shard, and the fused ops take the
shard as a flat buffer with that offset. Sums over the whole model (the
squared norm of ĝ) add the ranks' partial sums: one scalar all-reduce.

ShardedParams offers what the fused directions read of flat.FlatParams:
`buffers` (one flat local shard per parameter), `offsets` (their first stream
indices), `check_bound()` and `sum_over_shards(t)`; and `gathering()`, around
every pass: FSDP2 keeps some parameters gathered after a forward (the root's,
and any module's with reshard_after_forward=False), and a pass would then
compute with the gathered copy of the weights before the last move. So every
pass starts with the FSDP modules resharded, which makes their forward gather
the shards as they are now. The modules are found in the first pass by a
global forward pre-hook, which reshards each as it is met, before its own
forward; later passes reshard the ones found and register no hook.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator, Optional, cast

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, Shard
from torch.nn.modules.module import register_module_forward_pre_hook

if TYPE_CHECKING:
    from .flat import Layout


def is_sharded(p: object) -> bool:
    return isinstance(p, DTensor)


class ShardedParams:
    buffers: list[torch.Tensor]
    offsets: list[int]
    group: Optional[dist.ProcessGroup]

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.buffers, self.offsets, self.group = [], [], None
        self.fsdp_modules: Optional[list[FSDPModule]] = None   # found in the first pass (gathering)
        for p, offset in zip(cast(list[DTensor], layout.params), layout.param_offsets()):
            local, start = _local_shard(p)
            self.buffers.append(local.view(-1))
            self.offsets.append(offset + start)
            group = p.device_mesh.get_group()
            if self.group is not None and group != self.group:
                raise ValueError("params: every parameter must be sharded over the same device mesh")
            self.group = group

    @contextlib.contextmanager
    def gathering(self) -> Iterator[None]:
        """A pass in the block computes with the weights as they are now."""
        if self.fsdp_modules is not None:
            for m in self.fsdp_modules:
                m.reshard()
            yield
            return
        found: dict[FSDPModule, None] = {}

        def find(module: torch.nn.Module, args: Any) -> None:
            for m in module.modules():
                if isinstance(m, FSDPModule) and m not in found:
                    m.reshard()   # before any of them gathers in this pass
                    found[m] = None
        hook = register_module_forward_pre_hook(find)
        try:
            yield
        finally:
            hook.remove()
        self.fsdp_modules = list(found)

    def check_bound(self) -> None:
        """Raise if a parameter's local shard is no longer the storage these buffers view."""
        for p, buf in zip(cast(list[DTensor], self.layout.params), self.buffers):
            if p.to_local().data_ptr() != buf.data_ptr():
                raise RuntimeError("a parameter's local shard moved (model.to(), reshard, "
                                   "load_state_dict(assign=True)): build the optimizer anew")

    def sum_over_shards(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's t (a partial sum over its shards), in place."""
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t


def _local_shard(p: DTensor) -> tuple[torch.Tensor, int]:
    """(the local shard, its first global element index in p)."""
    if p.device_mesh.ndim != 1 or tuple(p.placements) != (Shard(0),):
        raise NotImplementedError(f"params: a DTensor placed as {tuple(p.placements)} on a "
                                  f"{p.device_mesh.ndim}-D mesh; ZOSAM supports fully_shard's "
                                  "Shard(0) on a 1-D mesh")
    local = p.to_local()
    rows, rank, world = p.shape[0], p.device_mesh.get_local_rank(), p.device_mesh.size()
    per_rank = -(-rows // world)   # fully_shard splits dim 0 as torch.chunk does
    start = min(rows, rank * per_rank)
    if local.shape[0] != min(rows, start + per_rank) - start or not local.is_contiguous():
        raise NotImplementedError(f"params: a shard of {tuple(local.shape)} rows of a parameter of "
                                  f"{tuple(p.shape)} is not torch.chunk's rank {rank} of {world}")
    return local.detach(), start * (p.numel() // rows)
