"""Train a sparse CIFAR ResNet on synthetic CIFAR-shaped data with one sparse-training
method and SGD, SAM or ZO-SAM; print the final density of every masked layer and the loss.

    python examples/sparse_train.py --method rigl --optimizer zosam --density 0.1 --steps 300

The data come from zosam_kernels.data (class templates plus noise: learnable, nothing to download).
Dynamic methods update the topology every --update-interval steps; LTH trains
--lth-rounds rounds that each prune 1 - density^(1/rounds) of the remaining weights
and rewind to step 0, then a last round at the target density; the
pruning-at-initialisation methods score the model on the first batches.
"""
import argparse

import torch
import torch.nn.functional as F

import zosam_kernels as zk
from zosam_kernels import sparse
from zosam_kernels.data import synthetic_cifar
from zosam_kernels.models import MODELS

METHODS = ("dense", "lth", "snip", "grasp", "synflow", "set", "dsr", "rigl", "mest")


def make_optimizer(name, model, masking):
    kw = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)
    if name == "sgd":
        opt = torch.optim.SGD(model.parameters(), **kw)
    elif name == "sam":
        opt = zk.SAM(model.parameters(), torch.optim.SGD, rho=0.05, masks=masking, **kw)
    else:
        opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, rho=0.05, delta=1e-3, masks=masking, **kw)
    return masking.attach(opt)


def train(model, opt, data, steps, after_step):
    losses = []
    for _ in range(steps):
        x, y = next(data)
        closure = lambda: F.cross_entropy(model(x), y)  # noqa: E731
        if isinstance(opt, torch.optim.SGD):
            opt.zero_grad()
            loss = closure()
            loss.backward()
            opt.step()
        else:
            loss = opt.step(closure)
        after_step()
        losses.append(float(loss.detach()))
    return losses


def run(args):
    torch.manual_seed(args.seed)
    model = MODELS[args.model]()
    data = synthetic_cifar(args.batch_size, args.seed)
    dense = args.method in ("dense", "lth")
    init = "dense" if args.method in ("snip", "grasp", "synflow") else "random"
    masking = sparse.Masking(model, 1.0 if dense else args.density, args.distribution, init=init,
                             seed=args.seed)
    if args.method in ("snip", "grasp", "synflow"):
        batches = [next(data) for _ in range(2)]
        per_class = max(1, min(10, 2 * args.batch_size // 10))   # what two batches hold
        kw = {"samples_per_class": per_class} if args.method == "grasp" else {}
        sparse.prune_at_init_(masking, args.method, F.cross_entropy, batches, **kw)
    opt = make_optimizer(args.optimizer, model, masking)
    schedule = {
        "set": lambda: sparse.SET(masking, update_interval=args.update_interval),
        "dsr": lambda: sparse.DSR(masking, update_interval=args.update_interval),
        "rigl": lambda: sparse.RigL(masking, args.steps, update_interval=args.update_interval),
        "mest": lambda: sparse.MEST(masking, args.steps, update_interval=args.update_interval),
    }.get(args.method)
    schedule = schedule() if schedule else None
    if args.method == "lth":
        rounds = args.lth_rounds
        lth = sparse.LotteryTicket(masking, prune_fraction=1 - args.density ** (1 / rounds))
        per_round = args.steps // (rounds + 1)
        losses = []
        for _ in range(rounds):
            losses += train(model, opt, data, per_round, lth.step)
            lth.prune_and_rewind_()
        losses += train(model, opt, data, args.steps - rounds * per_round, lth.step)
    else:
        losses = train(model, opt, data, args.steps, schedule.step if schedule else lambda: None)
    return masking, losses


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="rigl", choices=METHODS)
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "sam", "zosam"))
    p.add_argument("--density", type=float, default=0.1, help="fraction of prunable weights kept")
    p.add_argument("--distribution", default="erk", choices=sparse.DISTRIBUTIONS)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--update-interval", type=int, default=50)
    p.add_argument("--lth-rounds", type=int, default=2)
    p.add_argument("--model", default="resnet20", choices=sorted(MODELS))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    masking, losses = run(args)
    print(f"{args.method} + {args.optimizer}, {args.model}, {args.steps} steps, batch {args.batch_size}")
    for name, d in masking.layer_densities().items():
        print(f"  {name:28s} density {d:.4f}")
    tail = losses[-10:]
    print(f"overall density {masking.density():.4f}  first loss {losses[0]:.4f}  "
          f"final loss (mean of last {len(tail)}) {sum(tail) / len(tail):.4f}")
    return masking, losses


if __name__ == "__main__":
    main()
