from .sam import SAM
from .zosam import ZOSAM

__all__ = ["SAM", "ZOSAM"]
