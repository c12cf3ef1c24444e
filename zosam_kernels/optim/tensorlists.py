"""Vector algebra over lists of tensors (a model's gradients seen as one vector):
the inner products and norms the SAM variants take between whole gradients."""
import torch


def dot(xs, ys):
    """sum_i <xs[i], ys[i]> as a 0-d tensor on the device of xs[0] (no host sync)."""
    device = xs[0].device
    return torch.stack([torch.vdot(x.reshape(-1), y.reshape(-1)).to(device) for x, y in zip(xs, ys)]).sum()


def norm(xs):
    device = xs[0].device
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x).to(device) for x in xs]))


def orthogonal_part(xs, ys):
    """The component of the vector xs orthogonal to the vector ys: xs - (<xs,ys>/|ys|^2) ys (new tensors)."""
    coef = dot(xs, ys) / (dot(ys, ys) + 1e-12)
    return torch._foreach_sub(xs, torch._foreach_mul(ys, coef))
