"""How far SAM's update goes down the gradient, in units of SGD's: with g the
gradient ∇L(θ) of a batch on the active weights and SAM's perturbation
ε = ρ g/‖g‖, the update gradient's component along g,

    along(ρ) = <∇L(θ + ε), g> / ‖g‖²,

∇L(θ + ε) taken on the active weights as g is. SGD's update −η g has
along = 1; SAM's −η ∇L(θ + ε) goes along(ρ) times as far down g: above 1
further than SGD, between 0 and 1 less far, below 0 it climbs back up. To
second order along(ρ) = 1 + ρ gᵀHg/‖g‖³ (H the Hessian on the active
weights): the curvature along the gradient decides it, and on a quadratic
loss that is exact.

Each batch has its own g, ε and along(ρ); the results are the means over the
batches, beside the batch's loss L(θ) and ‖g‖. Measured in train mode, as the
optimizer's step is taken (BatchNorm normalises with each batch's statistics;
dropout, if any, draws its own noise in each pass). Products are accumulated
in float64. The weights are copied before and copied back after, bit for bit;
buffers, modes and the global RNG state are restored, and .grad is not
touched.
"""
import statistics

import torch

from .common import active_flat, active_parameters, checked_batches, preserved_state, scalar_loss


def _active_gradient(model, loss_fn, x, y, active):
    """(loss, the gradient per parameter with its pruned entries zeroed) on one batch."""
    params = [p for p, _ in active]
    loss = scalar_loss(loss_fn, model, x, y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    masked = []
    for g, (p, m) in zip(grads, active):
        g = torch.zeros_like(p) if g is None else g
        masked.append(g if m is None else g * m)
    return loss.detach(), masked


def _restore(params, origin):
    with torch.no_grad():
        for p, o in zip(params, origin):
            p.copy_(o)


def sam_along_gradient(model, loss_fn, batches, radii, masks=None):
    """along(ρ) = <∇L(θ + ε), g> / ‖g‖² for each ρ of `radii`, ε = ρ g/‖g‖ (see the module
    docstring), at the weights the model has now.

    model: nn.Module; loss_fn(model, x, y) -> scalar mean loss of the batch; batches: list
    of (x, y) pairs on the model's device; radii: the ρ to measure at; masks: parameter ->
    bool tensor (True = active; absent parameters fully active), or a masking object. Only
    trainable parameters count, and of them only the active weights (ε leaves the pruned
    ones where they are).

    Returns plain Python numbers, each the mean over the batches:

        loss       L(θ)
        grad_norm  ‖g‖
        along      {ρ: along(ρ)} for each ρ of `radii`
        batches    the number of batches

    A batch whose gradient is 0 on the active weights gives no direction: ValueError.
    """
    batches = checked_batches(batches)
    radii = list(radii)
    active = active_parameters(model, masks)
    params = [p for p, _ in active]
    losses, norms, along = [], [], {rho: [] for rho in radii}
    with preserved_state(model):
        model.train()
        origin = [p.detach().clone() for p in params]
        try:
            for k, (x, y) in enumerate(batches):
                loss, g = _active_gradient(model, loss_fn, x, y, active)
                flat = active_flat(g, active)
                norm = float(flat.norm())
                if norm == 0:
                    raise ValueError(f"batches[{k}]: the gradient is 0 on the active weights, so SAM's "
                                     "perturbation has no direction")
                losses.append(float(loss))
                norms.append(norm)
                for rho in radii:
                    with torch.no_grad():
                        for p, o, d in zip(params, origin, g):   # θ + ε, from the copy every time
                            p.copy_(o).add_(d, alpha=rho / norm)
                    _, moved = _active_gradient(model, loss_fn, x, y, active)
                    along[rho].append(float(active_flat(moved, active) @ flat) / norm ** 2)
                _restore(params, origin)
        finally:
            _restore(params, origin)
    return {"loss": statistics.fmean(losses), "grad_norm": statistics.fmean(norms),
            "along": {rho: statistics.fmean(v) for rho, v in along.items()}, "batches": len(batches)}
