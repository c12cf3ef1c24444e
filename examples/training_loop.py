"""A training loop to copy: ZO-SAM on a sparse model with mixed precision,
gradient clipping, random augmentation inside the closure, micro-batches and
a compiled model.

    python examples/training_loop.py --model vit_tiny --density 0.1 --precision bf16 --compile
    python examples/training_loop.py --model resnet20 --precision fp16 --max-grad-norm 1.0

The data come from zosam_kernels.data (CIFAR-shaped class templates plus
noise: learnable, nothing to download). vit_tiny is a DeiT-like transformer
(attention, LayerNorm, dropout, no BatchNorm); resnet20 the CIFAR ResNet.
fp16 runs with a GradScaler handed to the optimizer; bf16 needs none. The
random flip inside the closure and the model's dropout draw the same numbers
in every pass of a step (common random numbers, on by default for ZO-SAM).
"""
import argparse
import time

import torch
import torch.nn.functional as F

import zosam_kernels as zk
from zosam_kernels import sparse
from zosam_kernels.data import synthetic_cifar
from zosam_kernels.models import MODELS

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="vit_tiny", choices=sorted(MODELS))
    p.add_argument("--density", type=float, default=0.1, help="share of the weights kept (1: dense)")
    p.add_argument("--precision", default="bf16", choices=sorted(PRECISIONS))
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--micro-batches", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None,
                   help="default: 1e-3 with AdamW for vit_tiny (as DeiT), 0.05 with SGD momentum 0.9 for the ResNets")
    p.add_argument("--log-every", type=int, default=10)
    args = p.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = MODELS[args.model]().to(device)   # the optimizer is built after .to(device)
    masking = sparse.Masking(model, args.density) if args.density < 1 else None
    dtype = PRECISIONS[args.precision]
    if args.model.startswith("vit"):
        base, base_kwargs = torch.optim.AdamW, dict(lr=args.lr or 1e-3, weight_decay=0.05)
    else:
        base, base_kwargs = torch.optim.SGD, dict(lr=args.lr or 0.05, momentum=0.9, weight_decay=5e-4)
    opt = zk.ZOSAM(model.parameters(), base, rho=0.05, delta=1e-3, masks=masking, **base_kwargs,
                   grad_scaler=torch.amp.GradScaler(device.type) if dtype == torch.float16 else None,
                   max_grad_norm=args.max_grad_norm, micro_batches=args.micro_batches)
    if masking is not None:
        masking.attach(opt)
    forward = torch.compile(model) if args.compile else model

    data = synthetic_cifar(args.batch_size, seed=1)
    seen, correct, count, t0 = {}, 0, 0, time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = (t.to(device) for t in next(data))

        def closure(indices=None):
            xs, ys = (x, y) if indices is None else (x[indices], y[indices])
            flip = torch.rand(xs.shape[0], 1, 1, 1, device=device) < 0.5   # augmentation, torch's RNG
            xs = torch.where(flip, xs.flip(3), xs)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = forward(xs)
            seen["logits"], seen["y"] = logits, ys   # the last call of a step: the gradient pass
            return F.cross_entropy(logits.float(), ys, reduction="none")

        loss = opt.step(closure)
        if args.micro_batches == 1:
            correct += int((seen["logits"].argmax(1) == seen["y"]).sum())
            count += len(y)
        if step % args.log_every == 0 or step == args.steps:
            acc = f", train acc {correct / count:.3f}" if count else ""
            print(f"step {step:4d}  loss {float(loss):.4f}{acc}  "
                  f"({(time.perf_counter() - t0) / step * 1e3:.0f} ms/step)", flush=True)
            correct = count = 0
    if masking is not None:
        dense = masking.dense_params()
        print(f"density of the masked weights {masking.density():.3f}, of all weights "
              f"{masking.density(of='all'):.3f} ({len(dense)} tensors left dense: biases, norms, "
              f"embeddings; {sum(p.numel() for p in dense.values())} weights)")
    return float(loss)


if __name__ == "__main__":
    main()
