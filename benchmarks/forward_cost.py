"""What one zeroth-order pass costs against a forward + backward: the ratio r
that bounds ZO-SAM's speed-up over SAM at 2 / (1 + 2r) (benchmarks/RESULTS.md).

    python benchmarks/forward_cost.py [--model resnet32] [--batch-size 128] [--reps 6]

Interleaved, median of --reps: a forward under no_grad, under inference_mode,
the optimizers' extra pass (no_grad plus the hooks that freeze BatchNorm
statistics), and a forward + backward.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from zosam_kernels.data import synthetic_cifar
from zosam_kernels.models import MODELS
from zosam_kernels.optim.passes import ExtraPasses


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet32", choices=sorted(MODELS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--reps", type=int, default=6)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = MODELS[args.model]()
    x, y = next(synthetic_cifar(args.batch_size))

    def closure():
        return F.cross_entropy(model(x), y)

    def no_grad():
        with torch.no_grad():
            closure()

    def inference_mode():
        with torch.inference_mode():
            closure()

    def forward_backward():
        closure().backward()

    cases = {"no_grad forward": no_grad, "inference_mode forward": inference_mode,
             "extra_pass (no_grad + BatchNorm hooks)": lambda: ExtraPasses()(closure),
             "forward + backward": forward_backward}
    times = {name: [] for name in cases}
    for f in cases.values():
        f()
    for _ in range(args.reps):
        for name, f in cases.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    med = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    print(f"{args.model}, batch {args.batch_size}, cpu, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.reps}")
    for name, ms in med.items():
        print(f"{name:<40}{ms:8.1f} ms   r = {ms / med['forward + backward']:.2f}")


if __name__ == "__main__":
    main()
