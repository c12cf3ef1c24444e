"""The optimizers' equations computed independently in float64 (test support).

Weights are one float64 vector in parameter order (the direction stream's
order); losses come from torch.func.functional_call on float64 copies of the
model's parameters, so nothing here touches the package's optimizers. The
reference always computes on the CPU, whatever device the model is on.
"""
import copy

import numpy as np
import torch
from torch.func import functional_call

from zosam_kernels.ops import reference


class Float64Model:
    def __init__(self, model, x, y, loss_fn):
        self.model = model
        self.model64 = copy.deepcopy(model).double().cpu()
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.shapes = [p.shape for n, p in model.named_parameters() if p.requires_grad]
        self.x, self.y, self.loss_fn = x.double().cpu(), y.cpu(), loss_fn
        self.buffers = {n: (b.double() if b.is_floating_point() else b).cpu() for n, b in model.named_buffers()}

    def flat(self):
        """The model's weights now, as one float64 vector on the CPU."""
        return torch.cat([p.detach().double().cpu().reshape(-1) for n, p in self.model.named_parameters()
                          if p.requires_grad])

    def unflat(self, theta):
        out, i = {}, 0
        for n, s in zip(self.names, self.shapes):
            k = int(np.prod(s)) if len(s) else 1
            out[n] = theta[i:i + k].view(s)
            i += k
        return out

    def loss(self, theta):
        params = self.unflat(theta)
        buffers = {n: b.clone() for n, b in self.buffers.items()}   # BN stats never written back
        return self.loss_fn(functional_call(self.model64, {**params, **buffers}, (self.x,)), self.y)

    def grad(self, theta):
        theta = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(self.loss(theta), theta)
        return g


def directions(seeds, numel):
    return [torch.from_numpy(reference.stream(s, numel)) for s in seeds]


def zosam_eps(f, theta, seeds, rho, delta, mask=None, adaptive=False):
    """docs/DESIGN.md, Purpose: c_i = (L(θ+δu_i) − L(θ−δu_i)) / 2δ, ĝ = 1/m Σ c_i u_i, ε = ρ ĝ/(‖ĝ‖+1e-12)
    (adaptive: ε = ρ T²ĝ/(‖Tĝ‖+1e-12), T = |θ|); directions masked."""
    us = directions(seeds, theta.numel())
    if mask is not None:
        us = [u * mask for u in us]
    with torch.no_grad():
        c = torch.stack([(f.loss(theta + delta * u) - f.loss(theta - delta * u)) / (2 * delta) for u in us])
    g_hat = sum(ci * u for ci, u in zip(c, us)) / len(us)
    if adaptive:
        t = theta.abs()
        return rho * t * t * g_hat / ((t * g_hat).norm() + 1e-12), c
    return rho * g_hat / (g_hat.norm() + 1e-12), c


def sam_eps(f, theta, rho, mask=None, adaptive=False):
    g = f.grad(theta)
    if mask is not None:
        g = g * mask
    if adaptive:
        t = theta.abs()
        return rho * t * t * g / ((t * g).norm() + 1e-12)
    return rho * g / (g.norm() + 1e-12)


def sgd_step(theta, g, lr, weight_decay=0.0):
    """First step of SGD (with or without momentum: the buffer starts as the gradient)."""
    return theta - lr * (g + weight_decay * theta)


def adamw_step(theta, g, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
    """First step of AdamW: bias-corrected moments are g and g²."""
    m_hat, v_hat = g, g * g
    return theta * (1 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + eps)
