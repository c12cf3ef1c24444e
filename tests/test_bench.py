"""zosam-bench end to end on a tiny configuration: passes are counted, not
assumed, and the memory columns see SAM's extra parameter-sized buffer."""
import csv
import json

import pytest

from zosam_kernels.bench import benchmark


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
    # SGD keeps its momentum; SAM also the weights it restores; ZO-SAM only the momentum
    buffers = {r["method"]: r["param_buffers"] for r in rows}
    assert abs(buffers["sgd"] - 1) < 0.01 and abs(buffers["sam"] - 2) < 0.01
    assert abs(buffers["zosam"] - 1) < 0.01 and buffers["zosam-unfused"] < 1.01
    peak = {r["method"]: r["peak_mem_bytes"] for r in rows}
    assert all(v > 0 for v in peak.values())
    assert "zosam" in capsys.readouterr().out
    benchmark(argv)
    lines = list(csv.DictReader(rows_csv.open()))
    assert len(lines) == 10 and lines[0]["method"] == "sgd" and float(lines[-1]["step_ms"]) > 0


def test_bench_profile_writes_traces_with_named_phases(tmp_path):
    benchmark(["--model", "resnet20", "--batch-size", "4", "--steps", "1", "--warmup", "1",
               "--device", "cpu", "--methods", "sam,zosam", "--profile", str(tmp_path)])
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
                                        (["--zo-batch-fraction", "0"], "--zo-batch-fraction")])
def test_bench_rejects_bad_options(argv, words, capsys):
    with pytest.raises(SystemExit):
        benchmark(argv)
    assert words in capsys.readouterr().err


def test_bench_sam_family_rows_count_their_passes():
    rows = benchmark(["--model", "resnet20", "--batch-size", "4", "--steps", "2", "--warmup", "1",
                      "--n-dirs", "2", "--device", "cpu",
                      "--methods", "esam,looksam,gsam,ssam-f,ssam-d,zolooksam,zossam"])
    # means over the 2 timed steps (steps 1 and 2, after a warm-up step 0): LookSAM's are in-between
    passes = {r["method"]: (r["fwd_passes"], r["bwd_passes"]) for r in rows}
    assert passes == {"esam": (3, 2), "looksam": (1, 1), "gsam": (2, 2), "ssam-f": (2, 2),
                      "ssam-d": (2, 2), "zolooksam": (1, 1), "zossam": (5, 1)}


def test_bench_plot_writes_a_png_or_says_what_it_needs(tmp_path, capsys):
    argv = ["--model", "resnet20", "--batch-size", "2", "--steps", "1", "--warmup", "0",
            "--device", "cpu", "--methods", "sgd,sam", "--plot", str(tmp_path / "b.png")]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="--plot needs matplotlib"):
            benchmark(argv)
        return
    benchmark(argv)
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
