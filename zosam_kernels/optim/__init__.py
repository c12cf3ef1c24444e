from .esam import ESAM
from .gsam import GSAM
from .looksam import LookSAM
from .sam import SAM
from .ssam import SSAM
from .zosam import ZOSAM

__all__ = ["ESAM", "GSAM", "LookSAM", "SAM", "SSAM", "ZOSAM"]
