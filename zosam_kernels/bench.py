"""zosam-bench: step throughput of SGD, SAM and ZO-SAM side by side.

Default: ResNet-32 on CIFAR-shaped synthetic batches of 128, on CUDA when
present, else CPU. Methods are interleaved round by round so drift (thermal,
other load) hits all alike; each reports the median step time, images/s, the
ratios to SAM and SGD, and the forward and backward passes per step, counted
with hooks on the model rather than assumed.
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from . import ESAM, GSAM, SAM, SSAM, ZOSAM, ZOSSAM, LookSAM, ZOLookSAM
from .models import MODELS

METHODS = ("sgd", "sam", "zosam", "zosam-reference", "esam", "looksam", "gsam", "ssam-f", "ssam-d",
           "zolooksam", "zossam")


def make_optimizer(method, model, args):
    base = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    if method == "sgd":
        return torch.optim.SGD(model.parameters(), **base)
    if method == "sam":
        return SAM(model.parameters(), torch.optim.SGD, rho=0.05, **base)
    family = {   # the SAM family at its papers' defaults (see README, "The SAM family")
        "esam": lambda: ESAM(model.parameters(), torch.optim.SGD, rho=0.05, beta=0.6, gamma=0.5, **base),
        "looksam": lambda: LookSAM(model.parameters(), torch.optim.SGD, rho=0.05, k=5, alpha=0.7, **base),
        "gsam": lambda: GSAM(model.parameters(), torch.optim.SGD, rho=0.05, alpha=0.02, **base),
        "ssam-f": lambda: SSAM(model.parameters(), torch.optim.SGD, rho=0.1, sparsity=0.5, **base),
        "ssam-d": lambda: SSAM(model.parameters(), torch.optim.SGD, rho=0.1, sparsity=0.5, mask="dynamic",
                               total_steps=78000, **base),
        "zolooksam": lambda: ZOLookSAM(model.parameters(), torch.optim.SGD, rho=0.05, k=5,
                                       n_dirs=args.n_dirs, **base),
        "zossam": lambda: ZOSSAM(model.parameters(), torch.optim.SGD, rho=0.05, sparsity=0.5,
                                 n_dirs=args.n_dirs, **base),
    }
    if method in family:
        return family[method]()
    backend = "reference" if method == "zosam-reference" else "fused"
    return ZOSAM(model.parameters(), torch.optim.SGD, rho=0.05, delta=1e-3, n_dirs=args.n_dirs,
                 backend=backend, **base)


class PassCounter:
    """Counts forward passes of the model and backward passes through its output."""

    def __init__(self, model):
        self.forward = self.backward = 0
        model.register_forward_hook(self._on_forward)

    def _on_forward(self, module, args, out):
        self.forward += 1
        if out.requires_grad:
            out.register_hook(self._on_backward)

    def _on_backward(self, grad):
        self.backward += 1


class Run:
    def __init__(self, method, args, device):
        torch.manual_seed(0)
        self.method = method
        self.model = MODELS[args.model]().to(device)
        self.counter = PassCounter(self.model)
        self.opt = make_optimizer(method, self.model, args)
        g = torch.Generator(device="cpu").manual_seed(1)
        self.x = torch.randn(args.batch_size, 3, 32, 32, generator=g).to(device)
        self.y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
        self.times = []

    def closure(self, indices=None):
        """Per-sample losses, of a subset when asked (ESAM's data selection needs both)."""
        x, y = (self.x, self.y) if indices is None else (self.x[indices], self.y[indices])
        return F.cross_entropy(self.model(x), y, reduction="none")

    def step(self):
        if self.method == "sgd":
            self.opt.zero_grad()
            loss = self.closure().mean()
            loss.backward()
            self.opt.step()
            return loss
        return self.opt.step(self.closure)


def timed(run, device):
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run.step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    run.step()
    return time.perf_counter() - t0


def main(argv=None):
    benchmark(argv)
    return 0


def benchmark(argv=None):
    """Parse the options, benchmark, print the table; returns the result rows."""
    p = argparse.ArgumentParser(prog="zosam-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet32", choices=sorted(MODELS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=None, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--n-dirs", type=int, default=1)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    methods = [m.strip() for m in args.methods.split(",")]
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"--methods: unknown {sorted(unknown)}; choose from {', '.join(METHODS)}")
    steps = args.steps or (50 if device.type == "cuda" else 10)

    runs = [Run(m, args, device) for m in methods]
    for r in runs:
        for _ in range(args.warmup):
            r.step()
    for r in runs:
        r.counter.forward = r.counter.backward = 0
    for i in range(steps):
        for r in runs:
            r.times.append(timed(r, device))
        print(f"\rround {i + 1}/{steps}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    med = {r.method: statistics.median(r.times) for r in runs}
    results = []
    for r in runs:
        results.append(dict(
            method=r.method, step_ms=1e3 * med[r.method],
            images_per_s=args.batch_size / med[r.method],
            vs_sam=med["sam"] / med[r.method] if "sam" in med else None,
            vs_sgd=med["sgd"] / med[r.method] if "sgd" in med else None,
            fwd_passes=r.counter.forward / steps, bwd_passes=r.counter.backward / steps))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.model}, batch {args.batch_size}, {name}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {steps} interleaved steps")
    print(f"{'method':<16}{'step ms':>9}{'img/s':>9}{'x SAM':>8}{'x SGD':>8}{'fwd':>6}{'bwd':>6}")
    for r in results:
        fmt = lambda v: f"{v:8.2f}" if v is not None else f"{'-':>8}"  # noqa: E731
        print(f"{r['method']:<16}{r['step_ms']:9.1f}{r['images_per_s']:9.1f}{fmt(r['vs_sam'])}"
              f"{fmt(r['vs_sgd'])}{r['fwd_passes']:6.1f}{r['bwd_passes']:6.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "config": vars(args) | {"steps": steps}, "results": results},
                      f, indent=2)
    return results


if __name__ == "__main__":
    sys.exit(main())
