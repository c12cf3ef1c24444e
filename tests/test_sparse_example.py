"""examples/sparse_train.py runs every method for a few steps and keeps its budget."""
import importlib.util
import math
import pathlib

import pytest

PATH = pathlib.Path(__file__).resolve().parents[1] / "examples" / "sparse_train.py"
spec = importlib.util.spec_from_file_location("sparse_train", PATH)
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)


@pytest.mark.parametrize("method,optimizer", [("lth", "sgd"), ("snip", "sam"), ("rigl", "zosam")])
def test_example_runs(method, optimizer, capsys):
    masking, losses = example.main(["--method", method, "--optimizer", optimizer, "--steps", "3",
                                    "--batch-size", "2", "--update-interval", "1", "--density", "0.2"])
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    want = 1.0 if method == "dense" else 0.2
    assert abs(masking.density() - want) < 1e-4
    assert "overall density" in capsys.readouterr().out
