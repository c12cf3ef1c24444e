"""ZO-SAM: sharpness-aware minimisation with a zeroth-order perturbation step."""
from . import ops
from .optim import ESAM, SAM, ZOSAM

__all__ = ["ops", "ESAM", "SAM", "ZOSAM"]
