r"""Which cheap ascent buys SAM's benefit on more than one model (benchmarks/RESULTS.md,
"Cheap ascents across models"): zosam-train commands printed for a runner, stage by
stage, then the tables and the figure. The runs are read back through zosam-report's
reader (their config.json), never from their folders' names.

    python benchmarks/models_study.py --runs R sweep > sweep.sh   # every radius, seeds 0-1
    OMP_NUM_THREADS=1 xargs -P 2 -d '\n' -I{} sh -c {} < sweep.sh  # two at a time, one thread each
    python benchmarks/models_study.py --runs R main > main.sh     # the picked radius, seeds 2-4
    python benchmarks/models_study.py --runs R cost > cost.sh     # then run it alone, one at a time (-P 1)
    python benchmarks/models_study.py --runs R table              # the tables and the verdict (markdown)
    python benchmarks/models_study.py --runs R figure gain.png    # gain over SGD against cost, a panel per model
    (--cells cnn-noisy,mlp-clean: a stage's runs for these cells only, to run the cheap cells first)

The cost of an arm is the median seconds of its epochs in the cost stage, COST_EPOCHS
epochs of seed 0 at the smallest radius, run one at a time on an otherwise idle
machine, over SGD's (the other stages run two at a time, so their epoch times
measure the contention as well). A stage prints only the runs whose folder does not exist yet: after a crash, remove
the folders without a summary.json and print the stage again (a run that diverged has
one: it is a result, counted at chance, CHANCE).

Setting: mnist1d's generator, batch 128, EPOCHS epochs, LR 0.1 cosine, momentum 0.9,
weight decay 5e-4. Three models: the 1-D CNN of the first study (cnn, 13,706
weights), an MLP of width 256 (mlp, 78,858 weights, 5.8 times as many) and the CNN
with a BatchNorm after each convolution (bn, 13,898 weights, where SAM-ON applies). Two label
settings: 40 % symmetric label noise on the 3000 training and the validation
examples (noisy), and clean labels on the first 1000 training examples, which SGD
fits entirely (clean). One sparse cell: the CNN at width 128, 90 % sparse by SNIP
from weights scaled to their active fan-in, noisy labels. The radius of each arm is
picked once per cell, on the mean validation accuracy of the last epoch over seeds
0 and 1; seeds 2-4 run at that radius only, and both accuracies (the last epoch's,
and the one at the best validation epoch: early stopping) are reported at it. The
random and zeroth-order arms and MSAM use the relative radius (radius_scale
"relative": rho times each tensor's RMS per weight), one convention on every model;
SAM and its partial forms keep SAM's absolute radius; RWP and LPF-SGD their
authors' filter-relative noise. The seeds pair the runs: the same --seed is the
same initialisation, data order, label noise and directions.
"""
import argparse
import os
import shlex
import statistics
import sys

from zosam_kernels.train.cli import parse_args
from zosam_kernels.train.report import configuration, interval, load_runs, read_metrics

EPOCHS = 60
COST_EPOCHS = 8
COMMON = f"zosam-train --data mnist1d --epochs {EPOCHS} --progress off --save-every 1000"
PROBE = "--diagnostics ascent --diagnostics-epochs 1,last"   # cos(eps, grad L) of every arm but SGD
SWEEP_SEEDS, MAIN_SEEDS = (0, 1), (2, 3, 4)
MODELS = {"cnn": "--model cnn1d", "mlp": "--model mlp1d --model-kwargs '{\"width\": 256}'",
          "bn": "--model cnn1d --model-kwargs '{\"norm\": true}'"}
LABELS = {"noisy": "--label-noise 0.4", "clean": "--train-size 1000"}
CELLS = {f"{m}-{lab}": f"{MODELS[m]} {LABELS[lab]}" for m in MODELS for lab in LABELS}
SPARSE_CELL = "cnn-snip90"   # beside the model x label settings; the verdict's question is over those
CELLS[SPARSE_CELL] = ("--model cnn1d --model-kwargs '{\"width\": 128}' --sparse snip --density 0.1 "
                       "--sparse-init fan-in --label-noise 0.4")
RELATIVE = (0.1, 0.3, 1.0)       # rho in units of each tensor's RMS per weight
# arm -> (zosam-train options, radius grid, the cells it runs in: None for all). A grid whose
# largest radius validation picked in some cell grew by one point, in every cell alike, and
# again after the next sweep where that point was picked (RWP, LPF-SGD, the guided and the
# partial ascents); SAM's and MSAM's once.
ARMS = {
    "sgd": ("--optimizer sgd", (None,), None),
    "sam": ("--optimizer sam", (0.05, 0.1, 0.2, 0.4, 0.8), None),
    "zosam-m1": ("--optimizer zosam --n-dirs 1 --radius-scale relative", RELATIVE, None),
    "coin-m1": ("--optimizer zosam-coin --n-dirs 1 --radius-scale relative", RELATIVE, None),
    "random-direction": ("--optimizer random-direction --radius-scale relative", RELATIVE, None),
    "rwp": ("--optimizer rwp", (0.005, 0.01, 0.02, 0.04, 0.08), None),
    "lpf-sgd": ("--optimizer lpf-sgd --draws 2", (0.001, 0.003, 0.01, 0.03, 0.1), None),
    "msam": ("--optimizer msam --radius-scale relative", (0.01, 0.03, 0.1, 0.3), None),
    "guided-m0": ("--optimizer zosam-guided --prior momentum --n-dirs 0", (0.1, 0.3, 1.0, 3.0), None),
    "sam-last": ("--optimizer sam-partial --perturb last:1", (0.05, 0.1, 0.2, 0.4, 0.8), None),
    "sam-last2": ("--optimizer sam-partial --perturb last:2", (0.05, 0.1, 0.2, 0.4, 0.8), None),
    "sam-on": ("--optimizer sam-on", (0.2, 0.5, 1.0, 2.0), ("bn-noisy", "bn-clean")),
}
SPARSE_ARMS = ("sgd", "sam", "zosam-m1", "coin-m1", "random-direction", "rwp")


def arms_of(cell):
    return [a for a, (_, _, cells) in ARMS.items()
            if (cells is None or cell in cells) and (cell != SPARSE_CELL or a in SPARSE_ARMS)]


def run_name(cell, arm, rho, seed):
    return f"{cell}-{arm}-r{'none' if rho is None else f'{rho:g}'}-s{seed}"


def argv(cell, arm, rho, seed, cost=False):
    """zosam-train's arguments for a run (cost: the cost stage's, shorter and unprobed)."""
    options, _, _ = ARMS[arm]
    line = (f"{COMMON} {CELLS[cell]} {options} --seed {seed}" + ("" if arm == "sgd" or cost else f" {PROBE}")
            + ("" if rho is None else f" --rho {rho:g}"))
    out = shlex.split(line)[1:]
    if cost:
        out[out.index("--epochs") + 1] = str(COST_EPOCHS)
    return out


def command(runs, cell, arm, rho, seed, cost=False):
    out = os.path.join(runs, "cost" if cost else "", run_name(cell, arm, rho, seed))
    if os.path.exists(out):
        return None
    return "zosam-train " + shlex.join(argv(cell, arm, rho, seed, cost)) + f" --out {out} > {out}.log 2>&1"


def _key(args):
    return configuration(vars(args) if not isinstance(args, dict) else args)


def planned(cost=False):
    """configuration (every option but the seed and the execution's) -> (cell, arm, rho)."""
    out = {}
    for cell in CELLS:
        for arm in arms_of(cell):
            for rho in ARMS[arm][1]:
                args = parse_args([*argv(cell, arm, rho, 0, cost), "--out", "unused"])
                out[_key(args)] = (cell, arm, rho)
    return out


def load(runs, cost=False):
    """(cell, arm, rho, seed) -> {"summary", "rows"} of every finished run of the study (or of its
    cost stage) under `runs`."""
    runs = os.path.join(runs, "cost") if cost else runs
    dirs = [os.path.join(runs, d) for d in sorted(os.listdir(runs))
            if os.path.exists(os.path.join(runs, d, "config.json"))] if os.path.isdir(runs) else []
    plan, found = planned(cost), {}
    for directory, args, summary in load_runs(dirs, diverged=True)[0]:
        where = plan.get(_key(args))
        if where is not None:
            found[(*where, args["seed"])] = {"summary": summary, "rows": read_metrics(directory)}
    return found


# A diverged run is a result: its weights are no longer finite, and such a net answers one class
# for every input, so its last epoch counts as chance on mnist1d's ten balanced classes; early
# stopping keeps the epoch of its best validation accuracy before it diverged.
CHANCE = 10.0


def diverged(run):
    return run["summary"].get("diverged_at") is not None


def pick(found, cell, arm):
    """The radius of `arm` in `cell` with the best mean last-epoch validation accuracy over the sweep seeds."""
    scores = {}
    for rho in ARMS[arm][1]:
        runs = [found.get((cell, arm, rho, s)) for s in SWEEP_SEEDS]
        if all(runs):
            scores[rho] = statistics.mean(CHANCE if diverged(r) else r["rows"][-1]["val_acc"] for r in runs)
    return max(scores, key=scores.get) if scores else None


# ---- stages ---------------------------------------------------------------------------

def sweep_commands(runs, cells=None):
    return [command(runs, cell, arm, rho, seed) for cell in cells or CELLS for arm in arms_of(cell)
            for rho in ARMS[arm][1] for seed in SWEEP_SEEDS]


def cost_commands(runs, cells=None):
    os.makedirs(os.path.join(runs, "cost"), exist_ok=True)
    return [command(runs, cell, arm, ARMS[arm][1][0], 0, cost=True) for cell in cells or CELLS for arm in arms_of(cell)]


def main_commands(runs, cells=None):
    found, out = load(runs), []
    for cell in cells or CELLS:
        for arm in arms_of(cell):
            rho = pick(found, cell, arm)
            if rho is None and arm != "sgd":
                raise SystemExit(f"no finished sweep runs of {arm} in {cell}: run the sweep stage first")
            out += [command(runs, cell, arm, rho, seed) for seed in MAIN_SEEDS]
    return out


# ---- tables ---------------------------------------------------------------------------

def _runs(found, cell, arm):
    rho = pick(found, cell, arm)
    return rho, {s: found[(cell, arm, rho, s)] for s in SWEEP_SEEDS + MAIN_SEEDS if (cell, arm, rho, s) in found}


def _early(run):
    acc = run["summary"]["test_acc_at_best_val"]
    return CHANCE if acc is None else acc      # None: diverged in its first epoch


TEST = {"last": lambda r: CHANCE if diverged(r) else r["summary"]["final_test_acc"], "early": _early}


def epoch_seconds(run):
    """The median seconds of an unprobed epoch (the probed ones pay the probe's passes)."""
    rows = [r for r in run["rows"] if "diagnostics" not in r] or run["rows"]
    return statistics.median(r["epoch_s"] for r in rows)


def fmt(values, digits=1, signed=True):
    mean, half, n = interval(values)
    if mean is None:
        return "-"
    sign = "+" if signed else ""
    return f"{mean:{sign}.{digits}f}" + ("" if half is None else f" ± {half:.{digits}f}")


def cell_rows(found, cell, costs=None):
    """Per arm of `cell`: its radius, cost (× SGD's epoch time in the cost stage's runs `costs`), and
    per seed its paired gains."""
    _, sgd = _runs(found, cell, "sgd")
    seconds = {arm: epoch_seconds(run) for (c, arm, _, _), run in (costs or {}).items() if c == cell}
    out = {}
    for arm in arms_of(cell):
        rho, runs = _runs(found, cell, arm)
        if not runs:
            continue
        paired = [s for s in runs if s in sgd]
        out[arm] = dict(
            rho=rho, seeds=len(runs), diverged=sum(map(diverged, runs.values())),
            cost=seconds[arm] / seconds["sgd"] if {arm, "sgd"} <= set(seconds) else None,
            gain={m: {s: f(runs[s]) - f(sgd[s]) for s in paired} for m, f in TEST.items()},
            acc={m: [f(r) for r in runs.values()] for m, f in TEST.items()},
            cosine=[((r["summary"].get("diagnostics") or {}).get("ascent") or {}).get("cosine") for r in runs.values()])
    return out


KEEP, CHEAP = 0.75, 1.3   # the question: an ascent at most 1.3x an SGD step that keeps 75 % of SAM's gain


def keeps(rows, arm, metric):
    """Per seed, gain(arm) - 0.75 gain(SAM): its interval above 0 says the arm keeps 3/4 of SAM's gain."""
    mine, sam = rows[arm]["gain"][metric], rows["sam"]["gain"][metric]
    return [mine[s] - KEEP * sam[s] for s in mine if s in sam]


def verdict(found, costs):
    """Per arm and cell, gain(arm) - 0.75 gain(SAM) at the last epoch with its interval, marked
    "yes" above 0, "no" below 0, "?" across it; SAM's own gain on top; then the arms that answer
    the question: at most CHEAP x SGD's epoch and "yes" in every model x label cell (the sparse
    cell is shown beside; sam-on, run on the BatchNorm model only, cannot answer)."""
    tables = {cell: rows for cell in CELLS if "sam" in (rows := cell_rows(found, cell, costs))}
    settings = [cell for cell in tables if cell != SPARSE_CELL]
    missing = [cell for cell in CELLS if cell != SPARSE_CELL and cell not in tables]
    lines = [f"| arm | cost × SGD (max over the model × label cells) | {' | '.join(tables)} |",
             "|---" * (len(tables) + 2) + "|",
             "| sam: its gain over SGD | | " + " | ".join(fmt(list(rows["sam"]["gain"]["last"].values()))
                                                       for rows in tables.values()) + " |"]
    answer = []
    for arm in ARMS:
        if arm in ("sgd", "sam"):
            continue
        entries, marks, spent = [], [], []
        for cell, rows in tables.items():
            if arm not in rows:
                entries.append("not run")
                continue
            kept = keeps(rows, arm, "last")
            mean, half, _ = interval(kept)
            mark = "?" if half is None or mean - half <= 0 <= mean + half else ("yes" if mean > 0 else "no")
            entries.append(f"{fmt(kept)} {mark}")
            if cell != SPARSE_CELL:
                spent.append(float("inf") if rows[arm]["cost"] is None else rows[arm]["cost"])
                marks.append(mark)
        if all(entry == "not run" for entry in entries):
            continue
        cost = "-" if not spent or max(spent) == float("inf") else f"{max(spent):.2f}"
        lines.append(f"| {arm} | {cost} | {' | '.join(entries)} |")
        if spent and max(spent) <= CHEAP and marks == ["yes"] * len(settings):
            answer.append(arm)
    lines += ["", f"Each cell: gain(arm) − {KEEP} × gain(SAM), per seed, at the last epoch (yes: the interval "
              "is above 0, no: below, ?: it holds 0). "
              + (f"No verdict yet: the model × label cells {', '.join(missing)} have no runs." if missing else
                 f"Arms at most {CHEAP}× SGD that keep {KEEP:.0%} of SAM's gain in every model × label cell: "
                 f"{', '.join(answer)}." if answer else
                 f"No arm at most {CHEAP}× SGD keeps {KEEP:.0%} of SAM's gain in every model × label cell.")]
    return "\n".join(lines)


def table(found, costs):
    out = []
    for cell in CELLS:
        rows = cell_rows(found, cell, costs)
        if not rows:
            continue
        out += [f"**{cell}** (mean ± 95 % t-interval over seeds; gains paired with SGD's run of the same seed)", "",
                "| arm | ρ | seeds | cost per epoch (× SGD) | test acc, last epoch | − SGD | test acc, early-stopped "
                "| − SGD | cos(ε, ∇L), last epoch |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for arm, r in rows.items():
            cost = "-" if r["cost"] is None else f"{r['cost']:.2f}"
            cos = [c for c in r["cosine"] if c is not None]
            rho = "-" if r["rho"] is None else f"{r['rho']:g}"
            seeds = f"{r['seeds']}" + (f" ({r['diverged']} diverged)" if r["diverged"] else "")
            out.append(f"| {arm} | {rho} | {seeds} | {cost} | "
                       f"{fmt(r['acc']['last'], 2, False)} | {fmt(list(r['gain']['last'].values()))} | "
                       f"{fmt(r['acc']['early'], 2, False)} | {fmt(list(r['gain']['early'].values()))} | "
                       f"{fmt(cos, 4, False) if cos else '-'} |")
        out.append("")
    out += [f"**Verdict**: arms costing at most {CHEAP}× an SGD epoch that keep {KEEP:.0%} of SAM's gain", "",
            verdict(found, costs)]
    return "\n".join(out)


def figure(found, costs, path):
    """Gain over SGD against cost per epoch, a point per arm: a panel per model, and the sparse cell's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # a panel per model (noisy and clean labels), and one for the sparse cell beside them
    panels = [(f"{model} (o noisy, s clean)", [(f"{model}-noisy", "o"), (f"{model}-clean", "s")]) for model in MODELS]
    panels.append((f"{SPARSE_CELL}: cnn width 128, SNIP 90 % (noisy)", [(SPARSE_CELL, "^")]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, cells) in zip(axes[0], panels):
        for cell, marker in cells:
            rows = cell_rows(found, cell, costs)
            for arm, r in rows.items():
                mean, half, _ = interval(list(r["gain"]["last"].values()))
                if mean is None or r["cost"] is None:
                    continue
                ax.errorbar(r["cost"], mean, yerr=half or 0, marker=marker, capsize=2, linestyle="none")
                ax.annotate(arm, (r["cost"], mean), fontsize=6)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_title(title)
        ax.set_xlabel("cost per epoch (× SGD)")
        ax.set_ylabel("test acc − SGD, last epoch (points)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def main(argv_=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", required=True, help="the folder of the study's runs")
    p.add_argument("stage", choices=("sweep", "main", "cost", "table", "figure"))
    p.add_argument("path", nargs="?", help="figure: the PNG to write")
    p.add_argument("--cells", default=",".join(CELLS),
                   help="sweep, main, cost: the runs of these cells only (comma-separated; default all)")
    args = p.parse_args(argv_)
    cells = args.cells.split(",")
    if unknown := [c for c in cells if c not in CELLS]:
        p.error(f"--cells: unknown {', '.join(unknown)}; the study's cells are {', '.join(CELLS)}")
    if args.stage in ("sweep", "main", "cost"):
        os.makedirs(args.runs, exist_ok=True)
        stage = {"sweep": sweep_commands, "main": main_commands, "cost": cost_commands}[args.stage]
        commands = stage(args.runs, cells)
        print("\n".join(c for c in commands if c))
    elif args.stage == "table":
        print(table(load(args.runs), load(args.runs, cost=True)))
    else:
        if not args.path:
            raise SystemExit("figure: give the PNG's path")
        figure(load(args.runs), load(args.runs, cost=True), args.path)


if __name__ == "__main__":
    sys.exit(main())
