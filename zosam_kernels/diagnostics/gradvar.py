"""Variance of the mini-batch gradient at fixed weights, on the active weights.

The ZO-SAM paper (arXiv 2603.13115) reports that at 90 % sparsity the
"gradient variance" of ZO-SAM's training is about 1/3 of SGD's. It plots that
quantity during training without a formula we could check, so this module
measures a defined one that can be compared across runs:

    g_b = grad of loss_fn on batch b, restricted to the active weights,  b = 1..K
    g_mean = (1/K) sum_b g_b
    variance = (1/(K-1)) sum_b ||g_b - g_mean||^2

i.e. the trace of the sample covariance matrix of the mini-batch gradient (the
total variance summed over the active weights), at the weights the model has
now. The model is in train mode, as in the step the optimizer takes: BatchNorm
normalises with the statistics of each batch and dropout draws fresh noise per
batch, both being part of the gradient noise an optimizer sees.

What compares with the paper's ~1/3 is a ratio: this variance measured on the
checkpoints of two runs (e.g. ZO-SAM and SGD) at the same sparsity, with the
same batches. Its absolute value depends on the batch size (about 1/B for i.i.d.
samples), the number of active weights and the point of training.
"""
import math

import torch

from .common import active_flat, active_parameters, checked_batches, count_active, preserved_state, scalar_loss


def gradient_variance(model, loss_fn, batches, masks=None):
    """Total variance of the mini-batch gradient over `batches`, at fixed weights.

    model: nn.Module; loss_fn(model, x, y) -> scalar mean loss of the batch;
    batches: list of K >= 2 (x, y) pairs on the model's device; masks: parameter ->
    bool tensor (True = active; absent parameters fully active), or a masking
    object. Only trainable parameters count, and of them only the active weights.

    In train mode, computes g_b = grad loss_fn(batch b) for each batch and returns
    a dict of plain Python numbers:

        variance             (1/(K-1)) sum_b ||g_b - g_mean||^2, the trace of the
                             sample covariance of the mini-batch gradient
        variance_per_weight  variance / active_weights
        mean_grad_sq_norm    ||g_mean||^2
        relative_variance    variance / ||g_mean||^2 (inf if g_mean is 0)
        batches              K
        active_weights       number of active trainable weights
        batch_size           size of the first batch (first dimension of its x)

    How this relates to the paper's figure is in the module docstring: compare the
    ratio of two runs' variances at the same sparsity with its ~1/3.

    ||g_mean||^2 overestimates the squared norm of the full-data gradient by
    variance / K on average, so with few batches relative_variance is biased low.

    Gradients are taken with torch.autograd.grad, so .grad is not touched; the
    buffers (BatchNorm running statistics, updated by the train-mode forward
    passes), the modes and the global RNG state are restored afterwards.
    """
    batches = checked_batches(batches, at_least=2)
    active = active_parameters(model, masks)
    params = [p for p, _ in active]
    with preserved_state(model):
        model.train()
        # Welford's update over float64 vectors: one pass, memory of two gradients
        # instead of K, and no cancellation between two large sums of squares
        mean, m2 = None, 0.0
        for k, (x, y) in enumerate(batches, 1):
            loss = scalar_loss(loss_fn, model, x, y)
            g = active_flat(torch.autograd.grad(loss, params, allow_unused=True), active)
            if mean is None:
                mean = g
                continue
            delta = g - mean
            mean = mean + delta / k
            m2 += float(torch.dot(delta, g - mean))
    K = len(batches)
    variance = m2 / (K - 1)
    mean_sq = float(torch.dot(mean, mean))
    n_active = count_active(active)
    return {
        "variance": variance,
        "variance_per_weight": variance / n_active,
        "mean_grad_sq_norm": mean_sq,
        "relative_variance": variance / mean_sq if mean_sq > 0 else math.inf,
        "batches": K,
        "active_weights": n_active,
        "batch_size": int(batches[0][0].shape[0]),
    }
