"""Communication and speed of ZO-SAM under DDP against SGD under DDP.

    torchrun --nproc_per_node 2 benchmarks/ddp_comm.py [--model resnet20] [--batch-size 128] [--steps 6]
    torchrun --nproc_per_node 1 benchmarks/ddp_comm.py ...   # the same global batch on one process

Counts, per step and rank, the bytes that go through torch.distributed's
Python-level collectives (the optimizers' all-reduces, DDP's broadcast of the
model's buffers before every forward) and adds the gradient's all-reduce that
DDP's reducer runs in C++ (one per backward: the trainable parameters'
bytes); times steps/s on the global batch, split over the ranks. Rank 0 prints.
"""
import argparse
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import zosam_kernels as zk
from zosam_kernels.data import synthetic_cifar
from zosam_kernels.models import MODELS


class Counter:
    """Bytes through dist.all_reduce and DDP's buffer broadcast, by patching them."""

    def __init__(self):
        self.bytes = 0
        all_reduce, broadcast = dist.all_reduce, dist._broadcast_coalesced

        def counted_all_reduce(tensor, *args, **kwargs):
            self.bytes += tensor.numel() * tensor.element_size()
            return all_reduce(tensor, *args, **kwargs)

        def counted_broadcast(group, tensors, *args, **kwargs):
            self.bytes += sum(t.numel() * t.element_size() for t in tensors)
            return broadcast(group, tensors, *args, **kwargs)
        dist.all_reduce, dist._broadcast_coalesced = counted_all_reduce, counted_broadcast


def run(method, args, counter, rank, world):
    torch.manual_seed(0)
    model = DDP(MODELS[args.model]())
    kw = dict(lr=0.05, momentum=0.9)
    if method == "sgd":
        opt = torch.optim.SGD(model.parameters(), **kw)
    else:
        opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, n_dirs=args.n_dirs, **kw)
    data = synthetic_cifar(args.batch_size, seed=1)

    def step():
        x, y = next(data)
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        closure = lambda: F.cross_entropy(model(x), y)  # noqa: E731
        if method == "sgd":
            opt.zero_grad()
            closure().backward()
            opt.step()
        else:
            opt.step(closure)
    step()   # warm-up
    counter.bytes = 0
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    dist.barrier()
    seconds = (time.perf_counter() - t0) / args.steps
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return counter.bytes / args.steps + (grad_bytes if world > 1 else 0), seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20", choices=sorted(MODELS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--n-dirs", type=int, default=1)
    args = p.parse_args(argv)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    counter = Counter()
    rows = {m: run(m, args, counter, rank, world) for m in ("sgd", "zosam")}
    if rank == 0:
        print(f"{args.model}, global batch {args.batch_size}, {world} process(es) x "
              f"{torch.get_num_threads()} thread(s), gloo, torch {torch.__version__}, n_dirs {args.n_dirs}")
        print("| method | bytes per step and rank | beyond SGD | s/step | steps/s |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for m, (b, s) in rows.items():
            print(f"| {m} | {b:,.0f} | {b - rows['sgd'][0]:,.0f} | {s:.3f} | {1 / s:.2f} |")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
