"""Pruning-at-initialisation scores, one tensor per prunable weight.

    magnitude  |θ|
    random     uniform random (seeded)
    snip       |g ⊙ θ|, g the gradient of the loss averaged over `batches`
               (Lee et al. 2019; the paper's normalisation by the sum does not change the ranking)
    grasp      −θ ⊙ Hg (Wang et al. 2020): g the gradient of loss_fn(outputs / T, targets)
               with temperature T = 200, Hg its Hessian-gradient product by double backward,
               on `samples_per_class` = 10 samples of every class found in `batches`
               (the first ones met); g and H are taken over the weights masked by default
               (prunable_weights: the public code's Conv/Linear weights, and attention
               projections) and any other scored weight, biases and norm parameters held
               fixed. The weights with the highest scores are removed,
               i.e. `keep="smallest"` (the `KEEP` table). The public code splits its sample
               into two halves and sums their gradients and products, which scales the
               scores by a constant and leaves the ranking as here.
    synflow    (Tanaka et al. 2020) data-free: on a float64 copy of the model in eval mode
               with every parameter and buffer replaced by its absolute value, R = Σ model(1),
               score = |∂R/∂θ ⊙ θ|; with iterations n > 1 the weights are pruned globally in n
               rounds to the densities density^(k/n), and the scores of the last round are
               returned (pruned weights score 0). Needs `density` for n > 1 and the input shape
               (`input_shape`, or the first batch's).

Scores are computed on a copy of the model, so its weights, gradients and
BatchNorm statistics are left as they were. `prune_at_init_` scores a Masking's
weights and keeps its budget of them.
"""
import copy

import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from .densities import check_density
from ..masks import keep_top_across
from .masking import prunable_weights

METHODS = ("magnitude", "random", "snip", "grasp", "synflow")
KEEP = {"magnitude": "largest", "random": "largest", "snip": "largest", "grasp": "smallest",
        "synflow": "largest"}


def score(method, model, loss_fn=None, batches=None, names=None, *, density=None, iterations=100,
          temperature=200.0, samples_per_class=10, input_shape=None, seed=0):
    """name -> score tensor for the weights masked by default of `model` (prunable_weights),
    or for its parameters `names` (a Masking's names, with its include=)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    weights = {n: p for n, p in model.named_parameters() if p.requires_grad}
    names = list(prunable_weights(model)) if names is None else list(names)
    unknown = [n for n in names if n not in weights]
    if unknown:
        raise ValueError(f"names: {unknown} are not trainable parameters of the model")
    if method == "magnitude":
        return {n: weights[n].detach().abs().clone() for n in names}
    if method == "random":
        g = torch.Generator().manual_seed(seed)
        return {n: torch.rand(weights[n].shape, generator=g).to(weights[n].device) for n in names}
    if method == "synflow":
        return _synflow(model, names, batches, density, iterations, input_shape)
    if loss_fn is None or batches is None:
        raise ValueError(f"method {method!r} needs loss_fn and batches")
    if method == "snip":
        return _snip(model, names, loss_fn, batches)
    return _grasp(model, names, loss_fn, batches, temperature, samples_per_class)


def _copy(model):
    copied = copy.deepcopy(model)
    return copied, dict(copied.named_parameters())


def _snip(model, names, loss_fn, batches):
    model, weights = _copy(model)
    params = [weights[n] for n in names]
    total, count = [torch.zeros_like(p) for p in params], 0
    for x, y in batches:
        grads = torch.autograd.grad(loss_fn(model(x), y), params)
        total = [t + g for t, g in zip(total, grads)]
        count += 1
    if count == 0:
        raise ValueError("batches is empty")
    return {n: (t / count * p).abs().detach() for n, t, p in zip(names, total, params)}


def class_balanced(batches, samples_per_class):
    """(inputs, targets) with the first `samples_per_class` samples of every
    class present in `batches`, classes in increasing order."""
    xs, ys = [], []
    for x, y in batches:
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ValueError("batches is empty")
    x, y = torch.cat(xs), torch.cat(ys)
    picked = []
    for c in torch.unique(y).tolist():
        where = torch.nonzero(y == c).flatten()
        if where.numel() < samples_per_class:
            raise ValueError(f"samples_per_class={samples_per_class} but batches hold only "
                             f"{where.numel()} samples of class {c}")
        picked.append(where[:samples_per_class])
    picked = torch.cat(picked)
    return x[picked], y[picked]


def _grasp(model, names, loss_fn, batches, temperature, samples_per_class):
    if isinstance(samples_per_class, bool) or not isinstance(samples_per_class, int) or samples_per_class < 1:
        raise ValueError(f"samples_per_class must be an int >= 1, got {samples_per_class!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    x, y = class_balanced(batches, samples_per_class)
    model, weights = _copy(model)
    over = list(dict.fromkeys([*prunable_weights(model), *names]))
    params = [weights[n] for n in over]

    def loss():
        # Hg differentiates the backward: of scaled_dot_product_attention's kernels (attention
        # layers), only the math one has a double backward
        with sdpa_kernel(SDPBackend.MATH):
            return loss_fn(model(x) / temperature, y)

    g = [t.detach() for t in torch.autograd.grad(loss(), params)]
    grads = torch.autograd.grad(loss(), params, create_graph=True)
    hg = torch.autograd.grad(sum((a * b).sum() for a, b in zip(grads, g)), params)
    scores = {n: (-p * h).detach() for n, p, h in zip(over, params, hg)}
    return {n: scores[n] for n in names}


def _synflow(model, names, batches, density, iterations, input_shape):
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    if iterations > 1:
        check_density(density)
    if input_shape is None:
        first = next(iter(batches), None) if batches is not None else None
        if first is None:
            raise ValueError("synflow needs input_shape or a batch to know the input shape")
        input_shape = first[0].shape[1:]
    model, weights = _copy(model)
    model = model.double().eval()
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    params = dict(model.named_parameters())
    theta = {n: params[n] for n in names}
    x = torch.ones((1, *input_shape), dtype=torch.float64, device=next(iter(theta.values())).device)
    masks = {n: torch.ones_like(t, dtype=torch.bool) for n, t in theta.items()}
    total = sum(t.numel() for t in theta.values())
    for k in range(1, iterations + 1):
        masked = {n: t * masks[n] for n, t in theta.items()}
        out = functional_call(model, {**params, **masked}, (x,))
        grads = torch.autograd.grad(out.sum(), list(masked.values()))
        scores = {n: (g * m).abs().detach() for (n, m), g in zip(masked.items(), grads)}
        if k < iterations:
            masks = dict(zip(scores, keep_top_across(list(scores.values()),
                                                     round(density ** (k / iterations) * total))))
    return {n: s.to(weights[n].dtype) for n, s in scores.items()}


def prune_at_init_(masking, method, loss_fn=None, batches=None, scope="global", **kwargs):
    """Score `masking`'s weights with `method` and keep its budget of them; the
    masking must still be dense (built with init="dense")."""
    if masking.density() < 1:
        raise ValueError("masking: pruning at initialisation scores the dense model; build the "
                         "Masking with init='dense'")
    if method == "synflow":
        kwargs.setdefault("density", masking.target_density)
    scores = score(method, masking.model, loss_fn, batches, names=masking.names, **kwargs)
    masking.prune_by_scores_(scores, scope=scope, keep=KEEP[method])
    return scores
