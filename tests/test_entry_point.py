"""python -m zosam_kernels: the version, the backends and the entry points,
each checked against what the installed distribution and torch say."""
import importlib.metadata
import subprocess
import sys

import torch

import zosam_kernels as zk
from zosam_kernels.ops import HAS_CPU_EXTENSION


def test_module_prints_version_backends_and_entry_points():
    done = subprocess.run([sys.executable, "-m", "zosam_kernels"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith(f"zosam_kernels {importlib.metadata.version('zosam_kernels')} (torch {torch.__version__}")
    assert f"C++ CPU extension  {'yes' if HAS_CPU_EXTENSION else 'no '}" in out
    assert f"CUDA               {'yes' if torch.cuda.is_available() else 'no '}" in out
    scripts = [e.name for e in importlib.metadata.distribution("zosam_kernels").entry_points
               if e.group == "console_scripts"]
    assert sorted(scripts) == ["zosam-bench", "zosam-report", "zosam-train"]
    for name in scripts:
        assert f"\n  {name} " in out


def test_help_of_step_and_the_classes_says_what_the_closure_must_be():
    """help(ZOSAM.step) says the closure returns the loss and must not call backward
    (torch's generic step docstring calls the closure optional)."""
    from zosam_kernels.optim import FAMILY
    classes = {m.cls for m in FAMILY.values() if m.cls is not None}
    assert classes >= {zk.SAM, zk.ZOSAM, zk.ESAM, zk.LookSAM, zk.GSAM, zk.SSAM, zk.ZOLookSAM, zk.ZOSSAM}
    for cls in classes:
        doc = cls.step.__doc__
        assert "must NOT call backward()" in doc and "return the" in doc and "Not optional" in doc, cls
    import zosam_kernels.optim.family as family
    assert "never calls backward" in family.__doc__
