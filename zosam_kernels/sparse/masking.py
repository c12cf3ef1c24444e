"""The masking object: which weights of a model are active, kept in force
across every optimizer of the package and plain torch optimizers.

Which weights are masked. By default, the weight matrices and kernels that a
sparse-training paper prunes, i.e. the parameters that multiply the inputs of
a layer (`PRUNABLE`, `prunable_weights`):

    Linear (and its subclasses: MultiheadAttention's out_proj, timm's fused qkv)  weight
    Conv1d/2d/3d, ConvTranspose1d/2d/3d                                          weight
    MultiheadAttention  in_proj_weight, or q/k/v_proj_weight when kdim/vdim differ
    RNN, LSTM, GRU (and their cells)  weight_ih*, weight_hh*, weight_hr* (LSTM projection)

Everything else stays dense: biases and norm parameters (1-D, few, and a bias
has no input connection to prune), embeddings, position embeddings and
cls/register tokens (vectors looked up or added, not connections between the
units of two layers), MultiheadAttention's bias_k/bias_v, and the parameters of
layer types not in the table. Frozen parameters (requires_grad=False) are neither masked
nor counted. A parameter is named as in model.named_parameters(), and a weight
shared by several layers is masked once.

The choice can be changed by name: `exclude` (names or fnmatch patterns,
matched against the weights masked by default) keeps weights dense, `include`
masks more trainable parameters of at least 2 dimensions (e.g. an embedding);
a pattern that matches nothing, an included parameter that is 1-D or frozen,
or a name both included and kept dense is an error. `dense_first` /
`dense_last` keep the first / last weight of the default set (the input and
output layers; not of all parameters, since a module's own parameters, such as
a ViT's cls token, come before its children's in model order) dense, whatever
`exclude` says.

What is left dense is listed: `dense_params()` gives every trainable parameter
that is not masked (name -> parameter; p.numel() counts it). `density()` is
the fraction active of the masked weights, the ones the budget is spent on;
`density(of="all")` the fraction active of all trainable parameters, the
dense ones counting as active.

With init="random" the initial topology is random with the layer budget of
`distribution` (see densities.py; every masked tensor is one layer, so a fused
(3E, E) in_proj_weight or qkv gets the ERK budget of its own shape, not that of
three (E, E) layers), the start
of the dynamic methods, which change it through `update_`; with init="dense"
every weight stays active until `prune_by_scores_` (pruning at initialisation,
scores.py) keeps the budget, so the scores see the dense model and kept weights
keep their values.

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
from fnmatch import fnmatchcase

import torch
from torch import nn

from ..masks import keep_top, keep_top_across, zero_pruned_
from ..optim import is_engine
from .densities import check_density, layer_counts

# layer types -> fnmatch patterns of the names, inside the layer, of the weights masked by default
PRUNABLE = {
    (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
     nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d): ("weight",),
    nn.MultiheadAttention: ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"),
    (nn.RNNBase, nn.RNNCellBase): ("weight_ih*", "weight_hh*", "weight_hr*"),
}


def prunable_weights(model):
    """name -> trainable weight masked by default (PRUNABLE), named and ordered as in
    model.named_parameters()."""
    ids = {id(p) for m in model.modules() for types, patterns in PRUNABLE.items() if isinstance(m, types)
           for n, p in m.named_parameters(recurse=False) if any(fnmatchcase(n, pat) for pat in patterns)}
    # named_parameters lists a weight shared by several layers once, under its first name
    return {n: p for n, p in model.named_parameters() if id(p) in ids and p.requires_grad}


def _matches(argument, patterns, names, where):
    """The names among `names` that the patterns (a parameter name or fnmatch pattern, or
    a list of them) match; a pattern that matches none of them is an error."""
    patterns = [patterns] if isinstance(patterns, str) else patterns
    if not isinstance(patterns, (list, tuple, set, frozenset)) \
            or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{argument} must be a parameter name or glob pattern, or a list of them, "
                        f"got {patterns!r}")
    matched = {}
    for pattern in patterns:
        hits = [n for n in names if fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(f"{argument}: {pattern!r} matches none of {where}")
        matched.update(dict.fromkeys(hits))
    return list(matched)


def _masked_weights(model, include, exclude, dense_first, dense_last):
    """name -> parameter that a Masking with these arguments masks, in model order."""
    default = prunable_weights(model)
    params = dict(model.named_parameters())
    dense = set(_matches("exclude", exclude, default,
                         "the weights masked by default (sparse.prunable_weights(model))"))
    order = list(default)
    if dense_first and order:
        dense.add(order[0])
    if dense_last and order:
        dense.add(order[-1])
    included = _matches("include", include, params, "the model's parameters (model.named_parameters())")
    bad = {"not trainable (requires_grad=False)": [n for n in included if not params[n].requires_grad],
           "not at least 2-D": [n for n in included if params[n].dim() < 2],
           "also kept dense by exclude, dense_first or dense_last": [n for n in included if n in dense]}
    for why, names in bad.items():
        if names:
            raise ValueError(f"include: {names} {'is' if len(names) == 1 else 'are'} {why}")
    return {n: p for n, p in params.items() if (n in default and n not in dense) or n in included}


class Masking:
    """Masking(model, density, distribution="erk", dense_first=False, dense_last=False,
    init="random", seed=0, include=(), exclude=())

    density: fraction of the masked weights kept (see the module's docstring for
    which weights are masked); the number kept is exact (round(density · n)).
    include / exclude: parameter names or fnmatch patterns (or lists of them) of
    model.named_parameters() to mask in addition to / keep dense out of the default set.
    """

    def __init__(self, model, density, distribution="erk", dense_first=False, dense_last=False,
                 init="random", seed=0, include=(), exclude=()):
        check_density(density)
        if init not in ("random", "dense"):
            raise ValueError(f"init must be 'random' or 'dense', got {init!r}")
        self.model = model
        self.params = _masked_weights(model, include, exclude, dense_first, dense_last)
        if not self.params:
            raise ValueError("model has no weight left to mask (see sparse.prunable_weights(model), "
                             "include=, exclude=, dense_first, dense_last)")
        names = list(self.params)
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

    def density(self, of="masked"):
        """Fraction active of the masked weights (of="masked"), or of every trainable
        parameter of the model, the ones left dense counting as active (of="all")."""
        if of not in ("masked", "all"):
            raise ValueError(f"of must be 'masked' or 'all', got {of!r}")
        active = sum(int(m.sum()) for m in self.masks.values())
        total = sum(m.numel() for m in self.masks.values())
        if of == "all":
            dense = sum(p.numel() for p in self.dense_params().values())
            active, total = active + dense, total + dense
        return active / total

    def dense_params(self):
        """name -> trainable parameter of the model that is not masked, in model order."""
        masked = {id(p) for p in self.params.values()}
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in masked}

    def layer_densities(self):
        return {n: int(m.sum()) / m.numel() for n, m in self.masks.items()}

    def attach(self, optimizer):
        """Keep `optimizer`'s state in line with the masks (and, for a plain torch
        optimizer, its gradients and weights). Returns the optimizer."""
        self.optimizers.append(optimizer)
        self.apply_()           # state made before the attach (e.g. dense pre-training) too
        if not is_engine(optimizer):
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

    def state_dict(self):
        """The masks and the generator of random scores: what a resumed run needs to
        continue the same topology and draw the same random growth."""
        return {"masks": {n: m.clone() for n, m in self.masks.items()},
                "generator": self.generator.get_state(),
                "dense_gradient_steps": self.dense_gradient_steps}

    def load_state_dict(self, state):
        """Take the masks and the generator's state of `state_dict()`. Unlike
        `update_`, weights active in the loaded masks keep their values (they come
        from the same checkpoint); pruned weights and their optimizer state are zeroed."""
        missing = set(self.masks) - set(state["masks"])
        if missing:
            raise ValueError(f"state_dict: no mask for {sorted(missing)}: it comes from a "
                             f"Masking of another model or another include/exclude")
        masks = self._checked({n: m.to(self.masks[n].device) for n, m in state["masks"].items()})
        self.masks = {n: masks[n].clone() for n in self.masks}
        self.version += 1
        self.apply_()
        self.generator.set_state(state["generator"])
        self.dense_gradient_steps = int(state["dense_gradient_steps"])

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
