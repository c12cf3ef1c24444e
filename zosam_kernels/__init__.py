"""ZO-SAM: sharpness-aware minimisation with a zeroth-order perturbation step."""
import importlib.metadata

try:
    __version__ = importlib.metadata.version("zosam_kernels")
except importlib.metadata.PackageNotFoundError:   # a source tree on sys.path, not installed
    __version__ = "unknown"

from . import ops
from .optim import ESAM, GSAM, SAM, SSAM, ZOSAM, ZOSSAM, Engine, LookSAM, ZOLookSAM

__all__ = ["ops", "Engine", "ESAM", "GSAM", "LookSAM", "SAM", "SSAM", "ZOLookSAM", "ZOSAM", "ZOSSAM"]
