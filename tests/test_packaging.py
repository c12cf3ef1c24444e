"""Packaging: the extension's compile flags are portable unless native tuning
is asked for, and a wheel built from the tree installs into a fresh virtual
environment (torch reached through a .pth line, not downloaded) where the
optimizers, the C++ extension and the console scripts work."""
import os
import runpy
import subprocess
import sys
import sysconfig
import venv

import setuptools

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compile_flags(monkeypatch, native):
    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    monkeypatch.setenv("ZOSAM_NATIVE", native)
    runpy.run_path(os.path.join(ROOT, "setup.py"))
    (ext,) = captured["ext_modules"]
    return ext.extra_compile_args["cxx"]


def test_extension_is_portable_unless_native_is_asked_for(monkeypatch):
    for native, expected in (("", False), ("0", False), ("1", True)):
        flags = compile_flags(monkeypatch, native)
        assert ("-march=native" in flags) == expected, (native, flags)
        assert "-ffp-contract=off" in flags   # reproducible normals either way


SMOKE = """
import torch, zosam_kernels as zk
from zosam_kernels.ops import HAS_CPU_EXTENSION
assert zk.__file__.startswith({env!r}), zk.__file__
assert HAS_CPU_EXTENSION
model = torch.nn.Linear(4, 2)
opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1)
x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
before = model.weight.detach().clone()
opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))
assert not torch.equal(before, model.weight)
print("smoke ok", zk.__version__)
"""


def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path):
    dist, env = tmp_path / "dist", tmp_path / "env"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
                    "-w", str(dist), ROOT], check=True, timeout=600, capture_output=True)
    (wheel,) = dist.glob("zosam_kernels-*.whl")
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # torch and numpy from this environment, behind the fresh one's own site-packages (a path, not
    # a site directory: this environment's .pth files, and its editable install, are not read)
    with open(os.path.join(site, "outer_torch.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "-q", str(wheel)], check=True, timeout=300, capture_output=True)
    run = lambda *cmd: subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)  # noqa: E731
    assert os.path.exists(os.path.join(site, "zosam_kernels", "py.typed"))   # the type hints are public
    done = run(python, "-c", SMOKE.format(env=site))
    assert done.returncode == 0 and "smoke ok" in done.stdout, done.stderr
    done = run(python, "-m", "zosam_kernels")
    assert done.returncode == 0 and "C++ CPU extension  yes" in done.stdout, done.stderr
    done = run(env / "bin" / "zosam-train", "--help")
    assert done.returncode == 0 and "--zo-batch-fraction" in done.stdout, done.stderr
