"""The masking object: which weights of a model are active, kept in force
across every optimizer of the package and plain torch optimizers.

Prunable weights are the weights of Conv and Linear layers (biases and norm
parameters stay dense); `dense_first` / `dense_last` keep the first / last of
them dense. With init="random" the initial topology is random with the layer
budget of `distribution` (see densities.py), the start of the dynamic methods,
which change it through `update_`; with init="dense" every weight stays active
until `prune_by_scores_` (pruning at initialisation, scores.py) keeps the budget,
so the scores see the dense model and kept weights keep their values.

Protocol with the optimizers of the package (masks=masking, see masks.py):
`param_masks()` and `version`, bumped on every topology change, so the
optimizer re-reads the masks at its next step; `observe_gradients()`, called
by them after the gradient pass and before the gradients are masked, which
keeps a copy of the dense gradient on the steps a schedule asked for it
(`keep_dense_gradient`) and does nothing on the others.

In dense PyTorch the backward computes the full gradient of a weight tensor
whatever its mask, so "sparse backward" here means the gradient of pruned
weights is discarded before the optimizer sees it; what a step without a
request saves is the copy and its memory, not the backward's arithmetic.

`attach(optimizer)` is needed once per optimizer: it lets topology changes
zero the optimizer state (momentum, Adam moments: every state tensor of a
weight's shape) of pruned and of grown weights, so grown weights start from
0 with fresh state. For a plain torch optimizer it also installs the hooks
that the package's optimizers do not need: before the step, observe and mask
the gradients; after it, zero pruned weights and their state.
"""
import torch
from torch import nn

from ..masks import keep_top, keep_top_across, zero_pruned_
from ..optim.base import SharpnessAwareOptimizer
from .densities import check_density, layer_counts

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_weights(model):
    """name -> weight of every Conv/Linear layer, in model.named_modules() order."""
    return {f"{name}.weight" if name else "weight": m.weight for name, m in model.named_modules()
            if isinstance(m, PRUNABLE) and m.weight.requires_grad}


class Masking:
    """Masking(model, density, distribution="erk", dense_first=False, dense_last=False,
    init="random", seed=0)

    density: fraction of the prunable weights kept (over those not kept dense
    by dense_first / dense_last); the number kept is exact (round(density · n)).
    """

    def __init__(self, model, density, distribution="erk", dense_first=False, dense_last=False,
                 init="random", seed=0):
        check_density(density)
        if init not in ("random", "dense"):
            raise ValueError(f"init must be 'random' or 'dense', got {init!r}")
        self.model = model
        params = prunable_weights(model)
        names = list(params)
        if dense_first and names:
            names = names[1:]
        if dense_last and names:
            names = names[:-1]
        if not names:
            raise ValueError("model has no prunable (Conv/Linear) weight left to mask")
        self.params = {n: params[n] for n in names}
        self.target_density = density
        self.distribution = distribution
        self.counts = dict(zip(names, layer_counts([p.shape for p in self.params.values()],
                                                   density, distribution)))
        self.generator = torch.Generator().manual_seed(seed)
        self.masks = {n: keep_top(self.random_scores(p), self.counts[n] if init == "random" else p.numel())
                      for n, p in self.params.items()}
        self.version = 0
        self.optimizers = []
        self.keep_dense_gradient = False
        self.dense_gradients = {}
        self.dense_gradient_steps = 0   # how many gradient passes had their dense gradient kept
        self.apply_()

    @property
    def names(self):
        return list(self.params)

    def random_scores(self, p):
        """Uniform random scores for the weights of p (reproducible from the seed)."""
        return torch.rand(p.shape, generator=self.generator).to(p.device)

    def param_masks(self):
        return {self.params[n]: m for n, m in self.masks.items()}

    def density(self):
        """Fraction of the masked weights that are active."""
        return sum(int(m.sum()) for m in self.masks.values()) / sum(m.numel() for m in self.masks.values())

    def layer_densities(self):
        return {n: int(m.sum()) / m.numel() for n, m in self.masks.items()}

    def attach(self, optimizer):
        """Keep `optimizer`'s state in line with the masks (and, for a plain torch
        optimizer, its gradients and weights). Returns the optimizer."""
        self.optimizers.append(optimizer)
        self.apply_()           # state made before the attach (e.g. dense pre-training) too
        if not isinstance(optimizer, SharpnessAwareOptimizer):
            optimizer.register_step_pre_hook(lambda opt, args, kwargs: self._before_plain_step())
            optimizer.register_step_post_hook(lambda opt, args, kwargs: self.apply_())
        return optimizer

    def _before_plain_step(self):
        self.observe_gradients()
        with torch.no_grad():
            for n, p in self.params.items():
                if p.grad is not None:
                    zero_pruned_(p.grad, self.masks[n])

    def observe_gradients(self):
        """Keep the dense gradient of this gradient pass if a schedule asked for it."""
        if not self.keep_dense_gradient:
            return
        self.dense_gradients = {n: p.grad.detach().clone() for n, p in self.params.items()
                                if p.grad is not None}
        self.dense_gradient_steps += 1

    def take_dense_gradients(self):
        """The kept dense gradients (name -> tensor), released from the masking."""
        grads, self.dense_gradients = self.dense_gradients, {}
        if set(grads) != set(self.params):
            raise RuntimeError("no dense gradient was kept for this update: call the schedule's "
                               "step() after every optimizer step, and attach plain torch "
                               "optimizers with masking.attach(optimizer)")
        return grads

    @torch.no_grad()
    def apply_(self):
        """Zero the pruned weights and their optimizer state."""
        for n, p in self.params.items():
            self._mul_weight_and_state(p, self.masks[n])

    def _mul_weight_and_state(self, p, keep):
        zero_pruned_(p.data, keep)
        for opt in self.optimizers:
            for value in opt.state.get(p, {}).values():
                if torch.is_tensor(value) and value.shape == p.shape:
                    zero_pruned_(value, keep)

    @torch.no_grad()
    def update_(self, masks):
        """Replace the masks of some layers (name -> bool tensor). Pruned and grown
        weights get value 0 and zeroed optimizer state; the version moves."""
        masks = self._checked(masks)
        changed = False
        for n, new in masks.items():
            old = self.masks[n]
            if torch.equal(old, new):
                continue
            self._mul_weight_and_state(self.params[n], old & new)
            self.masks[n] = new.clone()
            changed = True
        if changed:
            self.version += 1

    def _checked(self, masks):
        if not hasattr(masks, "items"):
            raise TypeError(f"masks must be a mapping from weight name to bool tensor, got "
                            f"{type(masks).__name__}")
        for n, m in masks.items():
            if n not in self.params:
                raise ValueError(f"masks: {n!r} is not a masked weight; masked weights are {self.names}")
            p = self.params[n]
            if not torch.is_tensor(m) or m.dtype != torch.bool:
                raise TypeError(f"masks: the mask of {n!r} must be a bool tensor, got "
                                f"{getattr(m, 'dtype', type(m).__name__)}")
            if m.shape != p.shape or m.device != p.device:
                raise ValueError(f"masks: the mask of {n!r} has shape {tuple(m.shape)} on {m.device}, "
                                 f"its weight has shape {tuple(p.shape)} on {p.device}")
        return masks

    def prune_by_scores_(self, scores, scope="global", keep="largest"):
        """Keep the budget of weights with the largest (or smallest) scores
        (name -> tensor of the weight's shape): one ranking over all layers
        ("global"), or the layer budgets of the distribution ("layerwise")."""
        if scope not in ("global", "layerwise"):
            raise ValueError(f"scope must be 'global' or 'layerwise', got {scope!r}")
        if keep not in ("largest", "smallest"):
            raise ValueError(f"keep must be 'largest' or 'smallest', got {keep!r}")
        missing = set(self.params) - set(scores)
        if missing:
            raise ValueError(f"scores has no entry for {sorted(missing)}")
        sign = 1.0 if keep == "largest" else -1.0
        scores = {n: sign * scores[n].detach().to(self.params[n].device) for n in self.params}
        for n, s in scores.items():
            if s.shape != self.params[n].shape:
                raise ValueError(f"scores: {n!r} has shape {tuple(s.shape)}, its weight "
                                 f"{tuple(self.params[n].shape)}")
        if scope == "layerwise":
            masks = {n: keep_top(s, self.counts[n]) for n, s in scores.items()}
        else:
            masks = dict(zip(scores, keep_top_across(list(scores.values()), sum(self.counts.values()))))
        self.update_(masks)
