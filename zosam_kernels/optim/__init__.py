from .esam import ESAM
from .gsam import GSAM
from .looksam import LookSAM
from .sam import SAM
from .ssam import SSAM
from .zolooksam import ZOLookSAM
from .zosam import ZOSAM
from .zossam import ZOSSAM

__all__ = ["ESAM", "GSAM", "LookSAM", "SAM", "SSAM", "ZOLookSAM", "ZOSAM", "ZOSSAM"]
