"""zosam-report: zosam-train runs grouped by configuration, as a markdown table.

    zosam-report runs/*                    # one row per configuration (all options but the seed)
    zosam-report runs/* --plot acc.png     # test accuracy against sparsity, one line per optimizer

Each cell is the mean over the configuration's seeds ± the half-width of its
95 % confidence interval (Student's t with n − 1 degrees of freedom; a single
seed shows its value alone). Runs of one configuration with the same seed
repeat one another: they count as one seed (their mean), and are named on
stderr. Runs that did not finish are left out and counted.
"""
import argparse
import json
import math
import os
import statistics
import sys

from .cli import EXECUTION

# options that do not change what a run computes, besides the seed: left out of the grouping
NOT_CONFIGURATION = EXECUTION | {"seed", "data_dir", "targets"}

def _diagnostic(summary, name, key):
    """summary.json's last measurement of one diagnostic's key, or None."""
    return ((summary.get("diagnostics") or {}).get(name) or {}).get(key)


# column -> (header, how to read it from summary.json)
COLUMNS = {
    "final_test_acc": ("test acc %", lambda s: s.get("final_test_acc")),
    # runs with a validation split (mnist1d), and runs with label noise whose fit is measured
    "test_acc_at_best_val": ("test acc at best val %", lambda s: s.get("test_acc_at_best_val")),
    "best_val_epoch": ("best val epoch", lambda s: s.get("best_val_epoch")),
    "final_fit_clean": ("clean fit %", lambda s: s.get("final_fit_clean")),
    "final_fit_noisy": ("noisy fit %", lambda s: s.get("final_fit_noisy")),
    "corrupt": ("corrupted acc %", lambda s: (s.get("corrupt") or s.get("cifar10c") or {}).get("mean")),
    "gradvar": ("grad variance", lambda s: _diagnostic(s, "gradvar", "variance")),
    "hessian": ("top eigenvalue", lambda s: _diagnostic(s, "hessian", "top_eigenvalue")),
    # the ascent probe (SAM family): how well the perturbation aims, and what it buys in loss
    "ascent_cosine": ("cos(ε, ∇L)", lambda s: _diagnostic(s, "ascent", "cosine")),
    "loss_rise": ("loss rise", lambda s: _diagnostic(s, "ascent", "loss_rise")),
}

# decimals of a cell; 2 for the others
DIGITS = {"gradvar": 4, "hessian": 4, "best_val_epoch": 1, "ascent_cosine": 4, "loss_rise": 4}
EPOCHS = {"best_val_epoch"}   # whole numbers: one seed's shown as such, a mean over seeds with DIGITS


def load_runs(dirs, diverged=False):
    """(directory, args, summary) of every finished run among `dirs`, and the names of the unfinished
    (a diverged run's with the epoch it diverged at). diverged: count a diverged run as finished (its
    summary's diverged_at says where it stopped)."""
    runs, unfinished = [], []
    for d in dirs:
        summary_path, config_path = os.path.join(d, "summary.json"), os.path.join(d, "config.json")
        if not os.path.exists(config_path):
            raise SystemExit(f"zosam-report: {d} is not a zosam-train run (no config.json)")
        if not os.path.exists(summary_path):
            unfinished.append(d)
            continue
        with open(summary_path) as f, open(config_path) as g:
            summary, args = json.load(f), json.load(g)["args"]
        if summary.get("complete") or (diverged and summary.get("diverged_at") is not None):
            runs.append((d, args, summary))
        else:
            diverged = summary.get("diverged_at")
            unfinished.append(d if diverged is None else f"{d} (diverged at epoch {diverged})")
    return runs, unfinished


def read_metrics(directory):
    """metrics.jsonl of a zosam-train run: one dict per epoch, in order."""
    with open(os.path.join(directory, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def configuration(args):
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in args.items() if k not in NOT_CONFIGURATION))


def interval(values):
    """(mean, half-width of the 95 % interval, n) of the values that are not None."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    if len(values) == 1:
        return values[0], None, 1
    from scipy.stats import t
    n = len(values)
    return statistics.mean(values), t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n), n


def cell(values, digits=2, whole=False):
    mean, half, n = interval(values)
    if mean is None:
        return "-"
    if whole and n == 1:
        return str(int(mean))
    return f"{mean:.{digits}f}" if half is None else f"{mean:.{digits}f} ± {half:.{digits}f}"


class Group:
    """The runs of one configuration: `args` (its first run's), and per seed its runs'
    directories and summaries, in the order first seen."""

    def __init__(self, args):
        self.args, self.seeds = args, {}

    def add(self, directory, summary, seed):
        self.seeds.setdefault(seed, []).append((directory, summary))

    def values(self, read):
        """One value per seed (the mean of its runs'); None where no run has one."""
        per_seed = []
        for runs in self.seeds.values():
            got = [v for v in (read(s) for _, s in runs) if v is not None]
            per_seed.append(statistics.mean(got) if got else None)
        return per_seed

    def repeats(self):
        """The directories of every seed run more than once."""
        return {seed: [d for d, _ in runs] for seed, runs in self.seeds.items() if len(runs) > 1}


def group(runs):
    """configuration -> Group, in the order first seen."""
    groups = {}
    for directory, args, summary in runs:
        groups.setdefault(configuration(args), Group(args)).add(directory, summary, args.get("seed"))
    return groups


def table(groups, target):
    varying = [k for k in sorted({k for g in groups.values() for k in g.args} - NOT_CONFIGURATION)
               if len({json.dumps(g.args.get(k), sort_keys=True) for g in groups.values()}) > 1]
    # one configuration: what it is
    varying = varying or [k for k in ("data", "model", "optimizer") if k in next(iter(groups.values())).args]
    present = [c for c, (_, read) in COLUMNS.items() if any(v is not None for g in groups.values()
                                                            for v in g.values(read))]
    header = varying + ["seeds"] + [COLUMNS[c][0] for c in present] + [f"epochs to {target:g} %"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for g in groups.values():
        runs = sum(len(r) for r in g.seeds.values())
        row = [str(g.args.get(k)) for k in varying]
        row.append(str(len(g.seeds)) + (f" ({runs} runs)" if runs > len(g.seeds) else ""))
        row += [cell(g.values(COLUMNS[c][1]), DIGITS.get(c, 2), whole=c in EPOCHS) for c in present]
        reached = g.values(lambda s: s["epochs_to"].get(f"{target:g}"))
        never = sum(r is None for r in reached)
        row.append(cell([r for r in reached if r is not None], 1, whole=True) + (f" ({never} never)" if never else ""))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(groups, path):
    """Test accuracy against sparsity (1 − density), one line per optimizer and sparse method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = {}
    for g in groups.values():
        args = g.args
        mean, half, _ = interval(g.values(lambda s: s["final_test_acc"]))
        options = "".join(f", {k} {args[k]}" for k in ("rho", "n_dirs") if args.get(k) is not None)
        label = f"{args['optimizer']}{options} ({args['sparse']})"
        lines.setdefault(label, []).append((1 - args["density"], mean, half or 0))
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in sorted(lines.items()):
        points.sort()
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                    marker="o", capsize=3, label=label)
    ax.set_xlabel("sparsity (1 − density)")
    ax.set_ylabel("final test accuracy (%), mean ± 95 % interval")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(prog="zosam-report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="zosam-train --out directories")
    p.add_argument("--target", type=float, default=90.0, help="the accuracy (%%) of the epochs-to column")
    p.add_argument("--plot", default=None, metavar="PNG", help="accuracy against sparsity per optimizer")
    args = p.parse_args(argv)
    runs, unfinished = load_runs(args.runs)
    if not runs:
        raise SystemExit(f"zosam-report: none of the {len(args.runs)} runs has finished: {', '.join(unfinished)}")
    groups = group(runs)
    print(table(groups, args.target))
    for g in groups.values():
        for seed, dirs in g.repeats().items():
            print(f"zosam-report: {', '.join(dirs)} repeat one configuration with seed {seed}: "
                  "counted as one seed, their mean", file=sys.stderr)
    if unfinished:
        print(f"\n{len(unfinished)} unfinished runs left out: {', '.join(unfinished)}", file=sys.stderr)
    if args.plot:
        plot(groups, args.plot)


if __name__ == "__main__":
    main()
