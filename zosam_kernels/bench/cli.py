"""zosam-bench: step throughput and memory of SGD, SAM and ZO-SAM side by side.

Default: ResNet-32 on CIFAR-shaped synthetic batches of 128, on CUDA when
present, else CPU. Methods are interleaved step by step so drift (clocks,
other load) hits all alike; each reports the median step time, images/s, the
ratios to SAM and SGD (from mean step times, so periodic full steps count),
the forward and backward passes per step (counted with
hooks on the model, not assumed), the step's peak memory, and what the
optimizer keeps between steps.
"""
import argparse
import importlib.util
import statistics
import sys

import torch

from . import measure, report
from .methods import DEFAULT_METHODS, METHODS, Run
from ..models import MODELS


EPILOG = """\
columns:
  step ms   mean step time (means, not medians: LookSAM-style methods pay a
            full step every k steps); img/s = batch size / mean step time
  × SAM     SAM's mean step time / this method's: > 1 means faster than SAM
  × SGD     SGD's mean step time / this method's: > 1 means faster than SGD
            ('-' when that method is not among --methods)
  fwd, bwd  forward and backward passes per step, counted with hooks
  fwd·B     forward passes weighted by the share of the batch they saw
  peak MB   the step's peak memory; opt MB: what the optimizer keeps between
            steps; buffers: that in parameter-sized units"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in --help, and the epilog's line breaks kept."""


def parse(argv):
    p = argparse.ArgumentParser(prog="zosam-bench", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=_HelpFormatter)
    # every option has a help string: the formatter adds the default only to those
    p.add_argument("--model", default="resnet32", choices=sorted(MODELS), help="network to train")
    p.add_argument("--batch-size", type=int, default=128, help="images per step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device; cuda when one is available")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per method; None: CPU 10, GPU 50 (multiples of LookSAM's k = 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated, from: {', '.join(METHODS)}")
    p.add_argument("--n-dirs", type=int, default=1, help="ZO-SAM directions per step")
    p.add_argument("--zo-batch-fraction", type=float, default=0.25,
                   help="share of the batch in zosam-frac's zeroth-order passes")
    p.add_argument("--sparsity", type=float, default=0.0,
                   help="random static mask on conv/linear weights, for every method")
    p.add_argument("--bf16", action="store_true", help="every forward pass under bf16 autocast")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--csv", default=None, help="append one row per method here")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="bar chart of images/s (needs matplotlib)")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="write a torch.profiler trace per method and print per-phase times")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 <= args.sparsity < 1:
        p.error(f"--sparsity must be in [0, 1), got {args.sparsity}")
    if not 0 < args.zo_batch_fraction <= 1:
        p.error(f"--zo-batch-fraction must be in (0, 1], got {args.zo_batch_fraction}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.steps is None:   # 0 is refused below, not taken for the default
        args.steps = 50 if args.device.startswith("cuda") else 10
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    # found now, not after the whole benchmark has run; imported only by report.plot
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        p.error("--plot needs matplotlib, which is not installed: pip install matplotlib")
    return args


def benchmark(argv=None):
    """Parse the options, benchmark, print the table; returns the result rows."""
    args = parse(argv)
    device = torch.device(args.device)
    runs = [Run(m, args, device) for m in args.methods]
    for r in runs:
        for _ in range(args.warmup):
            r.step()
        r.counter.reset()
    for i in range(args.steps):
        for r in runs:
            r.times.append(measure.timed(r.step, device))
        report.progress(i + 1, args.steps, "timing")

    # the mean, not the median: LookSAM-style methods pay a full step every k steps
    mean = {r.method: statistics.fmean(r.times) for r in runs}
    param_bytes = {r.method: sum(p.numel() * p.element_size() for p in r.model.parameters())
                   for r in runs}
    results = []
    for r in runs:
        held = measure.optimizer_bytes(r)
        results.append(dict(
            method=r.method, step_ms=1e3 * mean[r.method],
            median_step_ms=1e3 * statistics.median(r.times),
            images_per_s=args.batch_size / mean[r.method],
            vs_sam=mean["sam"] / mean[r.method] if "sam" in mean else None,
            vs_sgd=mean["sgd"] / mean[r.method] if "sgd" in mean else None,
            fwd_passes=r.counter.forward / args.steps, bwd_passes=r.counter.backward / args.steps,
            fwd_batch_equiv=r.counter.forward_samples / args.batch_size / args.steps,
            bwd_batch_equiv=r.counter.backward_samples / args.batch_size / args.steps,
            extra_vs_sam=((mean[r.method] - mean["sgd"]) / (mean["sam"] - mean["sgd"])
                          if {"sgd", "sam"} <= set(mean) and mean["sam"] != mean["sgd"] else None),
            peak_mem_bytes=measure.step_peak_bytes(r, device),
            optimizer_bytes=held, param_buffers=held / param_bytes[r.method]))
    phases = {r.method: measure.profile(r, device, args.profile) for r in runs} if args.profile else {}

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    config = {k: v for k, v in vars(args).items() if k not in ("json", "csv", "plot", "profile")}
    config |= dict(torch=torch.__version__, threads=torch.get_num_threads())
    header = (f"{args.model}, batch {args.batch_size}, {name}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, mean of {args.steps} interleaved steps"
              + (f", sparsity {args.sparsity}" if args.sparsity else "")
              + (", bf16 autocast" if args.bf16 else "") + (", channels_last" if args.channels_last else ""))
    print(report.table(header, results, phases))
    if args.json:
        report.write_json(args.json, name, config, results, phases)
    if args.csv:
        report.append_csv(args.csv, name, config, results)
    if args.plot:
        report.plot(args.plot, header, results)
    return results


def main(argv=None):
    benchmark(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
