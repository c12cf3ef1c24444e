"""Sparse training: masks, layer densities, pruning at initialisation, lottery
tickets, and the dynamic methods SET, DSR, RigL and MEST, composable with
every optimizer of the package (masks=masking) and with plain torch optimizers
(masking.attach(optimizer)); the sparse initialisation that scales a random
topology's weights to their active fan-in.
"""
from .densities import DISTRIBUTIONS, layer_counts, layer_densities
from .dsr import DSR
from .dynamic import MEST, SET, RigL
from .fan_in import rescale_to_fan_in_
from .lottery import LotteryTicket
from .masking import Masking, prunable_weights
from .scores import KEEP, METHODS, class_balanced, prune_at_init_, score

__all__ = ["DISTRIBUTIONS", "DSR", "KEEP", "LotteryTicket", "MEST", "METHODS", "Masking", "RigL",
           "SET", "class_balanced", "layer_counts", "layer_densities", "prunable_weights",
           "prune_at_init_", "rescale_to_fan_in_", "score"]
