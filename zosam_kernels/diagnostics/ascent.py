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


def _cosine(a, b):
    a, b = a.double(), b.double()
    denominator = a.norm() * b.norm()
    return float(a @ b / denominator) if denominator > 0 else float("nan")


def _active(tensors, params, masks):
    """The active entries of each tensor, as one float64 vector."""
    parts = []
    for t, p in zip(tensors, params):
        m = masks.get(p) if masks else None
        parts.append((t if m is None else t[m]).reshape(-1).double())
    return torch.cat(parts)


def step_with_ascent_cosine(optimizer, closure, model, masks=None):
    """(the step's return value, cos(ε, ∇L(θ)) on the active weights). `closure()`
    returns the batch's loss, mean or per sample (its mean is differentiated)."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    with torch.random.fork_rng(devices=[p.device for p in params if p.device.type == "cuda"][:1]):
        grads = torch.autograd.grad(closure().mean(), params, allow_unused=True)
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
    gradient = _active([torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)], params, masks)
    start = [p.detach().clone() for p in params]
    seen = {}

    def recording(*indices):
        # the weights of this call, minus θ: after the last call, ε
        seen["eps"] = [p.detach() - s for p, s in zip(params, start)]
        return closure(*indices)

    result = optimizer.step(recording)
    return result, _cosine(_active(seen["eps"], params, masks), gradient)
