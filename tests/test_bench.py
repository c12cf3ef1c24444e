"""zosam-bench end to end on a tiny configuration: passes are counted, not assumed."""
import json

from zosam_kernels.bench import benchmark


def test_bench_counts_passes_and_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    rows = benchmark(["--model", "resnet20", "--batch-size", "4", "--steps", "2", "--warmup", "1",
                      "--n-dirs", "2", "--device", "cpu", "--json", str(out)])
    passes = {r["method"]: (r["fwd_passes"], r["bwd_passes"]) for r in rows}
    # the rows are means over the 2 timed steps (steps 1 and 2, after a warm-up step 0)
    assert passes == {"sgd": (1, 1), "sam": (2, 2), "zosam": (5, 1), "zosam-reference": (5, 1),
                      "esam": (3, 2), "looksam": (1, 1), "gsam": (2, 2), "ssam-f": (2, 2),
                      "ssam-d": (2, 2), "zolooksam": (1, 1), "zossam": (5, 1)}
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and len(data["results"]) == 11
    assert all(r["step_ms"] > 0 and r["images_per_s"] > 0 for r in data["results"])
    assert "zosam" in capsys.readouterr().out
