"""The linter and the type checker, as part of the suite (their settings are in
pyproject.toml): ruff over the package, the tests and the benchmarks; mypy
--strict over the optimizers and the trainer adapters. Both are installed by the
Makefile: a missing one fails here rather than skipping."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*argv):
    done = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def test_ruff_finds_nothing():
    code, out = run("ruff", "check", "zosam_kernels", "tests", "benchmarks", "--output-format", "concise")
    assert code == 0, out


def test_mypy_finds_nothing_in_the_optimizers_and_adapters():
    code, out = run("mypy", "--strict", "zosam_kernels/optim", "zosam_kernels/integrations")
    assert code == 0, out
