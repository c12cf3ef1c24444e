"""How well a SAM-family step aims: the cosine between the perturbation ε it
applied and the true gradient ∇L(θ) of the batch at the weights it started from.

SAM's ε = ρ ∇L/‖∇L‖ has cosine 1. ZO-SAM's ε comes from m random directions:
with m = 1, ε = ρ sign(c) u/‖u‖ for one Gaussian u, whose cosine with any
fixed vector in d dimensions has standard deviation about 1/√d, and the
finite difference's sign makes its expectation positive, of order
√(2/(π d)). Measuring the cosine along training says how far ZO-SAM's
perturbation is from SAM's and from a random one.

`step_with_ascent_cosine` runs one optimizer step as usual, plus one extra
forward and backward at θ for ∇L(θ) (torch.autograd.grad: no .grad is
touched), and reads ε as the displacement of the weights during the step's
last closure call, the gradient pass at θ + ε, whatever the optimizer. The
extra pass starts from the random state the step starts from (so with common
random numbers it sees the step's dropout noise), leaves torch's generators
and the BatchNorm running statistics as they were, and counts only the active
weights of `masks`.
"""
import torch

from .common import active_flat, active_parameters, preserved_state


def _cosine(a, b):
    a, b = a.double(), b.double()
    denominator = a.norm() * b.norm()
    return float(a @ b / denominator) if denominator > 0 else float("nan")


def step_with_ascent_cosine(optimizer, closure, model, masks=None):
    """(the step's return value, cos(ε, ∇L(θ)) on the active weights). `closure()`
    returns the batch's loss, mean or per sample (its mean is differentiated)."""
    active = active_parameters(model, masks)
    params = [p for p, _ in active]
    with preserved_state(model):        # the step's random state and BatchNorm statistics, untouched
        grads = torch.autograd.grad(closure().mean(), params, allow_unused=True)
    gradient = active_flat(grads, active)
    start = [p.detach().clone() for p in params]
    seen = {}

    def recording(*indices):
        # the weights of this call, minus θ: after the last call, ε
        seen["eps"] = [p.detach() - s for p, s in zip(params, start)]
        return closure(*indices)

    result = optimizer.step(recording)
    return result, _cosine(active_flat(seen["eps"], active), gradient)
