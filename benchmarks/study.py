"""The CPU study of the paper's claims (benchmarks/RESULTS.md, "The paper's
claims on the CPU"): one zosam-train command per run, printed for a runner.

    python benchmarks/study.py --runs /tmp/study > study.sh
    OMP_NUM_THREADS=1 xargs -P 2 -I{} sh -c {} < study.sh      # two runs at a time, one thread each
    zosam-report /tmp/study/* --plot acc.png
    python benchmarks/study.py analyse /tmp/study               # gradient variance, cosines, curvature
    python benchmarks/study.py paired /tmp/study                # accuracy minus SGD's, seed by seed
    python benchmarks/study.py --runs /tmp/study curvature > curvature.sh  # Hessian of every 90 % run's end
    python benchmarks/study.py curvature-table /tmp/study
    python benchmarks/study.py figure /tmp/study landscape.png  # SGD vs ZO-SAM m = 1 loss slices, epoch 12
    python benchmarks/study.py --runs /tmp/sweep sweep > sweep.sh  # ρ for SAM and ZO-SAM m = 1, SNIP 98 %

Setting (chosen before any result was seen, to fit about an hour of 2 CPU
cores): CIFAR ResNet-20 on scikit-learn's digits at 32x32, the first 384
training images with 30 % of their labels replaced by another class (the
360 test images stay clean), batch 32, 12 epochs (144 steps), LR 0.05
cosine; SNIP and RigL (one topology update per epoch) at 90 % and 98 %
sparsity; SGD, SAM (ρ = 0.05), ZO-SAM with m = 1 and m = 4 (ρ = 0.05,
δ = 1e-3); 5 seeds. Every run measures the gradient variance at epochs 1, 6 and 12, the
perturbation's cosine with the gradient (SAM family), and the corrupted test
accuracy (all corruptions, severities 1-5); the seed-0 RigL 90 % runs of
SGD and ZO-SAM m = 1 also the Hessian (10 power iterations, 4 Hutchinson
samples) and the loss landscape (the Hessian costs about a minute per
measurement on one core, so it is measured where the paper's claim is);
`curvature` then measures it at the end of every 90 % run, from the
checkpoints.
"""
import argparse
import json
import os
import statistics
from collections import defaultdict

OPTIMIZERS = {"sgd": "--optimizer sgd", "sam": "--optimizer sam",
              "zosam-m1": "--optimizer zosam --n-dirs 1", "zosam-m4": "--optimizer zosam --n-dirs 4"}
COMMON = ("zosam-train --data digits --train-size 384 --label-noise 0.3 --model resnet20 --batch-size 32 "
          "--epochs 12 --lr 0.05 --update-interval 12 --progress off --corrupt all "
          "--diagnostics-epochs 1,6,12 --hessian-iters 10 --hessian-samples 4")


def commands(runs, seeds):
    for seed in range(seeds):
        for sparse in ("snip", "rigl"):
            for density in (0.1, 0.02):
                for name, opt in OPTIMIZERS.items():
                    diagnostics = "gradvar" + ("" if name == "sgd" else ",ascent")
                    if seed == 0 and (sparse, density, name) in (("rigl", 0.1, "sgd"), ("rigl", 0.1, "zosam-m1")):
                        diagnostics += ",hessian,landscape"
                    out = os.path.join(runs, f"{sparse}-{density:g}-{name}-s{seed}")
                    yield (f"{COMMON} --sparse {sparse} --density {density:g} {opt} --seed {seed} "
                           f"--diagnostics {diagnostics} --out {out} > {out}.log 2>&1")


SWEEP_RHOS = (0.01, 0.02, 0.1, 0.2)   # beside the study's 0.05


def sweep(runs, seeds=2):
    """ρ swept for SAM and ZO-SAM m = 1 in the SNIP 98 % cell, with the study's
    setting otherwise (no diagnostics: accuracy is what the sweep asks)."""
    for seed in range(seeds):
        for rho in SWEEP_RHOS:
            for name in ("sam", "zosam-m1"):
                out = os.path.join(runs, f"snip-0.02-{name}-rho{rho:g}-s{seed}")
                yield (f"{COMMON} --sparse snip --density 0.02 {OPTIMIZERS[name]} --rho {rho:g} --seed {seed} "
                       f"--out {out} > {out}.log 2>&1")


def _measured(rows, key, field):
    """epoch -> the diagnostic's field, at the epochs it was measured."""
    return {r["epoch"]: r["diagnostics"][key][field] for r in rows if key in r.get("diagnostics", {})}


def _mean_at(found, key, field, epoch):
    values = [_measured(rows, key, field).get(epoch) for _, rows in found]
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else float("nan")


def analyse(runs):
    """Per cell (sparse, density, optimizer), means over the seeds found: the
    gradient variance at each measured epoch and, at the last, its ratio to
    SGD's in the same sparse cell; the ascent cosine beside a random
    direction's; seed 0's top Hessian eigenvalue at the last epoch."""
    cells = defaultdict(list)     # "rigl-0.1-zosam-m1" -> [(seed, metrics rows)]
    for name in sorted(os.listdir(runs)):
        if os.path.exists(os.path.join(runs, name, "summary.json")):
            with open(os.path.join(runs, name, "metrics.jsonl")) as f:
                cell, seed = name.rsplit("-s", 1)
                cells[cell].append((int(seed), [json.loads(line) for line in f]))
    epochs = sorted({e for found in cells.values() for _, rows in found
                     for e in _measured(rows, "gradvar", "variance")})
    last = epochs[-1]
    e = " / ".join(f"e{k}" for k in epochs)
    print(f"| cell | seeds | grad variance {e} | × SGD's at e{last} | ascent cos {e} | random direction "
          f"| top eigenvalue e{last} (seed 0) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for cell, found in cells.items():
        sparse, density, _ = cell.split("-", 2)
        sgd = cells.get(f"{sparse}-{density}-sgd", [])
        variance = [_mean_at(found, "gradvar", "variance", k) for k in epochs]
        ratio = variance[-1] / _mean_at(sgd, "gradvar", "variance", last)
        cosine = [_mean_at(found, "ascent", "cosine", k) for k in epochs]
        random = _mean_at(found, "ascent", "random_direction", last)
        top = _mean_at([f for f in found if f[0] == 0], "hessian", "top_eigenvalue", last)
        print(f"| {cell} | {len(found)} | {' / '.join(f'{v:.3g}' for v in variance)} | {ratio:.2f} | "
              f"{' / '.join(f'{c:.3g}' for c in cosine)} | {random:.3g} | {top:.3g} |")


def _final(runs, name, key):
    path = os.path.join(runs, name, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        summary = json.load(f)
    return summary["final_test_acc"] if key == "clean" else (summary["corrupt"] or {}).get("mean")


def paired(runs, seeds=5):
    """Final test accuracy (clean, then corrupted) minus SGD's with the same
    seed, sparse method and density: mean ± 95 % t-interval over the seeds
    where both runs finished, and how many of those pairs fell below SGD; the
    last row pools the pairs of all four cells."""
    from zosam_kernels.train.report import interval

    def summarise(diffs):
        mean, half, n = interval(diffs)
        half = float("nan") if half is None else half     # one pair: no interval
        return "-" if not n else f"{mean:+.1f} ± {half:.1f} ({sum(d < 0 for d in diffs)}/{n})"

    others = [n for n in OPTIMIZERS if n != "sgd"]
    for key in ("clean", "corrupt"):
        print(f"\n{key} accuracy minus SGD's, points: mean ± 95 % interval (pairs below SGD / pairs)\n")
        print("| cell | " + " | ".join(others) + " |")
        print("| --- |" + " --- |" * len(others))
        pooled = defaultdict(list)
        for sparse in ("snip", "rigl"):
            for density in (0.1, 0.02):
                row = []
                for name in others:
                    diffs = []
                    for seed in range(seeds):
                        a = _final(runs, f"{sparse}-{density:g}-{name}-s{seed}", key)
                        b = _final(runs, f"{sparse}-{density:g}-sgd-s{seed}", key)
                        if a is not None and b is not None:
                            diffs.append(a - b)
                    pooled[name] += diffs
                    row.append(summarise(diffs))
                print(f"| {sparse} {100 - 100 * density:g} % | " + " | ".join(row) + " |")
        print("| all cells | " + " | ".join(summarise(pooled[name]) for name in others) + " |")


CURVATURE_CELLS = [(sparse, name) for sparse in ("snip", "rigl") for name in OPTIMIZERS]   # at 90 %


def curvature_commands(runs, seeds):
    """One `study.py measure-hessian` per finished 90 % run (all optimizers, all seeds)."""
    for sparse, name in CURVATURE_CELLS:
        for seed in range(seeds):
            run = os.path.join(runs, f"{sparse}-0.1-{name}-s{seed}")
            yield f"python {os.path.abspath(__file__)} measure-hessian {run} > {run}.hessian.log 2>&1"


def measure_hessian(run_dir):
    """The run's `hessian` diagnostic at its last epoch, measured on its final
    checkpoint, into RUN_DIR/hessian_final.json. The checkpoint is written after
    the last epoch's diagnostics, which restore the weights, so this measures
    what `--diagnostics hessian` would have measured at that epoch: the same
    weights, batches and seeds."""
    import argparse

    import torch

    from zosam_kernels.train.loop import Run
    with open(os.path.join(run_dir, "config.json")) as f:
        args = argparse.Namespace(**json.load(f)["args"])
    args.diagnostics = ["hessian"]
    run = Run(args)
    state = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)
    run.resume(state)
    found = run.probes.measure(state["epoch"], [])["hessian"]
    with open(os.path.join(run_dir, "hessian_final.json"), "w") as f:
        json.dump({"epoch": state["epoch"], **found}, f)


def curvature_table(runs, seeds=5):
    """Per 90 % cell: top eigenvalue and trace at the end, mean ± 95 % interval
    over the seeds; the ratio of ZO-SAM's (and SAM's) top eigenvalue to SGD's
    with the same seed, and how many of those pairs were below 1."""
    from zosam_kernels.train.report import interval

    def read(sparse, name, seed):
        path = os.path.join(runs, f"{sparse}-0.1-{name}-s{seed}", "hessian_final.json")
        return json.load(open(path)) if os.path.exists(path) else None

    def show(values, digits):
        mean, half, n = interval(values)
        half = float("nan") if half is None else half
        return "-" if not n else f"{mean:.{digits}f} ± {half:.{digits}f}"

    print("| cell | seeds | top eigenvalue | trace | top eigenvalue ÷ SGD's, same seed (pairs < 1) |")
    print("| --- | --- | --- | --- | --- |")
    for sparse, name in CURVATURE_CELLS:
        found = {seed: read(sparse, name, seed) for seed in range(seeds)}
        found = {seed: h for seed, h in found.items() if h is not None}
        sgd = {seed: read(sparse, "sgd", seed) for seed in found}
        ratios = [h["top_eigenvalue"] / sgd[s]["top_eigenvalue"] for s, h in found.items() if sgd[s]]
        print(f"| {sparse}-0.1-{name} | {len(found)} | {show([h['top_eigenvalue'] for h in found.values()], 0)} | "
              f"{show([h['trace'] for h in found.values()], 0)} | "
              f"{show(ratios, 2)} ({sum(r < 1 for r in ratios)}/{len(ratios)}) |")


def figure(runs, path, epoch=12):
    """The 1-D and 2-D loss slices of the seed-0 RigL 90 % runs of SGD and ZO-SAM m = 1."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"SGD": "rigl-0.1-sgd-s0", "ZO-SAM m = 1": "rigl-0.1-zosam-m1-s0"}
    load = lambda name, dims: json.load(open(os.path.join(runs, name, f"landscape_e{epoch}_{dims}.json")))  # noqa: E731
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    grids = {label: load(name, "2d") for label, name in names.items()}
    top = max(max(max(row) for row in g["losses"]) for g in grids.values())
    for label, name in names.items():
        one = load(name, "1d")
        axes[0].plot(one["alphas"], one["losses"], marker="o", label=label)
    axes[0].set_xlabel("α (filter-normalised direction)")
    axes[0].set_ylabel("training loss (8 batches)")
    axes[0].set_yscale("log")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    for ax, (label, g) in zip(axes[1:], grids.items()):
        levels = [x for x in (0.5, 1, 1.5, 2, 3, 5, 10, 20, 50, 100) if x <= top]
        c = ax.contour(g["betas"], g["alphas"], g["losses"], levels=levels)
        ax.clabel(c, fontsize=8)
        ax.set_title(f"{label}, epoch {epoch}")
        ax.set_xlabel("β")
        ax.set_ylabel("α")
    fig.suptitle("ResNet-20, digits with 30 % label noise, RigL at 90 % sparsity, seed 0")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what")
    a = sub.add_parser("analyse", help="gradient variance, ascent cosines and curvature per cell")
    a.add_argument("runs")
    sub.add_parser("curvature", help="commands measuring the Hessian at the end of every 90 %% run")
    sub.add_parser("measure-hessian", help="one run's Hessian at its final checkpoint").add_argument("run")
    sub.add_parser("curvature-table", help="the curvature measurements per 90 %% cell").add_argument("runs")
    sub.add_parser("paired", help="accuracy minus SGD's with the same seed, per cell").add_argument("runs")
    f = sub.add_parser("figure", help="loss slices of SGD and ZO-SAM m = 1 (seed-0 RigL 90 %% runs)")
    f.add_argument("runs")
    f.add_argument("png")
    sub.add_parser("sweep", help="commands of the ρ sweep (SAM, ZO-SAM m = 1; SNIP 98 %%; 2 seeds)")
    p.add_argument("--runs", default="study", help="parent folder of the runs")
    p.add_argument("--seeds", type=int, default=5)
    args = p.parse_args(argv)
    if args.what == "analyse":
        analyse(args.runs)
    elif args.what == "curvature":
        print("\n".join(curvature_commands(args.runs, args.seeds)))
    elif args.what == "measure-hessian":
        measure_hessian(args.run)
    elif args.what == "curvature-table":
        curvature_table(args.runs, args.seeds)
    elif args.what == "paired":
        paired(args.runs, args.seeds)
    elif args.what == "figure":
        figure(args.runs, args.png)
    elif args.what == "sweep":
        print("\n".join(sweep(args.runs)))
    else:
        print("\n".join(commands(args.runs, args.seeds)))


if __name__ == "__main__":
    main()
