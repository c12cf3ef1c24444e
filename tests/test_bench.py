"""zosam-bench end to end on a tiny configuration: passes are counted, not
assumed, and the memory columns see SAM's extra parameter-sized buffer."""
import csv
import json
import re
import sys

import pytest
import torch

from zosam_kernels.bench import benchmark
from zosam_kernels.bench.cli import parse


def test_bench_counts_passes_and_writes_json_and_csv(tmp_path, capsys):
    out, rows_csv = tmp_path / "r.json", tmp_path / "r.csv"
    argv = ["--model", "resnet20", "--batch-size", "8", "--steps", "2", "--warmup", "1",
            "--n-dirs", "2", "--device", "cpu", "--zo-batch-fraction", "0.25",
            "--methods", "sgd,sam,zosam,zosam-unfused,zosam-frac", "--json", str(out),
            "--csv", str(rows_csv)]
    rows = benchmark(argv)
    passes = {r["method"]: (r["fwd_passes"], r["bwd_passes"], r["fwd_batch_equiv"]) for r in rows}
    assert passes == {"sgd": (1, 1, 1), "sam": (2, 2, 2), "zosam": (5, 1, 5),
                      "zosam-unfused": (5, 1, 5), "zosam-frac": (5, 1, 2)}
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and len(data["results"]) == 5
    assert all(r["step_ms"] > 0 and r["images_per_s"] > 0 for r in data["results"])
    # SGD keeps its momentum; SAM also the weights it restores; ZO-SAM only the momentum.
    # Both keep two copies of BatchNorm's running statistics (a frozen pass's, and the
    # step's start for a skipped step): 1 % of ResNet-20's weights
    buffers = {r["method"]: r["param_buffers"] for r in rows}
    assert abs(buffers["sgd"] - 1) < 0.01 and abs(buffers["sam"] - 2) < 0.02
    assert abs(buffers["zosam"] - 1) < 0.02 and buffers["zosam-unfused"] < 1.02
    peak = {r["method"]: r["peak_mem_bytes"] for r in rows}
    assert all(v > 0 for v in peak.values())
    out = capsys.readouterr().out
    assert "zosam" in out and "× SAM" in out
    benchmark(argv)
    lines = list(csv.DictReader(rows_csv.open()))
    assert len(lines) == 10 and lines[0]["method"] == "sgd" and float(lines[-1]["step_ms"]) > 0


def test_bench_profile_writes_traces_with_named_phases(tmp_path, capfd):
    benchmark(["--model", "resnet20", "--batch-size", "4", "--steps", "1", "--warmup", "1",
               "--device", "cpu", "--methods", "sam,zosam", "--profile", str(tmp_path)])
    # stderr holds our progress bar and nothing else: none of the profiler's own
    # lines (Kineto's profiler_start/stop, c10's [W...] warnings), which C++ writes to fd 2
    err = capfd.readouterr().err
    assert all(line.startswith("\rtiming [") for line in err.splitlines() if line), err
    for method in ("sam", "zosam"):
        trace = (tmp_path / f"{method}.json").read_text()
        for phase in ("grad_pass", "perturb", "restore", "base_step"):
            assert f'"{phase}"' in trace
    assert '"zo_forward"' in (tmp_path / "zosam.json").read_text()


def test_bench_options_sparsity_bf16_channels_last(capsys):
    rows = benchmark(["--model", "resnet20", "--batch-size", "4", "--steps", "1", "--warmup", "1",
                      "--device", "cpu", "--methods", "sgd,zosam,zosam-bf16", "--sparsity", "0.9",
                      "--bf16", "--channels-last"])
    assert [(r["method"], r["fwd_passes"], r["bwd_passes"]) for r in rows] == [
        ("sgd", 1, 1), ("zosam", 3, 1), ("zosam-bf16", 3, 1)]
    assert "sparsity 0.9, bf16 autocast, channels_last" in capsys.readouterr().out


@pytest.mark.parametrize("argv,words", [(["--methods", "sgd,adam"], "--methods: unknown ['adam']"),
                                        (["--sparsity", "1"], "--sparsity"),
                                        (["--zo-batch-fraction", "0"], "--zo-batch-fraction"),
                                        (["--steps", "0"], "--steps must be >= 1")])
def test_bench_rejects_bad_options(argv, words, capsys):
    with pytest.raises(SystemExit):
        parse(["--device", "cpu", *argv])
    assert words in capsys.readouterr().err


def test_bench_sam_family_rows_count_their_passes():
    rows = benchmark(["--model", "resnet20", "--batch-size", "4", "--steps", "2", "--warmup", "1",
                      "--n-dirs", "2", "--device", "cpu",
                      "--methods", "esam,looksam,gsam,ssam-f,ssam-d,zolooksam,zossam"])
    # means over the 2 timed steps (steps 1 and 2, after a warm-up step 0): LookSAM's are in-between
    passes = {r["method"]: (r["fwd_passes"], r["bwd_passes"]) for r in rows}
    assert passes == {"esam": (3, 2), "looksam": (1, 1), "gsam": (2, 2), "ssam-f": (2, 2),
                      "ssam-d": (2, 2), "zolooksam": (1, 1), "zossam": (5, 1)}


def test_bench_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")  # without it: the test below
    argv = ["--model", "resnet20", "--batch-size", "2", "--steps", "1", "--warmup", "0",
            "--device", "cpu", "--methods", "sgd,sam", "--plot", str(tmp_path / "b.png")]
    benchmark(argv)
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_plot_without_matplotlib_is_refused_when_parsed(monkeypatch, capsys):
    # None in sys.modules: matplotlib counts as absent, installed or not
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as exc:
        parse(["--device", "cpu", "--plot", "b.png"])  # parse alone: before any benchmarking
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in err and "pip install matplotlib" in err
    assert parse(["--device", "cpu"]).plot is None  # without --plot, matplotlib is not needed


def test_bench_help_shows_every_default_and_explains_the_ratios(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal's width
    with pytest.raises(SystemExit) as exc:
        parse(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    options, epilog = out.split("\noptions:\n")[1].split("\n\ncolumns:\n")
    # one entry per option, each starting on a line indented by two; wrapped lines joined
    entries = [" ".join(e.split()) for e in re.split(r"\n(?=  -)", options)]
    assert entries[0].startswith("-h, --help") and len(entries) > 10
    assert all("(default: " in e for e in entries[1:]), entries
    assert "--batch-size BATCH_SIZE images per step (default: 128)" in entries
    assert any(e.startswith("--model") and e.endswith("(default: resnet32)") for e in entries)
    # the epilog keeps its line breaks: one column per line
    assert "\n  × SAM     SAM's mean step time / this method's: > 1 means faster than SAM\n" in epilog
    assert "\n  × SGD     SGD's mean step time / this method's: > 1 means faster than SGD\n" in epilog


def test_bench_channels_last_compares_like_for_like():
    """Every method trains the same memory format: the optimizers keep channels_last weights."""
    from zosam_kernels.bench.methods import Run
    args = parse(["--model", "resnet20", "--batch-size", "4", "--device", "cpu", "--channels-last"])
    for method in ("sgd", "sam", "zosam", "zosam-unfused"):
        run = Run(method, args, torch.device("cpu"))
        run.step()
        convs = [p for p in run.model.parameters() if p.dim() == 4]
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs), method


def test_bench_counts_the_cheap_ascents_passes_by_the_share_of_the_batch():
    """RWP and LPF-SGD split the batch between their gradients: two backward passes, one batch's
    worth; SAM-ON's first backward stops at the normalization layers, which only time shows."""
    rows = benchmark(["--model", "resnet20", "--batch-size", "4", "--steps", "2", "--warmup", "1",
                      "--device", "cpu", "--methods", "sgd,sam,rwp,lpf-sgd,sam-on,random-direction"])
    passes = {r["method"]: (r["fwd_passes"], r["bwd_passes"], r["fwd_batch_equiv"], r["bwd_batch_equiv"])
              for r in rows}
    assert passes == {"sgd": (1, 1, 1, 1), "sam": (2, 2, 2, 2), "rwp": (2, 2, 1, 1), "lpf-sgd": (1, 1, 1, 1),
                      "sam-on": (2, 2, 2, 2), "random-direction": (1, 1, 1, 1)}
    extra = {r["method"]: r["extra_vs_sam"] for r in rows}
    assert extra["sgd"] == 0 and extra["sam"] == 1
