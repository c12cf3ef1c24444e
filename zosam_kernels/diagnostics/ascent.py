"""How well a SAM-family step aims: the cosine between the perturbation ε it
applied and the true gradient ∇L(θ) of the batch at the weights it started
from, the loss it gained by moving there, and how well the first-order priors
that come free point at ∇L.

SAM's ε = ρ ∇L/‖∇L‖ has cosine 1. ZO-SAM's ε comes from m random directions:
with m = 1, ε = ρ sign(c) u/‖u‖ for one Gaussian u, whose cosine with any
fixed vector in d dimensions has standard deviation about 1/√d, and the
finite difference's sign makes its expectation positive, of order
√(2/(π d)). Measuring the cosine along training says how far ZO-SAM's
perturbation is from SAM's and from a random one. The loss rise
L(θ + ε) − L(θ) is what the ascent is for: about ρ‖∇L‖ cos(ε, ∇L) to first
order, plus the curvature's ½ εᵀHε, which a random direction also gets; ‖∇L‖
is measured beside it (SAM descends L + ρ‖∇L‖, to first order).

α = cos(prior, ∇L(θ)) for the two priors a guided ascent can use (guided.py):
the base optimizer's momentum (SGD's momentum_buffer, Adam's exp_avg) and the
gradient the previous step left in .grad (its update gradient, at that step's
θ + ε, on that step's batch). None where the optimizer keeps none.

`step_with_ascent_probe` runs one optimizer step as usual, plus one extra
forward and backward at θ for ∇L(θ) (torch.autograd.grad: no .grad is
touched), and reads ε as the displacement of the weights during the step's
last closure call, the gradient pass at θ + ε, whatever the optimizer, and
L(θ + ε) as that call's loss. The extra pass starts from the random state the
step starts from (so with common random numbers it sees the step's dropout
noise), leaves torch's generators and the BatchNorm running statistics as
they were, and counts only the active weights of `masks`.
"""
import torch

from ..optim.free_ascents import MOMENTUM_KEYS
from .common import active_flat, active_parameters, preserved_state


def _cosine(a, b):
    a, b = a.double(), b.double()
    denominator = a.norm() * b.norm()
    return float(a @ b / denominator) if denominator > 0 else float("nan")


def _alpha(tensors, active, gradient):
    if any(t is None for t in tensors):
        return None
    return _cosine(active_flat(tensors, active), gradient)


def step_with_ascent_probe(optimizer, closure, model, masks=None):
    """(the step's return value, {"cosine": cos(ε, ∇L(θ)), "loss_rise": L(θ + ε) − L(θ),
    "grad_norm": ‖∇L(θ)‖, "alpha_momentum", "alpha_gradient": the priors' cosines to ∇L(θ)}) on the active
    weights. `closure()` returns the batch's loss, mean or per sample (its mean is
    differentiated). Read before the step: the momentum and .grad it starts from."""
    active = active_parameters(model, masks)
    params = [p for p, _ in active]
    with preserved_state(model):        # the step's random state and BatchNorm statistics, untouched
        loss = closure().mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    gradient = active_flat(grads, active)
    states = [optimizer.state.get(p, {}) for p in params]
    momentum = [next((s[k] for k in MOMENTUM_KEYS if torch.is_tensor(s.get(k))), None) for s in states]
    found = {"grad_norm": float(gradient.double().norm()),
             "alpha_momentum": _alpha(momentum, active, gradient),
             "alpha_gradient": _alpha([p.grad for p in params], active, gradient)}
    start = [p.detach().clone() for p in params]
    seen = {}

    def recording(*indices):
        # the weights of this call, minus θ: after the last call, ε; its loss, L(θ + ε)
        seen["eps"] = [p.detach() - s for p, s in zip(params, start)]
        seen["loss"] = closure(*indices)
        return seen["loss"]

    result = optimizer.step(recording)
    found["cosine"] = _cosine(active_flat(seen["eps"], active), gradient)
    found["loss_rise"] = float(seen["loss"].detach().double().mean() - loss.detach().double())
    return result, found
