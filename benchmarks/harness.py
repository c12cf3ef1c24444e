"""What every script of benchmarks/ shares: one argument layer (--json, --csv
beside the script's own options), one output (rows a plot can read: the JSON
file's "rows", the CSV file's lines) and one timer, the package's
(zosam_kernels.bench.measure.timed: CUDA events on the GPU, a wall clock on the
CPU). The scripts import it as `harness`: they run from this folder
(`python benchmarks/NAME.py`), which Python puts first on sys.path."""
import argparse
import json
import statistics

import torch

from zosam_kernels.bench.measure import timed
from zosam_kernels.bench.report import append_rows

__all__ = ["parser", "median_ms", "save", "timed"]


def parser(doc):
    """The script's ArgumentParser: its docstring's first paragraph, --json and --csv."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--json", default=None, metavar="PATH",
                   help="write the options, the versions, the rows and what else was measured here")
    p.add_argument("--csv", default=None, metavar="PATH", help="append the rows here (a header when new)")
    return p


def median_ms(fn, device, reps, warmup=1):
    """The median of `reps` timed calls of fn, in milliseconds, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return 1e3 * statistics.median(timed(fn, device) for _ in range(reps))


def save(args, rows, **measured):
    """--json: {"config": the options, "torch": its version, **measured, "rows": rows};
    --csv: the rows appended."""
    if args.json:
        config = {k: v for k, v in vars(args).items() if k not in ("json", "csv")}
        with open(args.json, "w") as f:
            json.dump({"config": config, "torch": torch.__version__, **measured, "rows": rows}, f, indent=2)
    if args.csv:
        append_rows(args.csv, rows)
