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
import math

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


class ExtraPasses:
    """How an optimizer runs its extra passes: the loss evaluations that are only
    compared with each other (ZO-SAM's 2m zeroth-order passes, ESAM's selection
    pass). They never build a graph nor move BatchNorm statistics; two options
    make them cheaper, off by default:

    batch_fraction < 1: run them on the first ceil(fraction * B) samples of the
    batch (a shuffled loader makes those a random subset). The closure must then
    take `indices` and return per-sample losses; B is their count in the last
    gradient pass (`observe_batch`), kept in the state so a resumed run slices
    as the uninterrupted one; until B is known, the whole batch is used.
    autocast=torch.bfloat16 (or float16): run them under autocast; the weights
    stay float32, so a small perturbation still moves them.
    `name` is the option prefix in error messages; `device_type` the autocast's."""

    def __init__(self, batch_fraction=1.0, autocast=None, name="zo", device_type="cpu"):
        if not isinstance(batch_fraction, (int, float)) or isinstance(batch_fraction, bool) \
                or not 0 < batch_fraction <= 1:
            raise ValueError(f"{name}_batch_fraction must be a number in (0, 1], got {batch_fraction!r}")
        if autocast not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"{name}_autocast must be None, torch.bfloat16 or torch.float16, "
                             f"got {autocast!r}")
        self.batch_fraction, self.autocast, self.name = float(batch_fraction), autocast, name
        self.device_type = device_type
        self.batch_size = None

    def check(self, closure):
        """Raise now, before any pass, if the closure cannot give what these passes need."""
        if self.batch_fraction < 1:
            check_takes_indices(closure, f"{self.name}_batch_fraction={self.batch_fraction}")

    def _subset(self):
        if self.batch_fraction == 1 or self.batch_size is None:
            return None
        return slice(0, math.ceil(self.batch_fraction * self.batch_size))

    def _per_sample(self, returned):
        if self.batch_fraction < 1 and returned.dim() != 1:
            raise ValueError(f"closure must return per-sample losses (a 1-D tensor) when "
                             f"{self.name}_batch_fraction={self.batch_fraction}: their count is B")
        return returned

    def __call__(self, closure, reduce=True, name="extra_pass"):
        """The loss (reduce=False: what the closure returned, e.g. per-sample losses), detached."""
        precision = (contextlib.nullcontext() if self.autocast is None
                     else torch.autocast(self.device_type, dtype=self.autocast))
        with torch.no_grad(), frozen_batchnorm(), phase(name), precision:
            returned = _no_backward_inside(closure, self._subset())
            mean = mean_loss(self._per_sample(returned))
        return (mean if reduce else returned).detach()

    def observe_batch(self, returned):
        """Learn B from what the closure returned in a whole-batch gradient pass
        (the extra passes have checked that it returns per-sample losses)."""
        if self.batch_fraction < 1 and returned.dim() == 1:
            self.batch_size = returned.numel()

    def state_dict(self):
        return {"batch_size": self.batch_size}

    def load_state_dict(self, state):
        self.batch_size = state.get("batch_size")


def _no_backward_inside(closure, indices):
    """evaluate(closure, indices) in an extra pass, saying what is wrong when the
    closure calls backward itself (autograd's own message does not)."""
    try:
        return evaluate(closure, indices)
    except RuntimeError as e:
        if "does not require grad" not in str(e):
            raise
        raise RuntimeError(f"{_CALLS_BACKWARD} (autograd said: {e})") from None


_CALLS_BACKWARD = ("closure must not call backward(): it runs the forward pass and returns the loss; "
                   "the optimizer calls backward itself, once per step, and evaluates the closure "
                   "without autograd where its method needs only the loss")


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
        if any(p.grad is not None for p in params):
            raise RuntimeError(_CALLS_BACKWARD)
        if not loss.requires_grad:
            raise RuntimeError("closure returned a loss that does not require grad in the gradient "
                               "pass; does the model have trainable parameters, and is the closure "
                               "free of torch.no_grad()?")
        loss.backward()
    if not any(p.grad is not None for p in params):
        raise RuntimeError("no parameter of the optimizer received a gradient: the model computes "
                           "with other tensors than the ones given to the optimizer (after "
                           "model.load_state_dict(..., assign=True), or model.to() to another "
                           "device, build the optimizer anew, or load with assign=False)")
    return (loss if reduce else returned).detach()
