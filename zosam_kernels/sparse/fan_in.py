"""Sparse initialisation: the active weights of a sparse topology scaled to
their unit's active fan-in (Evci et al. 2022, "Gradient Flow in Sparse Neural
Networks and How Lottery Tickets Win"; the sparse initialiser of RigL's code).

A dense init draws a unit's n incoming weights with variance s^2 / n, so its
pre-activation has variance s^2 times the input's. Keep a of the n and that
variance falls to s^2 a / n: at 10 % density every layer divides the signal's
variance by about ten, and a deep net without normalisation starts with
near-constant outputs and vanishing gradients. Multiplying each unit's active
weights by sqrt(n / a) restores the dense variance, unit by unit.

A unit is a slice of the weight along dim 0 (a Linear row, a convolution's
output channel, an RNN gate row), and n is the slice's size, the fan-in of
torch's init (nn.init._calculate_fan_in_and_fan_out). A unit with no active
weight is left alone. Call it once, on the initial topology, before the
optimizer's first step: weights grown later start at 0, as the dynamic methods
prescribe.
"""
import torch


@torch.no_grad()
def rescale_to_fan_in_(masking):
    """Multiply the active weights of every unit of every masked layer by
    sqrt(n / a) (n: the unit's size, a: its active weights); returns
    name -> the factors, one per unit."""
    factors = {}
    for name, p in masking.params.items():
        units = masking.masks[name].reshape(p.shape[0], -1)
        active = units.sum(1)
        factor = torch.where(active > 0, (units.shape[1] / active.clamp(min=1).double()).sqrt(), 1.0)
        p.mul_(factor.to(p.dtype).view(-1, *[1] * (p.dim() - 1)))
        factors[name] = factor
    return factors
