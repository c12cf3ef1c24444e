"""Curvature of the loss at the current weights: the top Hessian eigenvalue and
the Hessian trace, on the active weights.

The paper's "flat vs sharp minima" claim is about these numbers: a flatter
minimum has a smaller top eigenvalue (the sharpest direction) and a smaller
trace (the summed curvature of all directions). Both are measured here without
forming the Hessian, from Hessian-vector products H v = d/dθ (∇L(θ) · v), a
double backward pass (torch.autograd.grad with create_graph=True).

The function differentiated is

    L(θ) = (1/K) sum_b loss_fn(model, x_b, y_b)

over the K given batches, each weighted equally, in eval mode: BatchNorm uses
its running statistics and dropout is off, so L is a fixed function of the
weights (in train mode every evaluation would be a different random function,
and power iteration would not converge to anything). With masks, L is taken as a
function of the active weights only: vectors are zeroed on pruned weights
before and after each product, which gives the principal submatrix H[m][:, m].

Computation runs in the parameters' dtype on their device; dot products and the
averages over batches and samples are accumulated in float64.
"""
import math

import torch

from .common import active_parameters, checked_batches, preserved_state, scalar_loss


def _masked(vectors, active):
    return [v if m is None else v * m for v, (_, m) in zip(vectors, active)]


def _dot(a, b):
    return sum(float(torch.sum(x.double() * y.double())) for x, y in zip(a, b))


def _hessian_times(grads, params, v, retain_graph):
    """H v for the graph that produced `grads` (gradients made with create_graph)."""
    gv = sum(torch.sum(g * u) for g, u in zip(grads, v) if g is not None)
    if not torch.is_tensor(gv) or not gv.requires_grad:
        # the gradient does not depend on the weights: the loss is linear in them
        return [torch.zeros_like(p) for p in params]
    hv = torch.autograd.grad(gv, params, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h for h, p in zip(hv, params)]


def _hvp(model, loss_fn, batches, active, v):
    """Masked H v of the mean loss over `batches`, in float64."""
    params = [p for p, _ in active]
    out = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for x, y in batches:
        loss = scalar_loss(loss_fn, model, x, y)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        for o, h in zip(out, _hessian_times(grads, params, v, retain_graph=False)):
            o.add_(h.double(), alpha=1.0 / len(batches))
    return _masked(out, active)


def top_eigenvalue(model, loss_fn, batches, masks=None, iters=20, tol=1e-4, seed=0):
    """Top eigenvalue of the Hessian of the mean loss over `batches` (see the module
    docstring: eval mode, each batch weighted equally, restricted to the active
    weights of `masks`), by power iteration on Hessian-vector products.

    Power iteration converges to the eigenvalue of largest MAGNITUDE: near a
    minimum that is the largest positive curvature, but away from one (or with
    strong negative curvature) it can be a negative eigenvalue.

    The start vector is Gaussian, drawn from a CPU torch.Generator seeded with
    `seed` (so it is the same on every device), zeroed on pruned weights and
    normalised. Each iteration costs one forward and a double backward pass per
    batch. The iteration stops when the Rayleigh quotient changes by less than
    `tol` relative to its value, or after `iters` products.

    Returns {"eigenvalue": the last Rayleigh quotient, "iterations": Hessian-vector
    products done, "history": the Rayleigh quotient of every iteration,
    "converged": whether the tolerance was met}.
    """
    if int(iters) != iters or iters < 1:
        raise ValueError(f"iters must be a positive integer, got {iters!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    batches = checked_batches(batches)
    active = active_parameters(model, masks)
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p, _ in active]
    v = _masked(v, active)
    norm = math.sqrt(_dot(v, v))
    v = [u / norm for u in v]
    history, converged = [], False
    with preserved_state(model):
        model.eval()
        for _ in range(int(iters)):
            hv = _hvp(model, loss_fn, batches, active, v)
            # v is only unit-norm up to its rounding to the parameters' dtype
            history.append(_dot(v, hv) / _dot(v, v))
            if len(history) > 1 and abs(history[-1] - history[-2]) <= tol * abs(history[-1]):
                converged = True
                break
            hv_norm = math.sqrt(_dot(hv, hv))
            if hv_norm == 0:
                # H v = 0 for a random start means H is 0 on the active weights
                converged = True
                break
            v = [(h / hv_norm).to(p.dtype) for h, (p, _) in zip(hv, active)]
    return {"eigenvalue": history[-1], "iterations": len(history), "history": history,
            "converged": converged}


def hessian_trace(model, loss_fn, batches, masks=None, samples=20, seed=0):
    """Trace of the Hessian of the mean loss over `batches` (see the module
    docstring: eval mode, each batch weighted equally, restricted to the active
    weights of `masks`), by Hutchinson's estimator: tr H = E[z^T H z] for z with
    independent Rademacher (+1/-1) entries on the active weights and 0 on pruned
    ones. Each sample is unbiased; its variance is 2 * sum_{i != j} H_ij^2 (zero
    for a diagonal H, where every sample is exactly the trace).

    The vectors come from a CPU torch.Generator seeded with `seed`. Since z^T H z
    is a scalar, each batch's gradient graph is built once and reused by all
    `samples` products (the same vectors are replayed for every batch): a forward
    and 1 + samples backward passes per batch.

    Returns {"trace": mean of the samples, "std_error": their sample standard
    deviation / sqrt(samples), "samples": samples}.
    """
    if int(samples) != samples or samples < 2:
        raise ValueError(f"samples must be an integer >= 2 (the standard error needs two), got {samples!r}")
    samples = int(samples)
    batches = checked_batches(batches)
    active = active_parameters(model, masks)
    params = [p for p, _ in active]
    estimates = [0.0] * samples
    with preserved_state(model):
        model.eval()
        for x, y in batches:
            loss = scalar_loss(loss_fn, model, x, y)
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            gen = torch.Generator().manual_seed(seed)
            for s in range(samples):
                z = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.device, p.dtype)
                     for p in params]
                z = _masked(z, active)
                hz = _hessian_times(grads, params, z, retain_graph=True)
                estimates[s] += _dot(z, hz) / len(batches)
    mean = math.fsum(estimates) / samples
    var = math.fsum((e - mean) ** 2 for e in estimates) / (samples - 1)
    return {"trace": mean, "std_error": math.sqrt(var / samples), "samples": samples}
