"""ZO-SAM: sharpness-aware minimisation with a zeroth-order perturbation step."""
from . import ops
from .optim import ESAM, GSAM, SAM, SSAM, ZOSAM, ZOSSAM, Engine, LookSAM, ZOLookSAM

__all__ = ["ops", "Engine", "ESAM", "GSAM", "LookSAM", "SAM", "SSAM", "ZOLookSAM", "ZOSAM", "ZOSSAM"]
