"""Train the CIFAR ResNet with ZO-SAM under DistributedDataParallel.

    torchrun --nproc_per_node 2 examples/ddp_train.py --steps 50        # CPU: gloo
    torchrun --nproc_per_node 8 examples/ddp_train.py --batch-size 512  # GPUs: NCCL, one per rank

Each rank trains on its own shard of every global batch (a DistributedSampler
does the same for a real dataset). The optimizer needs nothing more than the
DDP-wrapped model's parameters: it finds the default process group, averages
its 2m zeroth-order losses over the ranks (one all-reduce of 2m scalars per
step), so every rank applies the same ε, and DDP averages the gradient of the
one backward pass as for SGD. The replicas stay bit-identical; rank 0 checks
that at the end.
"""
import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import zosam_kernels as zk
from zosam_kernels.data import synthetic_cifar
from zosam_kernels.models import MODELS


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="resnet20", choices=sorted(MODELS))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128, help="global batch, split over the ranks")
    p.add_argument("--n-dirs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--log-every", type=int, default=10)
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {world} ranks")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)   # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = DDP(MODELS[args.model]().to(device), device_ids=[device.index] if cuda else None)
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, rho=0.05, delta=1e-3, n_dirs=args.n_dirs,
                   lr=args.lr, momentum=0.9, weight_decay=5e-4)
    data = synthetic_cifar(args.batch_size, seed=1)   # the same global batches on every rank
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = next(data)
        x, y = x.chunk(world)[rank].to(device), y.chunk(world)[rank].to(device)
        loss = opt.step(lambda: F.cross_entropy(model(x), y))
        if rank == 0 and (step % args.log_every == 0 or step == args.steps):
            print(f"step {step:4d}  loss {float(loss):.4f}  "
                  f"{(time.perf_counter() - t0) / step:.3f} s/step on {world} ranks", flush=True)
    flat = torch.cat([q.detach().reshape(-1) for q in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        same = all(torch.equal(gathered[0], g) for g in gathered)
        print(f"replicas bit-identical after {args.steps} steps: {same}", flush=True)
    del opt, model   # DDP's reducer goes while its process group is alive
    dist.barrier()   # no rank tears the group down while another still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
