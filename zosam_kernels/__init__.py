"""ZO-SAM: sharpness-aware minimisation with a zeroth-order perturbation step."""
from . import ops

__all__ = ["ops"]
