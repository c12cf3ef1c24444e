"""The closure protocol: how optimizers evaluate the user's closure.

closure() runs the forward pass on the current batch and returns the loss, a
scalar or a 1-D tensor of per-sample losses; it never calls backward. The
optimizer decides which evaluation is the gradient pass (autograd on,
BatchNorm statistics updated) and which are extra passes (no_grad, BatchNorm
statistics frozen).

Subsets (a backward-compatible extension): a closure may take one optional
argument, `closure(indices=None)`, where indices is None (the whole batch), a
1-D int64 tensor of sample positions in the current batch, or a slice of
them; it then returns the loss of those samples only (e.g.
`loss_fn(model(x[indices]), y[indices])`, which works for both).
Methods that evaluate part of a batch (ZO passes on a fraction of it, ESAM's
data selection) require such a closure; every other use calls closure().
"""
import contextlib
import inspect

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.module import (register_module_forward_hook,
                                     register_module_forward_pre_hook)


def mean_loss(loss):
    """Validate a closure's return value and reduce per-sample losses to their mean."""
    if not torch.is_tensor(loss):
        raise TypeError(f"closure must return the loss as a tensor, got {type(loss).__name__}")
    if loss.dim() > 1 or loss.numel() == 0:
        raise ValueError(f"closure must return a scalar or a 1-D tensor of per-sample losses, "
                         f"got shape {tuple(loss.shape)}")
    return loss.mean() if loss.dim() == 1 else loss


@contextlib.contextmanager
def frozen_batchnorm():
    """BatchNorm layers use batch statistics but leave their running statistics
    (and num_batches_tracked) untouched. Global module hooks, so the optimizer
    needs no reference to the model: for the duration of the forward of each
    training-mode BatchNorm, track_running_stats is switched off, which makes
    torch pass no running buffers to F.batch_norm."""
    def pre(module, args):
        if isinstance(module, _BatchNorm) and module.training and module.track_running_stats:
            module.track_running_stats = False
            module._zosam_frozen = True

    def post(module, args, out):
        if getattr(module, "_zosam_frozen", False):
            module.track_running_stats = True
            del module._zosam_frozen

    h_pre = register_module_forward_pre_hook(pre)
    h_post = register_module_forward_hook(post, always_call=True)
    try:
        yield
    finally:
        h_pre.remove()
        h_post.remove()


@contextlib.contextmanager
def phase(name):
    """A named range of a step: a record_function range for torch.profiler
    traces and, on CUDA, an NVTX range for Nsight."""
    nvtx = torch.cuda.is_available() and torch.cuda.is_initialized()
    if nvtx:
        torch.cuda.nvtx.range_push(name)
    try:
        with torch.profiler.record_function(name):
            yield
    finally:
        if nvtx:
            torch.cuda.nvtx.range_pop()


def check_takes_indices(closure, why):
    """Raise unless closure can be called as closure(indices)."""
    try:
        inspect.signature(closure).bind(None)
    except TypeError:
        raise TypeError(f"closure must accept an optional `indices` argument (closure(indices=None) "
                        f"returning the loss of the samples x[indices]) for {why}") from None
    except ValueError:   # no signature to inspect (some builtins): trust the caller
        pass


def evaluate(closure, indices=None):
    return closure() if indices is None else closure(indices)


def extra_pass(closure, indices=None, reduce=True, name="extra_pass", inference=False):
    """A loss evaluation that neither builds a graph nor moves BatchNorm statistics.
    reduce=False returns what the closure returned (per-sample losses, if it gives them).
    inference=True runs it under torch.inference_mode (no version counters or
    view tracking either), for closures that cache no tensor for later autograd use."""
    grad_mode = torch.inference_mode() if inference else torch.no_grad()
    with grad_mode, frozen_batchnorm(), phase(name):
        loss = evaluate(closure, indices)
        mean = mean_loss(loss)
        return (mean if reduce else loss).detach()


def gradient_pass(closure, params, freeze_batchnorm=False, indices=None, reduce=True):
    """Drop the gradients, evaluate the closure with autograd, and backpropagate
    the mean loss; reduce=False returns what the closure returned, detached.

    Dropped rather than zeroed: backward makes a fresh gradient tensor either
    way, and with no .grad to add it to, autograd keeps that tensor as is."""
    for p in params:
        p.grad = None
    ctx = frozen_batchnorm() if freeze_batchnorm else contextlib.nullcontext()
    with torch.enable_grad(), ctx, phase("grad_pass"):
        returned = evaluate(closure, indices)
        loss = mean_loss(returned)
        if not loss.requires_grad:
            raise RuntimeError("closure returned a loss that does not require grad in the gradient "
                               "pass; does the model have trainable parameters, and is the closure "
                               "free of torch.no_grad()?")
        loss.backward()
    return (loss if reduce else returned).detach()
