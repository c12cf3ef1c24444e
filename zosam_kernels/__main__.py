"""python -m zosam_kernels: what is installed and how to start.

Prints the version, which backends the fused ops have here (the C++ CPU
extension, Triton, CUDA), the command-line entry points, the optimizers and
which trainers' integrations can be imported."""
import importlib.metadata
import importlib.util
import sys

import torch

import zosam_kernels
from zosam_kernels.optim import FAMILY
from zosam_kernels.ops import library

ENTRY_POINTS = {
    "zosam-train": "train a (sparse) network with any optimizer of the package (python -m zosam_kernels.train)",
    "zosam-bench": "time SGD, SAM and ZO-SAM steps on one model (python -m zosam_kernels.bench)",
    "zosam-report": "zosam-train runs grouped by configuration, as a markdown table",
}


def backends():
    """(name, present, detail) of every backend the fused ops can use."""
    triton = library.triton_kernels is not None
    cuda = torch.cuda.is_available()
    return [
        ("C++ CPU extension", library.HAS_CPU_EXTENSION,
         "zosam_kernels._C" if library.HAS_CPU_EXTENSION else "not built: CPU ops use the numpy reference (slow)"),
        ("Triton", triton, f"triton {importlib.metadata.version('triton')}" if triton else "not installed"),
        ("CUDA", cuda, torch.cuda.get_device_name(0) if cuda else "no device: Triton kernels need one"),
    ]


def main():
    print(f"zosam_kernels {zosam_kernels.__version__} (torch {torch.__version__}, Python {sys.version.split()[0]})")
    print("backends:")
    for name, present, detail in backends():
        print(f"  {name:<18} {'yes' if present else 'no ':<4} {detail}")
    print("entry points:")
    for name, what in ENTRY_POINTS.items():
        print(f"  {name:<13} {what}")
    print("optimizers (zosam-train --optimizer): " + ", ".join(FAMILY) + " (README, \"Python API\")")
    trainers = {name: importlib.util.find_spec(name) is not None
                for name in ("lightning", "transformers", "accelerate")}
    print("trainers (zosam_kernels.integrations): "
          + ", ".join(f"{name} {'yes' if found else 'no'}" for name, found in trainers.items())
          + " (pip install 'zosam_kernels[lightning]' or '[hf]')")


if __name__ == "__main__":
    main()
