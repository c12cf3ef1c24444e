"""The paper's ResNet-32 tables as zosam-train commands, and the tables back
from the runs' summary.json files.

    python benchmarks/paper_table.py commands --data-dir ~/data --cifar10c ~/data/CIFAR-10-C > runs.sh
    bash runs.sh                                   # one zosam-train run per line (a GPU, or a job array)
    python benchmarks/paper_table.py collect runs  # markdown tables, mean ± 95 % interval over seeds

Two tables (arXiv 2603.13115): test accuracy of RigL and MEST with SGD and
with ZO-SAM at 90 % and 98 % sparsity (ResNet-32, CIFAR-10 and CIFAR-100,
160 epochs), and the epochs RigL at 90 % sparsity needs to reach 90 % test
accuracy on CIFAR-10 with SGD, ESAM, LookSAM (k = 5), GSAM and ZO-SAM (the
paper does not name the sparse method of that table: RigL is our choice).
"""
import argparse
import os
from collections import defaultdict

from zosam_kernels.train.report import cell, load_runs

ACCURACY = dict(sparse=("rigl", "mest"), densities=(0.1, 0.02), optimizers=("sgd", "zosam"))
CONVERGENCE = dict(sparse="rigl", density=0.1, optimizers=("sgd", "esam", "looksam", "gsam", "zosam"),
                   target=90)


def commands(args):
    common = f"--model resnet32 --epochs {args.epochs}"
    lines = []
    for seed in range(args.seeds):
        for data in args.datasets:
            robust = f" --cifar10c {args.cifar10c}" if args.cifar10c and data == "cifar10" else ""
            for method in ACCURACY["sparse"]:
                for density in ACCURACY["densities"]:
                    for opt in ACCURACY["optimizers"]:
                        out = os.path.join(args.runs, f"{data}-{method}-{density:g}-{opt}-s{seed}")
                        lines.append(f"zosam-train --data {data} --data-dir {args.data_dir} {common} "
                                     f"--sparse {method} --density {density:g} --optimizer {opt} "
                                     f"--seed {seed} --out {out}{robust}")
        c = CONVERGENCE
        for opt in c["optimizers"]:
            out = os.path.join(args.runs, f"convergence-{opt}-s{seed}")
            lines.append(f"zosam-train --data cifar10 --data-dir {args.data_dir} {common} --sparse {c['sparse']} "
                         f"--density {c['density']:g} --optimizer {opt} --targets {c['target']} "
                         f"--seed {seed} --out {out}")
    # a run stopped early continues where it was: rerunning the line with --resume finishes it
    print("\n".join(lines))


def collect(args):
    acc, epochs = defaultdict(list), defaultdict(list)
    runs, _ = load_runs([os.path.join(args.runs, d) for d in sorted(os.listdir(args.runs))])
    for _, a, summary in runs:
        if a["out"].rstrip("/").split("/")[-1].startswith("convergence-"):
            epochs[a["optimizer"]].append(summary["epochs_to"][f"{CONVERGENCE['target']:g}"])
        else:
            acc[(a["data"], a["sparse"], a["optimizer"], a["density"])].append(summary["final_test_acc"])
    datasets = sorted({k[0] for k in acc})
    columns = [(d, density) for d in datasets for density in ACCURACY["densities"]]
    print("| method | " + " | ".join(f"{d} {100 * (1 - s):.0f} %" for d, s in columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for method in ACCURACY["sparse"]:
        for opt in ACCURACY["optimizers"]:
            label = method.upper() + ("" if opt == "sgd" else f"+{opt.upper()}")
            print(f"| {label} | " + " | ".join(cell(acc[(d, method, opt, s)]) for d, s in columns) + " |")
    if epochs:
        print(f"\n| optimizer | epochs to {CONVERGENCE['target']} % (CIFAR-10, RigL, 90 % sparsity) |")
        print("| --- | --- |")
        for opt in CONVERGENCE["optimizers"]:
            reached = [e for e in epochs[opt] if e is not None]
            never = len(epochs[opt]) - len(reached)
            print(f"| {opt} | {cell(reached)}{f' ({never} runs never)' if never else ''} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("commands", help="print one zosam-train command per run")
    c.add_argument("--data-dir", required=True, help="holds cifar-10-batches-py/ and cifar-100-python/")
    c.add_argument("--cifar10c", default=None, help="the CIFAR-10-C folder (robustness of the CIFAR-10 runs)")
    c.add_argument("--datasets", nargs="+", default=["cifar10", "cifar100"])
    c.add_argument("--epochs", type=int, default=160)
    c.add_argument("--seeds", type=int, default=3)
    c.add_argument("--runs", default="runs", help="parent folder of the runs' --out")
    k = sub.add_parser("collect", help="the tables, from the runs' summary.json")
    k.add_argument("runs", help="parent folder of the runs' --out")
    args = p.parse_args(argv)
    commands(args) if args.what == "commands" else collect(args)


if __name__ == "__main__":
    main()
