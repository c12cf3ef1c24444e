"""zosam-bench, the package's main job: how much faster and leaner than SAM
is ZO-SAM on a given model and device (see cli.py)."""
from .cli import benchmark, main

__all__ = ["benchmark", "main"]
