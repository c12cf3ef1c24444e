"""The scripts in benchmarks/ run end to end on tiny sizes (their figures live
in benchmarks/RESULTS.md; here only that they run and report every row)."""
import json
import os
import pathlib
import re
import runpy
import subprocess
import sys

import pytest
import torch

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
# the scripts that measure: each takes --json and --csv from harness.parser and writes its rows through it
MEASURING = ["compile_batchnorm.py", "crn_noise.py", "ddp_comm.py", "forward_cost.py", "kernels.py",
             "loop_options_cost.py", "restore_drift.py", "triton_sass.py", "zo_quality.py"]


@pytest.fixture(autouse=True)
def beside_the_scripts(monkeypatch):
    """The scripts import harness.py from beside them, where `python benchmarks/NAME.py` finds
    it; only for each test here (on sys.path for good, benchmarks/kernels.py would shadow the
    `kernels` package that transformers imports)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))


def run_script(name, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [name] + argv)
    runpy.run_path(str(BENCHMARKS / name), run_name="__main__")


@pytest.mark.parametrize("name", MEASURING)
def test_every_measuring_script_takes_the_shared_output_options(name, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        run_script(name, ["--help"], monkeypatch)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--json PATH" in out and "--csv PATH" in out


def test_json_rows_and_csv_rows_are_the_same(tmp_path, monkeypatch):
    import csv
    out, table = tmp_path / "crn.json", tmp_path / "crn.csv"
    for _ in range(2):   # the CSV grows by the rows of each run, under one header
        run_script("crn_noise.py", ["--draws", "3", "--json", str(out), "--csv", str(table)], monkeypatch)
    rows = json.loads(out.read_text())["rows"]
    with open(table) as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 2 * len(rows)
    for line, row in zip(lines, rows + rows):
        assert line.keys() == row.keys()
        assert all(line[k] == str(v) for k, v in row.items())


def test_benchmarks_and_tests_collect_together():
    """No two test modules share a basename (pytest imports them by it)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "tests/test_cpu_kernels.py", "benchmarks"], cwd=BENCHMARKS.parent,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]


def test_kernel_roofline_reports_every_op(tmp_path, monkeypatch):
    out = tmp_path / "k.json"
    # the sweep launches the Triton kernel directly: compiled on CUDA, interpreted on the CPU
    device = "cuda" if torch.cuda.is_available() else "cpu"
    run_script("kernels.py", ["--device", device, "--sizes", "1000,4097", "--sweep", "1000", "--json", str(out)],
               monkeypatch)
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["block_q"], r["num_warps"]) for r in result["sweep"]] == \
        [(b, w) for b in (64, 128, 256, 512, 1024) for w in (2, 4, 8)]
    assert all(r["max_abs_diff"] == 0 for r in result["sweep"])   # the tiling changes no element
    assert [r["elements"] for r in rows].count(4097) == (8 if device == "cuda" else 7)   # + tl.randn on CUDA
    assert {r["op"] for r in rows} >= {"copy_ (roofline)", "add_directions_ K=4", "naive randn * c + add_"}
    assert all(r["ms"] > 0 for r in rows)


@pytest.mark.filterwarnings("ignore::UserWarning")   # CPU autocast notes on bf16
def test_zo_quality_compares_every_variant_with_the_reference(tmp_path, monkeypatch):
    out = tmp_path / "q.json"
    run_script("zo_quality.py", ["--batch-size", "8", "--seeds", "3", "--device", "cpu",
                                 "--json", str(out)], monkeypatch)
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 6
    reference = data["rows"][0]
    assert reference["sign_agreement"] == 1 and abs(reference["cosine"] - 1) < 1e-6
    assert all(-1 <= r["cosine"] <= 1 + 1e-6 for r in data["rows"])


def test_triton_sass_reads_every_kernel_compiled_for_hopper(tmp_path):
    """Compiled ahead of time for sm_90 (no GPU needed), in a process without
    the interpreter that this one runs the kernels through."""
    out = tmp_path / "sass.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(BENCHMARKS / "triton_sass.py"), "--json", str(out)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {r["case"]: r for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == 6 and all(r["registers"] > 0 for r in rows.values())
    # every case makes each normal once: 4x the special-function work per element
    # would mean threads computing the same counter's normals over again
    assert len({r["mufu_per_element"] for r in rows.values()}) == 1
    # the aligned, unmasked add moves the weights 16 bytes at a time
    assert rows["add K=1, n % 16 = 0"]["accesses"].get("STG.E.128") == 2


def test_tl_randn_variant_adds_one_normal_per_element():
    """The roofline's one-normal-per-Philox kernel (run compiled on CUDA; here
    through the Triton interpreter): theta moves by c times standard normals."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("kernels_bench", BENCHMARKS / "kernels.py")
    kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernels)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    theta = torch.zeros(5000, device=device)
    kernels.randn_variant()(theta, 7, 0.5)
    z = theta.cpu() / 0.5
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.05
    assert len(torch.unique(z)) == 5000     # a fresh normal for every element


def test_crn_noise_reports_both_settings(tmp_path, monkeypatch):
    out = tmp_path / "crn.json"
    run_script("crn_noise.py", ["--draws", "4", "--dropout", "0.5", "--json", str(out)], monkeypatch)
    rows = json.loads(out.read_text())["rows"]
    assert [(r["dropout"], r["crn"]) for r in rows] == [(0.5, True), (0.5, False)]
    assert all(r["std"] > 0 and 0 <= r["agree"] <= 1 for r in rows)


def test_forward_cost_times_passes_and_steps(monkeypatch, capsys):
    run_script("forward_cost.py", ["--model", "resnet20", "--batch-size", "4", "--reps", "1"], monkeypatch)
    out = capsys.readouterr().out
    assert "step: ZOSAM's passes by hand" in out and "r_step =" in out
    # 2 t(fb) / (2m t(pass) + t(fb)) lies in (0, 2) for any positive times
    allowed = float(re.search(r"x SAM allowed by the passes ([0-9.]+), measured [0-9.]+", out).group(1))
    assert 0 < allowed < 2


def test_loop_options_cost_reports_every_option(monkeypatch, capsys):
    run_script("loop_options_cost.py", ["--model", "resnet20", "--batch-size", "4", "--reps", "3"],
               monkeypatch)
    out = capsys.readouterr().out
    assert all(f"| {name} |" in out for name in ("common random numbers", "grad scaler", "max_grad_norm",
                                                 "BatchNorm freezing, per extra pass"))


def test_compile_batchnorm_counts_graphs_and_statistics(monkeypatch, capsys):
    import torch
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile (Dynamo) does not support this Python")
    run_script("compile_batchnorm.py", ["--methods", "sam", "zosam", "--steps", "3"], monkeypatch)
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in capsys.readouterr().out.splitlines()
            if " | " in line}
    assert rows["sam"][:3] == ["[1, 1, 1]", "[1, 2, 3]", "True"]
    assert rows["zosam"][:3] == ["[2, 2, 2]", "[1, 2, 3]", "True"]


def test_ddp_comm_counts_bytes_beyond_sgd():
    from test_distributed import free_port
    port = free_port()
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(port), str(BENCHMARKS / "ddp_comm.py"),
                          "--batch-size", "8", "--steps", "1"],
                         capture_output=True, text=True, timeout=180, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-2000:]
    zosam = next(line for line in run.stdout.splitlines() if line.startswith("| zosam |"))
    assert zosam.split("|")[3].strip() == "20"   # 2 coefficients (n_dirs 1) and 3 finiteness flags, 4 B each


def test_paper_table_commands_parse_and_collect(tmp_path, capsys):
    """Every printed command is a valid zosam-train command line; collect
    averages the summaries it finds (values written here, mean and std by hand)."""
    import shlex

    from zosam_kernels.train.cli import parser
    table = runpy.run_path(str(BENCHMARKS / "paper_table.py"))
    table["main"](["commands", "--data-dir", "/data", "--seeds", "2", "--runs", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * (2 * 2 * 2 * 2 + 5)       # seeds x (datasets x methods x densities x opts + 5)
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "zosam-train"
        parser().parse_args(argv[1:])
    for seed, acc in enumerate((90.0, 92.0)):
        out = tmp_path / f"cifar10-rigl-0.1-zosam-s{seed}"
        out.mkdir()
        (out / "summary.json").write_text(json.dumps({"complete": True, "final_test_acc": acc}))
        (out / "config.json").write_text(json.dumps({"args": {
            "out": str(out), "data": "cifar10", "sparse": "rigl", "optimizer": "zosam", "density": 0.1}}))
    table["main"](["collect", str(tmp_path)])
    text = capsys.readouterr().out
    assert "| RIGL+ZOSAM | 91.00 ± 12.71 | - |" in text    # 2 seeds: t(0.975, 1) = 12.706, s = 1.414


T4 = 2.7764451    # t(0.975, 4): the 95 % interval of five seeds


def write_run(line, summary, rows):
    """The finished run of a printed zosam-train command `line`, in zosam-train's format:
    config.json ({"args": the resolved options}), summary.json and metrics.jsonl, in the
    command's --out; returns the options."""
    import shlex

    from zosam_kernels.train.cli import parse_args
    from zosam_kernels.train.outputs import write_json
    argv = shlex.split(line.split(" > ")[0])
    assert argv[0] == "zosam-train"
    args = parse_args(argv[1:])
    os.makedirs(args.out)
    write_json(os.path.join(args.out, "config.json"), {"args": vars(args)})
    write_json(os.path.join(args.out, "summary.json"), summary)
    with open(os.path.join(args.out, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return args


def fake_runs(study, folder, seeds, accuracy):
    """Finished runs of every sweep arm and radius in `seeds`, written in zosam-train's
    format: accuracy(arm, rho, seed) -> (final test, early-stopped test, last val, best val)."""
    for arm, (_, grid) in study["ARMS"].items():
        for rho in grid:
            for seed in seeds:
                final, early, last_val, best_val = accuracy(arm, rho, seed)
                rows = [{"epoch": e, "val_acc": last_val, "epoch_s": 1.0 + (arm != "sgd")} for e in range(1, 61)]
                write_run(study["command"](str(folder), arm, rho, seed), {
                    "complete": True, "final_test_acc": final, "test_acc_at_best_val": early,
                    "best_val_acc": best_val, "final_fit_noisy": 50.0}, rows)


def test_study_picks_radii_on_validation_and_pairs_by_seed(tmp_path, capsys):
    import random
    import shlex

    from zosam_kernels.train.cli import parser
    study = runpy.run_path(str(BENCHMARKS / "study.py"))
    rng = random.Random(0)
    table = {}

    def accuracy(arm, rho, seed):
        table[arm, rho, seed] = tuple(round(rng.uniform(30, 70), 2) for _ in range(4))
        return table[arm, rho, seed]
    fake_runs(study, tmp_path, (0, 1, 2, 3, 4), accuracy)
    found = study["load"](str(tmp_path))
    moved = tmp_path / study["run_name"]("sam", 0.1, 0)
    moved.rename(tmp_path / "any-name")
    assert study["load"](str(tmp_path)).keys() == found.keys()        # a run is known by its config, not its name
    (tmp_path / "any-name").rename(moved)
    for arm, (_, grid) in study["ARMS"].items():      # the picks, recomputed: mean validation of seeds 0-1
        for metric, column in (("final", 2), ("early-stopped", 3)):
            best = max(grid, key=lambda r: table[arm, r, 0][column] + table[arm, r, 1][column])
            assert study["pick"](found, arm, metric) == best
    study["main"](["--runs", str(tmp_path), "table"])
    text = capsys.readouterr().out
    rho = study["pick"](found, "sam", "final")
    d = [table["sam", rho, s][0] - table["sgd", None, s][0] for s in range(5)]
    mean = sum(d) / 5
    half = T4 * (sum((x - mean) ** 2 for x in d) / 4) ** 0.5 / 5 ** 0.5
    row = next(line for line in text.splitlines() if line.startswith("| sam |"))
    assert f"| {mean:+.1f} ± {half:.1f} | {sum(x >= 3 for x in d)}/5 · " in row
    assert "| 2.00 |" in row                                          # its epochs took twice SGD's seconds
    zo, coin = study["pick"](found, "zosam-m1", "final"), study["pick"](found, "coin-m1", "final")
    d = [table["zosam-m1", zo, s][0] - table["coin-m1", coin, s][0] for s in range(5)]
    mean = sum(d) / 5
    half = T4 * (sum((x - mean) ** 2 for x in d) / 4) ** 0.5 / 5 ** 0.5
    row = next(line for line in text.splitlines() if line.startswith("| zosam-m1 − coin-m1 |"))
    assert f"| {mean:+.1f} ± {half:.1f} |" in row
    radii = [line for line in text.split("Every radius run on all five seeds")[1].split("Position")[0].splitlines()
             if line.startswith("| sam | ")]
    assert len(radii) == len(study["ARMS"]["sam"][1])                   # every radius has five seeds here
    study["main"](["--runs", str(tmp_path), "sweep"])
    assert capsys.readouterr().out == ""                               # every sweep run exists
    for stage in ("main", "wallclock", "sparse"):
        study["main"](["--runs", str(tmp_path), stage])
        lines = capsys.readouterr().out.splitlines()
        assert lines and len(lines) == len(set(lines))
        for line in lines:
            argv = shlex.split(line.split(" > ")[0])
            assert argv[0] == "zosam-train"
            parser().parse_args(argv[1:])
    def finish(line, final, early):
        write_run(line, {"complete": True, "final_test_acc": final, "test_acc_at_best_val": early,
                         "best_val_acc": 31.0, "final_fit_noisy": 20.0},
                  [{"epoch": 60, "val_acc": 30.0, "epoch_s": 1.0}])
    study["main"](["--runs", str(tmp_path), "wallclock"])             # every arm's epochs cost twice SGD's: 30
    lines = capsys.readouterr().out.splitlines()
    assert sum("--optimizer sgd " in line and "--epochs 30 " in line for line in lines) == 5
    for line in lines:
        seed = int(line.split("--seed ")[1].split()[0])
        finish(line, 40.0 + seed + 2 * ("--optimizer sam " in line), 50.0 - ("--optimizer sam " in line))
    study["main"](["--runs", str(tmp_path), "table"])
    row = next(line for line in capsys.readouterr().out.split("Equal wall-clock")[1].splitlines()
               if line.startswith("| sam "))
    d = [40.0 + s + 2 - table["sgd", None, s][0] for s in range(5)]      # against SGD's 60 epochs
    mean = sum(d) / 5
    half = T4 * (sum((x - mean) ** 2 for x in d) / 4) ** 0.5 / 5 ** 0.5
    assert row.startswith(f"| sam (ρ {study['pick'](found, 'sam', 'final'):g}) | 30 | 5 | {mean:+.1f} ± {half:.1f} |")
    assert row.endswith("| +2.0 ± 0.0 | -1.0 ± 0.0 |")                   # against SGD's 30 epochs
    study["main"](["--runs", str(tmp_path), "sparse"])                # the sparse cells, finished
    for line in capsys.readouterr().out.splitlines():
        finish(line, 40.0 + ("--optimizer sam " in line), 45.0)
    study["main"](["--runs", str(tmp_path), "table"])
    text = capsys.readouterr().out
    sparse = text.split("Sparse: snip at density 0.1 ")[1]
    sam = next(line for line in sparse.splitlines() if line.startswith("| sam |"))
    assert "| 5 | 41.00 ± 0.00 | +1.0 ± 0.0 | 0/5 · 0/5 | 45.00 ± 0.00 | +0.0 ± 0.0 |" in sam
    # 90 %: the cheap ascents too
    cheap = next(line for line in sparse.splitlines() if line.startswith("| zosam-m1 |"))
    assert "| 5 | 40.00 ± 0.00 | +0.0 ± 0.0 |" in cheap
    assert "| zosam-m1 |" not in text.split("Sparse: snip at density 0.02 ")[1].split("Sparse:")[0]
    study["main"](["--runs", str(tmp_path), "figure", str(tmp_path / "gain.png")])
    assert (tmp_path / "gain.png").stat().st_size > 0


def test_study_collapse_stage_needs_no_dense_run_and_pairs_across_cells(tmp_path, capsys):
    import shlex

    from zosam_kernels.train.cli import parser
    study = runpy.run_path(str(BENCHMARKS / "study.py"))
    study["main"](["--runs", str(tmp_path), "collapse"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(set(lines)) == 5 * (5 + 3 + 5 + 2)    # seeds x (rigl, random, riglfanin, snip) arms
    accuracy, stalled = {}, {}
    for line in lines:
        args = parser().parse_args(shlex.split(line.split(" > ")[0])[1:])
        key = (args.sparse, args.sparse_init, args.optimizer, args.rho, args.seed)
        # SAM stalls at chance for 10 + seed epochs from the standard start, SGD for 2
        stalled[key] = 2 if args.optimizer != "sam" else (10 + args.seed if args.sparse_init == "standard" else 1)
        accuracy[key] = 50.0 + args.seed + 5 * (args.sparse_init == "fan-in") - 20 * (
            args.optimizer == "sam" and args.sparse_init == "standard") + (args.rho or 0)
        rows = [{"epoch": e, "train_loss": 2.3 if e <= stalled[key] else 1.5, "val_acc": 30.0, "epoch_s": 1.0}
                for e in range(1, 61)]
        write_run(line, {"complete": True, "final_test_acc": accuracy[key], "test_acc_at_best_val": accuracy[key] + 1,
                         "best_val_acc": 31.0, "final_fit_noisy": 20.0}, rows)
        if args.sparse == "snip":           # as written by a zosam-train that had no --sparse-init yet
            config = pathlib.Path(args.out) / "config.json"
            written = json.loads(config.read_text())
            del written["args"]["sparse_init"]
            config.write_text(json.dumps(written))
    assert {k[:2] for k in accuracy} == {("rigl", "standard"), ("random", "standard"), ("rigl", "fan-in"),
                                         ("snip", "standard")}
    study["main"](["--runs", str(tmp_path), "collapse"])
    assert capsys.readouterr().out == ""                               # every run exists
    study["main"](["--runs", str(tmp_path), "collapse-table"])
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): line
            for line in capsys.readouterr().out.splitlines()[2:]}
    half = T4 * (2.5 ** 0.5) / 5 ** 0.5                                 # seeds 0-4: s = sqrt(2.5)
    # epochs at chance 10..14, accuracy 30.2 + seed, SGD's 50 + seed: -19.8 paired
    assert rows["rigl@0.1", "sam", "0.2"] == (f"| rigl@0.1 | sam | 0.2 | 5 | 12.0 ± {half:.1f} | 32.20 ± {half:.2f} "
                                              f"| -19.8 ± 0.0 | - | 33.20 ± {half:.2f} | -19.8 ± 0.0 | 20.0 ± 0.0 |")
    # from the fan-in start: 55.2 + seed, +0.2 over SGD there, +25 over SAM from the standard start
    assert rows["riglfanin@0.1", "sam", "0.2"].startswith(
        f"| riglfanin@0.1 | sam | 0.2 | 5 | 1.0 ± 0.0 | 57.20 ± {half:.2f} | +0.2 ± 0.0 | +25.0 ± 0.0 |")
    assert rows["random@0.1", "sgd", "-"].startswith("| random@0.1 | sgd | - | 5 | 2.0 ± 0.0 |")
    assert rows["snip@0.1", "sam", "0.2"].startswith(f"| snip@0.1 | sam | 0.2 | 5 | 12.0 ± {half:.1f} |")


def test_study_start_rebuilds_each_run_from_its_config(tmp_path):
    """The start stage measures SAM's first step at the first weights of the collapse runs,
    rebuilt from their config.json: the same as what zosam-train builds from the command line."""
    from zosam_kernels.diagnostics import sam_along_gradient
    from zosam_kernels.train.build import first_topology
    from zosam_kernels.train.loop import Run
    from zosam_kernels.train.probes import cross_entropy
    study = runpy.run_path(str(BENCHMARKS / "study.py"))
    cell = "riglfanin@0.1"
    line = study["command"](str(tmp_path), "sgd", None, 0, cell=cell, probes=False)
    args = write_run(line, {"complete": True, "final_test_acc": 50.0}, [{"epoch": 60, "epoch_s": 1.0}])
    vars(args).update(device="cpu", workers=0)
    run = Run(args)                                                     # zosam-train's own start
    first_topology(args, run.sparsity, run.train_loader, run.data)
    loader = iter(run.train_loader)
    batches, masks = [next(loader) for _ in range(8)], run.sparsity.masking.param_masks()
    found = study["load"](str(tmp_path))
    config = found[study["Key"]("sgd", None, 0, cell=cell)]["args"]
    model, rebuilt_masks, rebuilt_batches = study["first_weights"](config)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), run.model.parameters()))
    assert len(rebuilt_masks) == len(masks) and all(torch.equal(m, n) for m, n in zip(rebuilt_masks.values(),
                                                                                       masks.values()))
    assert all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(rebuilt_batches, batches))
    expected = sam_along_gradient(run.model, cross_entropy, batches, (0.1, 0.2), masks)
    row = study["start_table"](found, cells=(cell,)).splitlines()[2]
    assert row == (f"| {cell} | 1 | {expected['loss']:.4f} | {expected['grad_norm']:.4f} | "
                   f"{expected['along'][0.1]:+.2f} | {expected['along'][0.2]:+.2f} |")


def test_study_stall_stage_probes_sam_and_tabulates_each_epoch(tmp_path, capsys):
    import shlex

    from zosam_kernels.train.cli import parse_args
    study = runpy.run_path(str(BENCHMARKS / "study.py"))
    study["main"](["--runs", str(tmp_path), "stall"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * 2 * 2                                    # seeds x starts x radii
    epochs = study["STALL_EPOCHS"]
    for line in lines:
        args = parse_args(shlex.split(line.split(" > ")[0])[1:])
        assert args.optimizer == "sam" and args.diagnostics == ["ascent"]
        assert args.diagnostics_epochs == list(epochs)
        norm = 1.0 + args.seed + 10 * args.rho                         # known values per run
        rows = [{"epoch": e, "train_loss": 2.0 + args.seed, "val_acc": 30.0, "epoch_s": 1.0,
                 **({"diagnostics": {"ascent": {"grad_norm": norm * e, "loss_rise": 0.01 * e}}} if e in epochs else {})}
                for e in range(1, 61)]
        write_run(line, {"complete": True, "final_test_acc": 50.0}, rows)
    study["main"](["--runs", str(tmp_path), "stall-table"])
    rows = capsys.readouterr().out.splitlines()[2:]
    assert len(rows) == 2 * (3 + 2)                                   # starts x measures (no loss rise at rho 0)
    norm = next(r for r in rows if r.startswith("| riglfanin@0.1 | 0.2 | ‖∇L(θ)‖ |"))
    assert norm.split("|")[4:-1] == [f" {(1.5 + 2) * e:.3f} " for e in epochs]   # seeds 0 and 1, rho 0.2
    loss = next(r for r in rows if r.startswith("| rigl@0.1 | 0 | training loss |"))
    assert loss.split("|")[4].strip() == "2.500"


def test_models_study_picks_per_cell_pairs_by_seed_and_judges_against_sam(tmp_path, capsys):
    """benchmarks/models_study.py: the radius picked per cell on the sweep seeds' last validation
    accuracy, the main stage at that radius only, gains paired with SGD's seed, and the verdict:
    an arm keeps 75 % of SAM's gain where gain(arm) - 0.75 gain(SAM) has its interval above 0."""
    study = runpy.run_path(str(BENCHMARKS / "models_study.py"))
    cells = ("cnn-noisy", "mlp-clean", "cnn-snip90")
    gains = {"sgd": 0.0, "sam": 6.0, "rwp": 5.5, "random-direction": 1.0}   # over SGD, at the best radius
    for table, keep in ((study["CELLS"], cells), (study["ARMS"], gains)):
        for name in [n for n in table if n not in keep]:
            del table[name]

    def write(lines):
        """Each printed run, finished: the largest radius validates best; the seed's noise is paired."""
        for line in filter(None, lines):
            out = line.split(" --out ")[1].split(" ")[0]
            name = os.path.basename(out)
            cell = next(c for c in cells if name.startswith(c + "-"))
            arm = max((a for a in gains if name.startswith(f"{cell}-{a}-r")), key=len)
            seed = int(name.rsplit("-s", 1)[1])
            best = arm == "sgd" or name.split("-r")[-1].split("-s")[0] == f"{study['ARMS'][arm][1][-1]:g}"
            gain, noise = gains[arm] - (0 if best else 2), 0.1 * ((7 * seed + len(cell)) % 5)
            gain -= 4.5 if (cell, arm) == ("cnn-snip90", "rwp") else 0   # rwp fails the sparse cell only
            epoch_s = 1.0 + 0.2 * (arm != "sgd") if "/cost/" in out else 9.0   # contended runs: ignored
            rows = [{"epoch": e, "val_acc": 40 + gain, "epoch_s": epoch_s} for e in (1, 2)]
            write_run(line, {"complete": True, "final_test_acc": 50 + noise + gain,
                             "test_acc_at_best_val": 60 + noise + gain / 2, "best_val_acc": 45 + gain}, rows)

    runs = str(tmp_path / "runs")
    write(study["sweep_commands"](runs))
    found = study["load"](runs)
    for cell in cells:
        for arm in gains:
            assert study["pick"](found, cell, arm) == study["ARMS"][arm][1][-1]
    main = [c for c in study["main_commands"](runs) if c]
    assert len(main) == len(cells) * len(gains) * 3
    assert all(f"-r{study['ARMS'][a][1][-1]:g}-s" in c for c in main for a in gains if a != "sgd" and f"-{a}-r" in c)
    write(main)
    write(study["cost_commands"](runs))   # the cost stage: its own shorter runs, in runs/cost
    found, costs = study["load"](runs), study["load"](runs, cost=True)
    assert len(costs) == len(cells) * len(gains) and all(seed == 0 for *_, seed in costs)
    rows = study["cell_rows"](found, "cnn-noisy", costs)
    assert rows["sam"]["seeds"] == 5 and all(g == pytest.approx(6.0) for g in rows["sam"]["gain"]["last"].values())
    assert rows["rwp"]["cost"] == pytest.approx(1.2)
    study["main"](["--runs", runs, "table"])
    out = capsys.readouterr().out
    assert "| sam: its gain over SGD | | +6.0 ± 0.0 | +6.0 ± 0.0 | +6.0 ± 0.0 |" in out
    assert "| rwp | 1.20 | +1.0 ± 0.0 yes | +1.0 ± 0.0 yes | -3.5 ± 0.0 no |" in out      # 5.5 - 0.75 * 6
    assert "| random-direction | 1.20 | -3.5 ± 0.0 no | -3.5 ± 0.0 no | -3.5 ± 0.0 no |" in out   # 1 - 4.5
    # the question is over the model x label cells: the sparse cell is shown, not required
    assert "that keep 75% of SAM's gain in every model × label cell: rwp." in out
    assert "No verdict yet" not in out
    # a model x label cell without runs withholds the answer, and is named
    partial = study["verdict"]({key: run for key, run in found.items() if key[0] != "mlp-clean"}, costs)
    assert partial.endswith("No verdict yet: the model × label cells mlp-clean have no runs.")
    # the figure: a panel per model, its points the arms of its cells, and a panel for the sparse cell
    fig = study["figure"](found, costs, str(tmp_path / "gain.png"))
    panels = {ax.get_title().split(" ")[0].rstrip(":"): len(ax.containers) for ax in fig.axes}
    assert panels == {"cnn": len(gains), "mlp": len(gains), "bn": 0, "cnn-snip90": len(gains)}
    assert (tmp_path / "gain.png").stat().st_size > 0


def test_models_study_counts_a_diverged_run_at_chance_and_keeps_it_out_of_the_pick(tmp_path, capsys):
    """A run that diverged (summary.json with diverged_at) is a result: its last epoch counts as
    chance, early stopping keeps its best validation epoch before, and a radius that diverged in a
    sweep seed scores chance there."""
    study = runpy.run_path(str(BENCHMARKS / "models_study.py"))
    for table, keep in ((study["CELLS"], ("cnn-noisy",)), (study["ARMS"], ("sgd", "sam"))):
        for name in [n for n in table if n not in keep]:
            del table[name]
    chance = study["CHANCE"]

    def write(lines, diverge):
        for line in filter(None, lines):
            name = os.path.basename(line.split(" --out ")[1].split(" ")[0])
            rho = name.split("-r")[-1].split("-s")[0]
            seed = int(name.rsplit("-s", 1)[1])
            val = 40.0 if rho == "none" else 40 + 10 * float(rho)      # the largest radius validates best
            rows = [{"epoch": e, "val_acc": val, "epoch_s": 1.0} for e in (1, 2)]
            summary = {"complete": True, "final_test_acc": 50.0 + (rho != "none"),
                       "test_acc_at_best_val": 60.0 + (rho != "none"), "best_val_acc": val}
            if (rho, seed) in diverge:
                epoch, early = diverge[(rho, seed)]
                summary.update(complete=False, diverged_at=epoch, test_acc_at_best_val=early)
                rows = rows[:epoch - 1]
            write_run(line, summary, rows)

    runs = str(tmp_path / "runs")
    write(study["sweep_commands"](runs), {("0.8", 1): (2, 55.0)})      # the largest radius diverges in seed 1
    found = study["load"](runs)
    assert study["diverged"](found[("cnn-noisy", "sam", 0.8, 1)])
    assert study["pick"](found, "cnn-noisy", "sam") == 0.4              # 0.8 scores (48 + chance) / 2
    write(study["main_commands"](runs), {("0.4", 4): (1, None)})       # a main seed diverges in epoch 1
    rows = study["cell_rows"](study["load"](runs), "cnn-noisy")
    sam = rows["sam"]
    assert sam["seeds"] == 5 and sam["diverged"] == 1
    assert sam["gain"]["last"] == {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0, 4: chance - 50.0}
    assert sam["gain"]["early"][4] == chance - 60.0
    study["main"](["--runs", runs, "table"])
    assert "| sam | 0.4 | 5 (1 diverged) |" in capsys.readouterr().out


def test_models_study_cells_restricts_a_stage_and_refuses_an_unknown_cell(tmp_path, capsys):
    study = runpy.run_path(str(BENCHMARKS / "models_study.py"))
    study["main"](["--runs", str(tmp_path), "sweep", "--cells", "mlp-clean,bn-noisy"])
    lines = capsys.readouterr().out.splitlines()
    cells = {"-".join(os.path.basename(line.split(" --out ")[1].split(" ")[0]).split("-")[:2]) for line in lines}
    assert cells == {"mlp-clean", "bn-noisy"}
    assert len(lines) == sum(len(study["ARMS"][a][1]) * 2 for c in cells for a in study["arms_of"](c))
    with pytest.raises(SystemExit):
        study["main"](["--runs", str(tmp_path), "sweep", "--cells", "mlp-clean,resnet"])
    assert "--cells: unknown resnet" in capsys.readouterr().err
