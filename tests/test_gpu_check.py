"""benchmarks/gpu_check.sh, the script a lent GPU runs, in its CPU dry mode (DRY=1):
every step at tiny sizes, so a renamed method, model, option or test file fails
here, not on the 15-minute lease."""
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
GPU_ONLY = {"build"}   # the editable build with the machine's own compiler; the suite's venv has it built


def dry_run(stage, out, wheels=None):
    env = dict(os.environ, DRY="1", OUT=str(out), PYTHON=sys.executable, WHEELS=str(wheels or out / "no-wheels"))
    return subprocess.run(["bash", str(SCRIPT), stage], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


def steps(out):
    """{step: its summary line after the name}, from $OUT/summary.txt."""
    lines = (out / "summary.txt").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if not line.startswith("stage "))


def probe_wheel(folder):
    """A one-module wheel, as `make gpu-wheels` leaves the ones the device image lacks."""
    folder.mkdir()
    info = "zkprobe-0.1.dist-info/"
    files = {"zkprobe/__init__.py": "",
             info + "METADATA": "Metadata-Version: 2.1\nName: zkprobe\nVersion: 0.1\n",
             info + "WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[info + "RECORD"] = "".join(f"{name},,\n" for name in [*files, info + "RECORD"])
    with zipfile.ZipFile(folder / "zkprobe-0.1-py3-none-any.whl", "w") as whl:
        for name, text in files.items():
            whl.writestr(name, text)
    return folder


@pytest.mark.parametrize("stage", ["core", "rest"])
def test_every_step_runs_in_dry_mode(stage, tmp_path):
    # core with a carried wheel, rest without: the wheel is installed and every step's Python finds it
    wheels = probe_wheel(tmp_path / "wheels") if stage == "core" else None
    out = tmp_path / "out"
    r = dry_run(stage, out, wheels)
    assert r.returncode == 0, r.stderr[-3000:]
    result = steps(out)
    skipped = {name for name, line in result.items() if line.startswith("skipped")}
    assert skipped == GPU_ONLY, result
    assert all(result[name] == "skipped, GPU only (dry mode)" for name in GPU_ONLY)
    failed = {name: line for name, line in result.items()
              if name not in GPU_ONLY and not re.match(r"rc=0 \d+s", line)}
    assert not failed, r.stdout[-6000:]
    assert len(result) > len(GPU_ONLY) + 4   # the stage's own steps ran, not just the build and import
    with tarfile.open(out / f"{stage}.tar.gz") as tar:
        logs = {pathlib.Path(n).name for n in tar.getnames()}
    assert {f"{name}.log" for name in result if name not in GPU_ONLY} <= logs
    versions = (out / "versions.txt").read_text()
    assert "dry mode: no GPU" in versions
    assert ("carried: zkprobe 0.1" if wheels else "carried: none") in versions
    assert ("wheels" in result) == bool(wheels)
    if stage == "core":
        assert (out / "profile.tar.gz").exists()
        assert re.search(r"\d+ tests? collected", r.stdout)    # the GPU test files exist and collect
    else:
        # the run cut after epoch 1 and resumed equals the whole run (on the CPU, bit for bit)
        assert r.stdout.count(" equal") == 2 and "DIFFER" not in r.stdout, r.stdout[-6000:]


def test_dry_mode_refuses_an_unknown_stage(tmp_path):
    r = dry_run("everything", tmp_path)
    assert r.returncode == 2 and "stage must be core, rest or all, got everything" in r.stderr
