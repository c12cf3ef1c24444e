"""What every instrument of this package shares: which weights are active,
checked batches and losses, flat vectors of the active entries, and leaving
the model's state as it was found.
"""
import contextlib

import torch

from ..flat import Layout
from ..masks import normalize_masks


def active_parameters(model, masks):
    """(parameter, mask or None) of each trainable parameter of `model`, in model
    order; None means fully active. `masks` maps parameter -> bool tensor (or is a
    masking object with param_masks()); a mask given for a frozen parameter is
    ignored, since frozen parameters are not counted at all."""
    # validated against all parameters so that a mask of a frozen one is not an error
    by_id, _ = normalize_masks(Layout(model.parameters()), masks)
    active = [(p, by_id.get(id(p))) for p in model.parameters() if p.requires_grad]
    if not active:
        raise ValueError("model has no parameter with requires_grad=True; unfreeze the weights "
                         "to be measured")
    if count_active(active) == 0:
        raise ValueError("masks leave no active weight; pass masks with at least one True entry")
    return active


def count_active(active):
    return sum(p.numel() if m is None else int(m.sum()) for p, m in active)


def checked_batches(batches, at_least=1):
    """`batches` as a list of (x, y) pairs (a generator would be exhausted after the
    first pass, and the instruments make several)."""
    batches = list(batches)
    if len(batches) < at_least:
        raise ValueError(f"batches: got {len(batches)} batch(es), need at least {at_least}; pass a "
                         "list of (x, y) tensor pairs")
    for k, batch in enumerate(batches):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(f"batches[{k}] must be an (x, y) pair, got {type(batch).__name__}")
    return batches


def scalar_loss(loss_fn, model, x, y):
    loss = loss_fn(model, x, y)
    if not torch.is_tensor(loss) or loss.dim() != 0:
        shape = tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__
        raise ValueError(f"loss_fn must return a scalar tensor (the mean loss of the batch), got {shape}; "
                         "reduce it with .mean()")
    return loss


@contextlib.contextmanager
def preserved_state(model):
    """Leave `model` as it was found: every buffer (BatchNorm running statistics and
    counters), the train/eval flag of every submodule (a model may mix them, e.g.
    frozen BatchNorm in a training model), and the global RNG states of the CPU and
    of the accelerators the model lives on (dropout draws from them, and a caller's
    training must not see a different random stream because it was measured).
    Parameters are not copied here: only the landscape moves them, and it restores
    them itself."""
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    modes = [(m, m.training) for m in model.modules()]
    on_accelerators = {}
    for t in [*model.parameters(), *model.buffers()]:
        if t.device.type not in ("cpu", "meta"):
            on_accelerators.setdefault(t.device.type, set()).add(t.device.index or 0)
    with contextlib.ExitStack() as stack:
        # the CPU state is forked in any case; devices=[] keeps fork_rng from touching every GPU
        stack.enter_context(torch.random.fork_rng(devices=[]))
        for device_type, indices in on_accelerators.items():
            stack.enter_context(torch.random.fork_rng(devices=sorted(indices), device_type=device_type))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, b in model.named_buffers():
                    b.copy_(buffers[n])
            for m, training in modes:
                m.training = training


def active_flat(tensors, active):
    """The entries of `tensors` (one per parameter of `active`; None = zero) at the
    active weights, concatenated in float64."""
    parts = []
    for t, (p, m) in zip(tensors, active):
        t = torch.zeros_like(p) if t is None else t.detach()
        parts.append((t if m is None else t[m]).reshape(-1).double())
    return torch.cat(parts)
