from .esam import ESAM
from .sam import SAM
from .zosam import ZOSAM

__all__ = ["ESAM", "SAM", "ZOSAM"]
