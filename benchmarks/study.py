r"""The mnist1d study (benchmarks/RESULTS.md, "Does a cheap ascent buy SAM's
benefit?"): zosam-train commands printed for a runner, stage by stage, each
stage reading the runs of the ones before; then the tables and the figure.

    python benchmarks/study.py --runs R sweep > sweep.sh      # radii, seeds 0-1
    OMP_NUM_THREADS=1 xargs -P 2 -d '\n' -I{} sh -c {} < sweep.sh   # two at a time, one thread each; -d: keep quotes
    python benchmarks/study.py --runs R main > main.sh        # the picked radii, seeds 2-4; the oracle's c
    python benchmarks/study.py --runs R wallclock > wall.sh   # every arm at SGD's 60-epoch time
    python benchmarks/study.py --runs R sparse > sparse.sh    # SNIP and RigL at 90 % and 98 %
    python benchmarks/study.py --runs R collapse > c.sh       # SAM under RigL: what makes it collapse
    python benchmarks/study.py --runs R table                 # the tables (markdown)
    python benchmarks/study.py --runs R collapse-table        # the collapse stage's table
    python benchmarks/study.py --runs R start                 # SAM's first steps from the collapse runs' starts
    python benchmarks/study.py --runs R2 stall > stall.sh     # SAM probed along the stall; then stall-table
    python benchmarks/study.py --runs R figure gain.png       # gain over SGD against cost per step

A stage prints only the runs whose folder does not exist yet: after a crash,
remove the unfinished runs' folders and print the stage again. The stages
and tables that read runs know each one by the options in its config.json
(zosam-report's reader), not by its folder's name.

Setting: mnist1d's generator (3000 train / 1000 validation / 5000 clean
test), 40 % symmetric label noise on train and validation, the 1-D CNN
(width 32, depth 3), batch 128, 60 epochs, LR 0.1 cosine, momentum 0.9,
weight decay 5e-4. Radii are picked on validation over seeds 0 and 1, once
for each of the two accuracies reported: the test accuracy at the last epoch
(picked by the last epoch's validation accuracy) and at the best-validation
epoch (early stopping; picked by the best validation accuracy). The seeds
pair the runs: the same --seed is the same initialisation, data order, label
noise and directions. Every engine run probes its ascent (cos(ε, ∇L), the
loss rise, α of both priors) on 8 steps at the probed epochs, and every run
measures the Hessian's top eigenvalue and trace there; none of that changes
a trajectory (tests/test_train.py). The sparse cells (SNIP, RigL) widen the
CNN to 128 channels and run each arm at the radii the dense study's
validation picked: at 90 % sparsity SGD, SAM and the cheap ascents, at 98 %
SGD and SAM.
"""
import argparse
import glob
import os
import shlex
import statistics
from collections import defaultdict, namedtuple

from zosam_kernels.diagnostics import sam_along_gradient
from zosam_kernels.train.build import OPTIMIZER_OPTIONS, first_topology
from zosam_kernels.train.cli import parser
from zosam_kernels.train.loop import Run
from zosam_kernels.train.probes import cross_entropy
from zosam_kernels.train.report import interval, load_runs, read_metrics

COMMON = ("zosam-train --data mnist1d --model cnn1d --label-noise 0.4 --progress off --save-every 1000 "
          "--hessian-iters 20 --hessian-samples 10")
EPOCHS = 60
PROBED = "1,5,10,20,30,40,50,last"
SWEEP_SEEDS, SEEDS = (0, 1), (0, 1, 2, 3, 4)
# arm -> (zosam-train options, radius grid); forward passes per step: 2 m for ZO-SAM,
# 2 (m + 1) for the guided ascent (its prior is one more direction): guided m = 0 sits
# beside ZO-SAM m = 1, guided m = 3 beside ZO-SAM m = 4
ARMS = {
    "sgd": ("--optimizer sgd", (None,)),
    "sam": ("--optimizer sam", (0.05, 0.1, 0.2, 0.3)),
    # the random-direction arms reach ρ = 10: their first sweep (up to 3) picked its edge, 3
    "zosam-m1": ("--optimizer zosam --n-dirs 1", (0.1, 0.3, 1.0, 3.0, 10.0)),
    "zosam-m4": ("--optimizer zosam --n-dirs 4", (0.1, 0.3, 1.0, 3.0, 10.0)),
    "zosam-m16": ("--optimizer zosam --n-dirs 16", (0.1, 0.3, 1.0, 3.0, 10.0)),
    "coin-m1": ("--optimizer zosam-coin --n-dirs 1", (0.1, 0.3, 1.0, 3.0, 10.0)),
    # the isotropic random direction rho u/||u||, which zosam-train called rwp when this study ran
    "rwp": ("--optimizer random-direction", (0.1, 0.3, 1.0, 3.0, 10.0)),
    "msam": ("--optimizer msam", (0.1, 0.3, 1.0, 3.0)),
    "guided-m0": ("--optimizer zosam-guided --prior momentum --n-dirs 0", (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)),
    "guided-m3": ("--optimizer zosam-guided --prior momentum --n-dirs 3", (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)),
}
ORACLE_COSINES = (0.05, 0.1, 0.3, 0.5, 0.9)
SPARSE = {"snip": "--sparse snip", "rigl": "--sparse rigl --update-interval 100",
          # the collapse stage's cells: the same random topology kept fixed, and RigL from
          # weights scaled to their active fan-in
          "random": "--sparse random", "riglfanin": "--sparse rigl --update-interval 100 --sparse-init fan-in"}
DENSITIES = (0.1, 0.02)
SPARSE_WIDTH = 128       # 90 %: 17,800 weights, more than the dense net's 13,706
SPARSE_SEEDS = {0.1: SEEDS, 0.02: SWEEP_SEEDS}   # 98 % fits none of the noisy labels: 2 seeds say so
SPARSE_PROBED = "1,30,last"
ORACLE = "--optimizer oracle"      # the oracle's arm: at SAM's radius, at each of ORACLE_COSINES


def run_name(arm, rho, seed, epochs=EPOCHS, cell="dense", cosine=None):
    rho = "none" if rho is None else f"{rho:g}"
    extra = "" if cosine is None else f"-c{cosine:g}"
    return f"{cell}-{arm}-r{rho}{extra}-e{epochs}-s{seed}"


def command(runs, arm, rho, seed, epochs=EPOCHS, cell="dense", cosine=None, probes=True):
    options, _ = ARMS.get(arm, (ORACLE, None))
    out = os.path.join(runs, run_name(arm, rho, seed, epochs, cell, cosine))
    parts = [COMMON, options, f"--epochs {epochs} --seed {seed}"]
    if rho is not None:
        parts.append(f"--rho {rho:g}")
    if cosine is not None:
        parts.append(f"--cosine {cosine:g}")
    if cell != "dense":
        sparse, density = cell.split("@")
        parts.append(f"{SPARSE[sparse]} --density {density} --model-kwargs '{{\"width\": {SPARSE_WIDTH}}}'")
    if probes:
        epochs = PROBED if cell == "dense" else SPARSE_PROBED
        parts.append(f"--diagnostics {'hessian' if arm == 'sgd' else 'ascent,hessian'} --diagnostics-epochs {epochs}")
    return None if os.path.exists(out) else " ".join(parts) + f" --out {out} > {out}.log 2>&1"


# ---- reading runs ---------------------------------------------------------------------

# A run of the study, as its config.json's options say (in run_name's order)
Key = namedtuple("Key", "arm rho seed epochs cell cosine", defaults=(EPOCHS, "dense", None))
# what tells the arms apart: the optimizer and its options (rho and cosine are in Key themselves);
# and the sparse methods of SPARSE (the density is in the cell's name)
ARM_OPTIONS = ("optimizer", *(o for o in OPTIMIZER_OPTIONS if o not in ("rho", "cosine")))
SPARSE_OPTIONS = ("sparse", "sparse_init", "update_interval")


def resolved(flags):
    """zosam-train's options as these command-line flags set them, the others at their defaults."""
    return vars(parser().parse_args([*shlex.split(flags), "--out", os.devnull]))


def named(args, table, options):
    """The name in `table` (name -> resolved flags) whose flags agree with a run's `args` on
    `options`, or None."""
    return next((name for name, flags in table.items() if all(args[o] == flags[o] for o in options)), None)


def load(runs):
    """Key -> {"args", "summary", "rows"} of every finished run of the study's arms and cells
    in the folder `runs`, each known by its config.json's options (an option that the run's
    zosam-train did not have yet at its default)."""
    arms = {arm: resolved(flags) for arm, (flags, _) in ARMS.items()} | {"oracle": resolved(ORACLE)}
    methods = {method: resolved(flags) for method, flags in SPARSE.items()}
    defaults = resolved("")
    directories = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(runs, "*", "config.json")))
    found, where = {}, {}
    for directory, args, summary in load_runs(directories)[0]:
        args = {**defaults, **args}
        arm = named(args, arms, ARM_OPTIONS)
        method = "dense" if args["sparse"] == "dense" else named(args, methods, SPARSE_OPTIONS)
        if arm is None or method is None:
            continue      # not one of the study's runs
        cell = "dense" if method == "dense" else f"{method}@{args['density']:g}"
        key = Key(arm, args["rho"], args["seed"], args["epochs"], cell, args["cosine"])
        if key in found:
            raise SystemExit(f"{where[key]} and {directory} are the same run ({key}): remove one")
        found[key], where[key] = {"args": args, "summary": summary, "rows": read_metrics(directory)}, directory
    return found


METRICS = {  # accuracy reported -> (test accuracy, the validation accuracy that picks the radius)
    "final": (lambda r: r["summary"]["final_test_acc"], lambda r: r["rows"][-1]["val_acc"]),
    "early-stopped": (lambda r: r["summary"]["test_acc_at_best_val"], lambda r: r["summary"]["best_val_acc"]),
}


def pick(found, arm, metric, cell="dense"):
    """The radius of `arm` with the best mean validation accuracy over the sweep seeds."""
    _, grid = ARMS[arm]
    val = METRICS[metric][1]
    scores = {}
    for rho in grid:
        runs = [found.get(Key(arm, rho, s, cell=cell)) for s in SWEEP_SEEDS]
        if all(runs):
            scores[rho] = statistics.mean(val(r) for r in runs)
    if not scores:
        raise SystemExit(f"no finished sweep runs of {arm} in {cell}: run the sweep stage first")
    return max(scores, key=scores.get)


def fmt(mean, half, digits=2):
    return f"{mean:+.{digits}f}" if half is None else f"{mean:+.{digits}f} ± {half:.{digits}f}"


def step_seconds(run):
    """The median seconds of an unprobed training epoch (probed epochs pay the probes' passes)."""
    rows = [r for r in run["rows"] if "diagnostics" not in r] or run["rows"]
    return statistics.median(r["epoch_s"] for r in rows)


# ---- stages ----------------------------------------------------------------------------

def sweep_commands(runs):
    for seed in SWEEP_SEEDS:
        for arm, (_, grid) in ARMS.items():
            for rho in grid:
                yield command(runs, arm, rho, seed)


def picks(found, cell="dense", arms=ARMS):
    return {arm: {metric: pick(found, arm, metric, cell) for metric in METRICS} for arm in arms}


def picked_radii(by_metric):
    """The distinct radii one arm's two accuracies picked, in order (SGD's None first)."""
    return sorted(set(by_metric.values()), key=lambda r: -1 if r is None else r)


def main_commands(runs):
    found = load(runs)
    chosen = picks(found)
    for seed in SEEDS:
        for arm, by_metric in chosen.items():
            for rho in picked_radii(by_metric):
                if seed not in SWEEP_SEEDS:
                    yield command(runs, arm, rho, seed)
        for cosine in ORACLE_COSINES:    # at SAM's radius for the last epoch
            yield command(runs, "oracle", chosen["sam"]["final"], seed, cosine=cosine)


def costs(found, cell="dense"):
    """arm -> seconds per training epoch over SGD's, the median over the sweep runs."""
    seconds = defaultdict(list)
    for key, run in found.items():
        if key.cell == cell and key.epochs == EPOCHS and key.cosine is None:
            seconds[key.arm].append(step_seconds(run))
    sgd = statistics.median(seconds["sgd"])
    return {arm: statistics.median(s) / sgd for arm, s in seconds.items()}


def wallclock_epochs(cost, arm):
    return max(1, round(EPOCHS / cost[arm]))


def wallclock_commands(runs):
    """Every arm given SGD's 60-epoch training time: 60 / (its cost per epoch) epochs,
    at its radius for the last epoch, without probes (they would cost time); and SGD
    at each of those epochs, since a shorter schedule alone memorises less."""
    found = load(runs)
    chosen, cost = picks(found), costs(found)
    for seed in SEEDS:
        for arm in ARMS:
            if arm != "sgd":     # SGD's own 60 epochs are the reference (probes change no trajectory)
                yield command(runs, arm, chosen[arm]["final"], seed, epochs=wallclock_epochs(cost, arm), probes=False)
        for epochs in sorted({wallclock_epochs(cost, arm) for arm in ARMS} - {EPOCHS}):
            yield command(runs, "sgd", None, seed, epochs=epochs, probes=False)


# at 90 % the sparse net memorises, so the cheap ascents join SGD and SAM there; at 98 % it
# memorises nothing, and SGD against SAM says so
SPARSE_ARMS = {0.1: ("sgd", "sam", "zosam-m1", "coin-m1", "guided-m0"), 0.02: ("sgd", "sam")}


def sparse_commands(runs):
    """The sparse gate: each arm at the radii the dense study's validation picked."""
    chosen = picks(load(runs))
    for method in SPARSE:
        for density in DENSITIES:
            for seed in SPARSE_SEEDS[density]:
                for arm in SPARSE_ARMS[density]:
                    for rho in picked_radii(chosen[arm]):
                        yield command(runs, arm, rho, seed, cell=f"{method}@{density:g}")


# SAM collapsed under RigL at 90 % (the sparse stage). Is it RigL's regrowth, or the sparse
# random start? The same arms on the same random topology kept fixed, and under RigL from weights
# scaled to their active fan-in; at the radii the dense study's validation picked (RESULTS.md:
# SAM 0.2 and 0.1, the random-direction arms 3), fixed here so that this stage needs no dense run.
# SNIP's cell, where SAM won, for its epochs at chance.
COLLAPSE_CELLS = ("rigl@0.1", "random@0.1", "riglfanin@0.1", "snip@0.1")
COLLAPSE_ARMS = {"rigl@0.1": {"sgd": (None,), "sam": (0.2, 0.1), "zosam-m1": (3.0,), "coin-m1": (3.0,)},
                 "random@0.1": {"sgd": (None,), "sam": (0.2, 0.1)},
                 "snip@0.1": {"sgd": (None,), "sam": (0.2,)},
                 "riglfanin@0.1": {"sgd": (None,), "sam": (0.2, 0.1), "zosam-m1": (3.0,), "coin-m1": (3.0,)}}


# The stall, watched: the ascent probe (‖∇L‖, the loss rise L(θ + ε) − L(θ)) along SAM at ρ = 0.2
# and at ρ = 0 (SGD's update; SGD itself has no ε to probe), from both RigL starts. Its runs are
# named as the collapse stage's: give it a --runs folder of its own.
STALL_CELLS, STALL_RADII, STALL_SEEDS = ("rigl@0.1", "riglfanin@0.1"), (0.0, 0.2), (0, 1)
STALL_EPOCHS = (1, 2, 3, 5, 10, 20, 30, 60)


def stall_commands(runs):
    epochs = ",".join(map(str, STALL_EPOCHS))
    for seed in STALL_SEEDS:
        for cell in STALL_CELLS:
            for rho in STALL_RADII:
                line = command(runs, "sam", rho, seed, cell=cell, probes=False)
                if line is not None:
                    yield line.replace(" --out ", f" --diagnostics ascent --diagnostics-epochs {epochs} --out ", 1)


def stall_table(found):
    """Per start and radius, the mean over seeds at each probed epoch of the training loss,
    ‖∇L(θ)‖ and the loss rise (the ascent probe's 8 steps; 0 by construction at ρ = 0, left out)."""
    out = ["| start | ρ | measure | " + " | ".join(f"epoch {e}" for e in STALL_EPOCHS) + " |",
           "| --- | --- | --- | " + " | ".join("---" for _ in STALL_EPOCHS) + " |"]
    for cell in STALL_CELLS:
        for rho in STALL_RADII:
            runs = runs_of(found, "sam", rho, cell).values()
            if not runs:
                continue
            measures = (("training loss", lambda r, e: r["rows"][e - 1]["train_loss"], 3),
                        ("‖∇L(θ)‖", lambda r, e: _diagnostic(r, e, "ascent", "grad_norm"), 3),
                        ("loss rise", lambda r, e: _diagnostic(r, e, "ascent", "loss_rise"), 4))
            for name, read, digits in measures[:3 if rho else 2]:
                cells = [f"{statistics.mean(read(r, e) for r in runs):.{digits}f}" for e in STALL_EPOCHS]
                out.append(f"| {cell} | {rho:g} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def collapse_commands(runs):
    for seed in SEEDS:
        for cell in COLLAPSE_CELLS:
            for arm, radii in COLLAPSE_ARMS[cell].items():
                for rho in radii:
                    yield command(runs, arm, rho, seed, cell=cell, probes=False)


# ---- tables ----------------------------------------------------------------------------

# passes per step (zosam-bench counts them): ZO-SAM 2 m no-grad forwards and the gradient pass at
# θ + ε; the guided ascent's prior is one more direction; RWP and MSAM move before their only pass
PASSES = {"sgd": "1 F + 1 B", "sam": "2 F + 2 B", "zosam-m1": "3 F + 1 B", "zosam-m4": "9 F + 1 B",
          "zosam-m16": "33 F + 1 B", "coin-m1": "3 F + 1 B", "rwp": "1 F + 1 B", "msam": "1 F + 1 B",
          "guided-m0": "3 F + 1 B", "guided-m3": "9 F + 1 B", "oracle": "2 F + 2 B"}


def runs_of(found, arm, rho, cell="dense", epochs=EPOCHS, cosine=None):
    """seed -> run of one cell."""
    return {s: found[k] for s in SEEDS if (k := Key(arm, rho, s, epochs, cell, cosine)) in found}


def paired(found, arm, rho, metric, cell="dense", epochs=EPOCHS, cosine=None, base=("sgd", None),
           base_epochs=EPOCHS):
    """The per-seed differences from `base`'s run of the same seed (SGD at 60 epochs by default)."""
    test = METRICS[metric][0]
    theirs = runs_of(found, *base, cell, base_epochs)
    mine = runs_of(found, arm, rho, cell, epochs, cosine)
    return [test(mine[s]) - test(theirs[s]) for s in SEEDS if s in mine and s in theirs]


def _diagnostic(run, epoch, *keys):
    row = next((r for r in run["rows"] if r["epoch"] == epoch), {})
    value = row.get("diagnostics", {})
    for key in keys:
        value = (value or {}).get(key)
    return value


def _mean_of(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def _cell(values, digits=2, signed=False):
    """mean ± 95 % half-width; signed for differences."""
    if not values:
        return "-"
    mean, half, _ = interval(values)
    text = fmt(mean, half, digits)
    return text if signed else text.lstrip("+")


def accuracy_table(found, chosen, cost, cell="dense", arms=ARMS):
    out = ["| arm | passes per step | cost per epoch (× SGD) | ρ (last / early-stopped) | seeds "
           "| test acc, last epoch | − SGD, paired | seeds ≥ 3 points | test acc, early-stopped "
           "| − SGD, paired | noisy labels fitted at the end % | top eigenvalue at the end "
           "| Hessian trace at the end |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for arm in arms:
        rho_last, rho_es = chosen[arm]["final"], chosen[arm]["early-stopped"]
        last, early = runs_of(found, arm, rho_last, cell), runs_of(found, arm, rho_es, cell)
        if not last:
            continue
        d_last, d_es = paired(found, arm, rho_last, "final", cell), paired(found, arm, rho_es, "early-stopped", cell)
        eig = [_diagnostic(r, EPOCHS, "hessian", "top_eigenvalue") for r in last.values()]
        trace = [_diagnostic(r, EPOCHS, "hessian", "trace") for r in last.values()]
        rho = "-" if rho_last is None else f"{rho_last:g} / {rho_es:g}"
        wins = "-" if arm == "sgd" else (f"{sum(d >= 3 for d in d_last)}/{len(d_last)} · "
                                         f"{sum(d >= 3 for d in d_es)}/{len(d_es)}")
        out.append(f"| {arm} | {PASSES[arm]} | {cost.get(arm, float('nan')):.2f} | {rho} | {len(last)} "
                   f"| {_cell([r['summary']['final_test_acc'] for r in last.values()], 2)} "
                   f"| {'-' if arm == 'sgd' else _cell(d_last, 1, signed=True)} | {wins} "
                   f"| {_cell([r['summary']['test_acc_at_best_val'] for r in early.values()], 2)} "
                   f"| {'-' if arm == 'sgd' else _cell(d_es, 1, signed=True)} "
                   f"| {_cell([r['summary']['final_fit_noisy'] for r in last.values()], 1)} "
                   f"| {_cell([e for e in eig if e is not None], 2)} "
                   f"| {_cell([t for t in trace if t is not None], 1)} |")
    return "\n".join(out)


def radius_table(found, cell="dense", arms=ARMS, seeds=SEEDS):
    """Every radius run on all the seeds: where the two accuracies picked different radii,
    the one not picked is seen too (a reading, not a pick: the picks are validation's)."""
    out = ["| arm | ρ | seeds | last epoch − SGD, paired | seeds ≥ 3 points | early-stopped − SGD, paired "
           "| seeds ≥ 3 points |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for arm in arms:
        for rho in ARMS[arm][1]:
            if arm == "sgd" or len(runs_of(found, arm, rho, cell)) < len(seeds):
                continue
            d_last, d_es = paired(found, arm, rho, "final", cell), paired(found, arm, rho, "early-stopped", cell)
            out.append(f"| {arm} | {rho:g} | {len(d_last)} | {_cell(d_last, 1, signed=True)} "
                       f"| {sum(d >= 3 for d in d_last)}/{len(d_last)} | {_cell(d_es, 1, signed=True)} "
                       f"| {sum(d >= 3 for d in d_es)}/{len(d_es)} |")
    return "\n".join(out)


# (arm, its control): the same seed is the same directions, so the pair isolates one change
CONTROLS = (("zosam-m1", "coin-m1", "the estimate's sign"), ("zosam-m4", "coin-m1", "m = 4 directions, signed"),
            ("zosam-m16", "coin-m1", "m = 16 directions, signed"), ("coin-m1", "rwp", "2 more passes, no aim"),
            ("guided-m0", "zosam-m1", "the prior for the random direction, same passes"),
            ("guided-m3", "zosam-m4", "the prior for one of 4 directions, same passes"))


def control_table(found, chosen):
    """Arm against arm, each at its own picked radius, paired by seed."""
    out = ["| arm − control | what differs | last epoch, paired | early-stopped, paired |", "| --- | --- | --- | --- |"]
    for arm, control, what in CONTROLS:
        cells = []
        for metric in METRICS:
            d = paired(found, arm, chosen[arm][metric], metric, base=(control, chosen[control][metric]))
            cells.append(_cell(d, 1, signed=True))
        out.append(f"| {arm} − {control} | {what} | {cells[0]} | {cells[1]} |")
    return "\n".join(out)


def position_table(found, chosen):
    """(arm − SGD)/(SAM − SGD) of the mean paired differences, per accuracy."""
    out = ["| arm | position, last epoch | position, early-stopped |", "| --- | --- | --- |"]
    sam = {m: statistics.mean(paired(found, "sam", chosen["sam"][m], m)) for m in METRICS}
    for arm in ARMS:
        if arm in ("sgd", "sam"):
            continue
        cells = []
        for metric in METRICS:
            d = paired(found, arm, chosen[arm][metric], metric)
            cells.append(f"{statistics.mean(d) / sam[metric]:+.2f}" if d else "-")
        out.append(f"| {arm} | {cells[0]} | {cells[1]} |")
    return "\n".join(out)


def ascent_table(found, chosen):
    """The probe's measures at the picked radius (for the last epoch), over seeds and probed epochs."""
    epochs = [int(e) for e in PROBED.split(",")[:-1]] + [EPOCHS]
    out = ["| arm | passes per step | cos(ε, ∇L) | random direction's | loss rise L(θ+ε) − L(θ) "
           "| loss rise / ρ |", "| --- | --- | --- | --- | --- | --- |"]
    for arm in ARMS:
        if arm == "sgd":
            continue
        rho = chosen[arm]["final"]
        runs = runs_of(found, arm, rho)
        cos = [_diagnostic(r, e, "ascent", "cosine") for r in runs.values() for e in epochs]
        rise = [_diagnostic(r, e, "ascent", "loss_rise") for r in runs.values() for e in epochs]
        rand = _mean_of([_diagnostic(r, 1, "ascent", "random_direction") for r in runs.values()])
        if _mean_of(cos) is None:
            continue
        out.append(f"| {arm} (ρ {rho:g}) | {PASSES[arm]} | {_mean_of(cos):.4f} | {rand:.4f} "
                   f"| {_mean_of(rise):.4f} | {_mean_of(rise) / rho:.4f} |")
    return "\n".join(out)


def alpha_table(found, chosen, arms=("sam", "zosam-m1", "guided-m0")):
    """α of both priors at each probed epoch, in the runs of `arms` (their own trajectories)."""
    epochs = [int(e) for e in PROBED.split(",")[:-1]] + [EPOCHS]
    head = " | ".join(f"{arm}: α momentum | {arm}: α previous gradient" for arm in arms)
    out = [f"| epoch | {head} |", "| --- |" + " --- | --- |" * len(arms)]
    for e in epochs:
        cells = []
        for arm in arms:
            runs = runs_of(found, arm, chosen[arm]["final"]).values()
            for prior in ("alpha_momentum", "alpha_gradient"):
                value = _mean_of([_diagnostic(r, e, "ascent", prior) for r in runs])
                cells.append("-" if value is None else f"{value:.3f}")
        out.append(f"| {e} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def oracle_table(found, chosen):
    rho = chosen["sam"]["final"]
    out = ["| ascent | cos(ε, ∇L) | seeds | last epoch − SGD, paired | early-stopped − SGD, paired |",
           "| --- | --- | --- | --- | --- |"]
    for cosine in ORACLE_COSINES:
        d_last = paired(found, "oracle", rho, "final", cosine=cosine)
        d_es = paired(found, "oracle", rho, "early-stopped", cosine=cosine)
        if d_last:
            out.append(f"| oracle, ρ {rho:g} | {cosine:g} | {len(d_last)} | {_cell(d_last, 1, signed=True)} "
                       f"| {_cell(d_es, 1, signed=True)} |")
    d_last, d_es = paired(found, "sam", rho, "final"), paired(found, "sam", rho, "early-stopped")
    out.append(f"| SAM, ρ {rho:g} | 1 | {len(d_last)} | {_cell(d_last, 1, signed=True)} "
               f"| {_cell(d_es, 1, signed=True)} |")
    return "\n".join(out)


def wallclock_table(found, chosen, cost):
    out = ["| arm | epochs in SGD's 60-epoch time | seeds | last epoch − SGD (60 epochs), paired "
           "| early-stopped − SGD (60 epochs), paired | last epoch − SGD at the same epochs, paired "
           "| early-stopped − SGD at the same epochs, paired |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for arm in ARMS:
        if arm == "sgd":
            continue
        epochs, rho = wallclock_epochs(cost, arm), chosen[arm]["final"]
        cells = [_cell(paired(found, arm, rho, metric, epochs=epochs, base_epochs=base), 1, signed=True)
                 for base in (EPOCHS, epochs) for metric in METRICS]
        seeds = len(paired(found, arm, rho, "final", epochs=epochs))
        if seeds:
            out.append(f"| {arm} (ρ {rho:g}) | {epochs} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(out)


CHANCE_LOSS = 2.25    # ln 10 = 2.30 is the loss of a constant uniform guess over 10 classes


def epochs_at_chance(run):
    """Epochs before the training loss first falls below CHANCE_LOSS (all of them if never)."""
    return next((r["epoch"] - 1 for r in run["rows"] if r["train_loss"] < CHANCE_LOSS), len(run["rows"]))


def collapse_table(found):
    """Each arm of the collapse stage in each cell: accuracy, paired against SGD in the same
    cell, and against the same arm and seed in RigL's cell with the standard init."""
    out = ["| cell | arm | ρ | seeds | epochs at chance | test acc, last epoch | − SGD, paired "
           "| − same arm in rigl@0.1, paired | test acc, early-stopped | − SGD, paired "
           "| noisy labels fitted at the end % |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    last, early = METRICS["final"][0], METRICS["early-stopped"][0]
    for cell in COLLAPSE_CELLS:
        for arm, radii in COLLAPSE_ARMS[cell].items():
            for rho in radii:
                mine = runs_of(found, arm, rho, cell)
                if not mine:
                    continue
                standard = runs_of(found, arm, rho, "rigl@0.1")
                across = [last(mine[s]) - last(standard[s]) for s in mine if s in standard]
                d_last, d_es = paired(found, arm, rho, "final", cell), paired(found, arm, rho, "early-stopped", cell)
                sgd = arm == "sgd"
                out.append(f"| {cell} | {arm} | {'-' if rho is None else f'{rho:g}'} | {len(mine)} "
                           f"| {_cell([epochs_at_chance(r) for r in mine.values()], 1)} "
                           f"| {_cell([last(r) for r in mine.values()], 2)} "
                           f"| {'-' if sgd else _cell(d_last, 1, signed=True)} "
                           f"| {'-' if cell == 'rigl@0.1' else _cell(across, 1, signed=True)} "
                           f"| {_cell([early(r) for r in mine.values()], 2)} "
                           f"| {'-' if sgd else _cell(d_es, 1, signed=True)} "
                           f"| {_cell([r['summary']['final_fit_noisy'] for r in mine.values()], 1)} |")
    return "\n".join(out)


def first_weights(args, batches=8):
    """The first weights of a zosam-train run, rebuilt from its config.json `args` as zosam-train
    built them (its model, topology and start; on the CPU, which gives the same weights whatever
    device ran it), its masks (weight -> bool mask; None if dense) and its first batches."""
    args = argparse.Namespace(**{**args, "device": "cpu", "workers": 0})
    run = Run(args)
    first_topology(args, run.sparsity, run.train_loader, run.data)
    loader = iter(run.train_loader)
    masking = run.sparsity.masking
    return run.model, None if masking is None else masking.param_masks(), [next(loader) for _ in range(batches)]


def start_table(found, cells=("rigl@0.1", "riglfanin@0.1"), radii=(0.1, 0.2)):
    """SAM's first steps from the starts of the collapse stage's runs (its SGD runs': every
    arm of a cell and seed starts from the same weights)."""
    out = ["| start | seeds | loss at theta0 | ‖g‖ at theta0 | "
           + " | ".join(f"<g(θ0 + ε), g> / ‖g‖², ρ = {r:g}" for r in radii) + " |",
           "| --- | --- | --- | --- | " + " | ".join("---" for _ in radii) + " |"]
    for cell in cells:
        runs = runs_of(found, "sgd", None, cell).values()
        if not runs:
            raise SystemExit(f"no finished SGD runs of {cell}: run the collapse stage first")
        per_seed = []
        for run in runs:
            model, masks, batches = first_weights(run["args"])
            measured = sam_along_gradient(model, cross_entropy, batches, radii, masks)
            per_seed.append({"loss": measured["loss"], "norm": measured["grad_norm"], **measured["along"]})
        columns = ["loss", "norm", *radii]
        digits = {"loss": 4, "norm": 4}
        out.append(f"| {cell} | {len(per_seed)} | "
                   + " | ".join(_cell([m[c] for m in per_seed], digits.get(c, 2), signed=c in radii)
                                for c in columns) + " |")
    return "\n".join(out)


def tables(found):
    chosen, cost = picks(found), costs(found)
    parts = ["Dense, equal epochs (mean ± 95 % t-interval over seeds; paired: minus SGD's run of the same seed)",
             accuracy_table(found, chosen, cost),
             "Every radius run on all five seeds", radius_table(found),
             "Position of each arm between SGD (0) and SAM (1), from the mean paired differences",
             position_table(found, chosen),
             "Arm against its control (each at its picked radius; paired by seed)", control_table(found, chosen),
             "What each ascent measures (8 probed steps at each of the probed epochs, every seed)",
             ascent_table(found, chosen),
             "α = cos(prior, ∇L) over training", alpha_table(found, chosen),
             "The cosine SAM's benefit needs (noisy oracle)", oracle_table(found, chosen)]
    if any(key.epochs != EPOCHS for key in found):
        parts += ["Equal wall-clock (SGD's 60 epochs of training time)", wallclock_table(found, chosen, cost)]
    for method in SPARSE:
        for density in DENSITIES:
            cell = f"{method}@{density:g}"
            if any(key.cell == cell for key in found):
                arms = SPARSE_ARMS[density]
                parts += [f"Sparse: {method} at density {density:g} (width {SPARSE_WIDTH}; the dense study's radii)",
                          accuracy_table(found, chosen, costs(found, cell), cell, arms),
                          f"Sparse: {method} at density {density:g}, every radius run on all its seeds",
                          radius_table(found, cell, arms, SPARSE_SEEDS[density])]
    return "\n\n".join(parts)


def figure(found, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    chosen, cost = picks(found), costs(found)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.4), sharex=True)
    for ax, metric, title in zip(axes, METRICS, ("test accuracy at the last epoch",
                                                 "test accuracy at the best-validation epoch")):
        for arm, marker in zip(ARMS, "os^vDPX*ph"):
            d = paired(found, arm, chosen[arm][metric], metric)
            if arm == "sgd" or not d:
                continue
            mean, half, _ = interval(d)
            ax.errorbar(cost[arm], mean, yerr=half or 0, fmt=marker, capsize=3,
                        label=f"{arm} (ρ {chosen[arm][metric]:g})")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds per training epoch, × SGD's")
        ax.set_xscale("log")
        ax.set_xticks([1, 1.5, 2, 3, 5, 8], labels=["1", "1.5", "2", "3", "5", "8"])
        ax.minorticks_off()
    axes[0].set_ylabel("gain over SGD, paired, points (95 % interval)")
    fig.suptitle("mnist1d, 1-D CNN, 40 % label noise, 60 epochs: what each ascent buys", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="the folder of every run's output")
    sub = p.add_subparsers(dest="what", required=True)
    for name, what in (("sweep", "the radius sweep's commands (seeds 0-1)"),
                       ("main", "seeds 2-4 at the picked radii, and the oracle's cosines"),
                       ("wallclock", "every arm at SGD's 60-epoch training time"),
                       ("sparse", "SNIP and RigL at 90 and 98 %% sparsity"),
                       ("collapse", "SAM under RigL: a fixed random topology, and the fan-in init"),
                       ("table", "the study's tables (markdown)"),
                       ("collapse-table", "the collapse stage's table (markdown)"),
                       ("start", "SAM's first steps from each start of the collapse stage (markdown)"),
                       ("stall", "SAM probed along the stall (a --runs folder of its own)"),
                       ("stall-table", "the stall stage's table (markdown)")):
        sub.add_parser(name, help=what)
    sub.add_parser("figure", help="accuracy gain over SGD against cost per step").add_argument("path")
    args = p.parse_args(argv)
    stages = {"sweep": sweep_commands, "main": main_commands, "wallclock": wallclock_commands,
              "sparse": sparse_commands, "collapse": collapse_commands, "stall": stall_commands}
    os.makedirs(args.runs, exist_ok=True)
    if args.what in stages:
        for line in stages[args.what](args.runs):
            if line is not None:     # None: the run's folder exists
                print(line)
    elif args.what == "table":
        print(tables(load(args.runs)))
    elif args.what == "collapse-table":
        print(collapse_table(load(args.runs)))
    elif args.what == "start":
        print(start_table(load(args.runs)))
    elif args.what == "stall-table":
        print(stall_table(load(args.runs)))
    else:
        figure(load(args.runs), args.path)


if __name__ == "__main__":
    main()
