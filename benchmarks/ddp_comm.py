"""Communication and speed of ZO-SAM under DDP (or FSDP2) against SGD under the same.

    torchrun --nproc_per_node 2 benchmarks/ddp_comm.py [--model resnet20] [--batch-size 128] [--steps 6]
    torchrun --nproc_per_node 1 benchmarks/ddp_comm.py ...   # the same global batch on one process
    torchrun --nproc_per_node 2 benchmarks/ddp_comm.py --fsdp # fully_shard every layer and the model

Counts, per step and rank, the bytes that go through torch.distributed's
Python-level collectives (the optimizers' all-reduces, DDP's broadcast of the
model's buffers before every forward) and adds the gradient's all-reduce that
DDP's reducer runs in C++ (one per backward: the trainable parameters'
bytes); with --fsdp, FSDP2's all-gathers of the parameters (one per layer
and forward) and reduce-scatters of the gradients instead. Times steps/s on
the global batch, split over the ranks. Rank 0 prints.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import zosam_kernels as zk
from zosam_kernels.data import synthetic_cifar
from zosam_kernels.models import MODELS

import harness


class Counter:
    """Bytes through dist.all_reduce and DDP's buffer broadcast, by patching them."""

    def __init__(self):
        self.bytes = 0
        self._count("all_reduce", lambda tensor, *a, **k: [tensor])
        self._count("_broadcast_coalesced", lambda group, tensors, *a, **k: tensors)
        # FSDP2's collectives: all_gather_single / reduce_scatter_single in newer
        # torch, all_gather_into_tensor / reduce_scatter_tensor in older (2.11)
        self._count(self._first("all_gather_single", "all_gather_into_tensor"),
                    lambda output, input, *a, **k: [output])
        self._count(self._first("reduce_scatter_single", "reduce_scatter_tensor"),
                    lambda output, input, *a, **k: [input])

    @staticmethod
    def _first(*names):
        return next(name for name in names if hasattr(dist, name))

    def _count(self, name, tensors_of):
        original = getattr(dist, name)

        def counted(*args, **kwargs):
            self.bytes += sum(t.numel() * t.element_size() for t in tensors_of(*args, **kwargs))
            return original(*args, **kwargs)
        setattr(dist, name, counted)


def run(method, args, counter, rank, world):
    torch.manual_seed(0)
    model = MODELS[args.model]()
    if args.fsdp:
        from torch.distributed.fsdp import fully_shard
        for layer in model.modules():
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                fully_shard(layer)
        fully_shard(model)
    else:
        model = DDP(model)
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
    def steps():
        dist.barrier()
        for _ in range(args.steps):
            step()
        dist.barrier()
    seconds = harness.timed(steps, next(model.parameters()).device) / args.steps
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    reducer = grad_bytes if world > 1 and not args.fsdp else 0   # DDP's C++ all-reduce, uncounted
    return counter.bytes / args.steps + reducer, seconds


def main(argv=None):
    p = harness.parser(__doc__)
    p.add_argument("--model", default="resnet20", choices=sorted(MODELS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--n-dirs", type=int, default=1)
    p.add_argument("--fsdp", action="store_true", help="FSDP2 (fully_shard) instead of DDP")
    args = p.parse_args(argv)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    counter = Counter()
    rows = {m: run(m, args, counter, rank, world) for m in ("sgd", "zosam")}
    if rank == 0:
        print(f"{args.model}, {'FSDP2' if args.fsdp else 'DDP'}, global batch {args.batch_size}, {world} process(es) x "
              f"{torch.get_num_threads()} thread(s), gloo, torch {torch.__version__}, n_dirs {args.n_dirs}")
        print("| method | bytes per step and rank | beyond SGD | s/step | steps/s |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for m, (b, s) in rows.items():
            print(f"| {m} | {b:,.0f} | {b - rows['sgd'][0]:,.0f} | {s:.3f} | {1 / s:.2f} |")
        harness.save(args, [dict(method=m, bytes_per_step=b, beyond_sgd=b - rows["sgd"][0], s_per_step=s,
                                 world=world, fsdp=args.fsdp) for m, (b, s) in rows.items()])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
