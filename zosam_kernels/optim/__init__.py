"""The family: one engine (engine.py), ascents (gradient_ascent.py, stream_ascents.py, free_ascents.py,
guided.py, noise_ascents.py), parts (parts.py,
perturbation_mask.py), and the public optimizers as compositions of them
(family.py)."""
from .gradient_ascent import GradientAscent
from .stream_ascents import CoinFlipAscent, RandomAscent, ZerothOrderAscent
from .free_ascents import MomentumAscent, NoisyOracleAscent
from .guided import GuidedAscent
from .noise_ascents import FilterNoiseAscent
from .engine import Engine, is_engine
from .family import ESAM, FAMILY, GSAM, SAM, SSAM, ZOSAM, ZOSSAM, LookSAM, ZOLookSAM
from .parts import DataSelection, LearningRateRadius, LookAhead, Reuse, SurrogateGap
from .perturbation_mask import PerturbationMasking
from .selection import select

__all__ = ["ESAM", "GSAM", "LookSAM", "SAM", "SSAM", "ZOLookSAM", "ZOSAM", "ZOSSAM", "Engine", "FAMILY", "is_engine",
           "GradientAscent", "ZerothOrderAscent", "CoinFlipAscent", "MomentumAscent", "RandomAscent",
           "NoisyOracleAscent", "GuidedAscent", "FilterNoiseAscent", "DataSelection", "LearningRateRadius",
           "LookAhead", "Reuse", "SurrogateGap", "PerturbationMasking", "select"]
