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
from __future__ import annotations

import contextlib
import inspect
import math
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import torch
from torch.amp.grad_scaler import GradScaler  # from its module: torch 2.11's torch.amp does not export it to mypy

from .batchnorm import BatchNormStatistics


def mean_loss(loss: object) -> torch.Tensor:
    """Validate a closure's return value and reduce per-sample losses to their mean."""
    if not torch.is_tensor(loss):
        raise TypeError(f"closure must return the loss as a tensor, got {type(loss).__name__}")
    if loss.dim() > 1 or loss.numel() == 0:
        raise ValueError(f"closure must return a scalar or a 1-D tensor of per-sample losses, "
                         f"got shape {tuple(loss.shape)}")
    return loss.mean() if loss.dim() == 1 else loss


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
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


def check_takes_indices(closure: Callable[..., Any], why: str) -> None:
    """Raise unless closure can be called as closure(indices)."""
    try:
        inspect.signature(closure).bind(None)
    except TypeError:
        raise TypeError(f"closure must accept an optional `indices` argument (closure(indices=None) "
                        f"returning the loss of the samples x[indices]) for {why}") from None
    except ValueError:   # no signature to inspect (some builtins): trust the caller
        pass


def evaluate(closure: Callable[..., Any], indices: Optional[Union[torch.Tensor, slice]] = None) -> Any:
    return closure() if indices is None else closure(indices)


class Passes:
    """How an optimizer evaluates its closure in a step: the gradient passes
    (autograd on, backward through the loss) and the extra passes (the loss
    evaluations that are only compared with each other: ZO-SAM's 2m zeroth-order
    passes, ESAM's selection pass; never a graph, never a BatchNorm statistic).

    Options of the whole loop (every optimizer takes them):
    common_random_numbers: every pass of a step that `replay`s starts from the
    random state the step started with (torch's CPU generator and those of the
    CUDA devices in `devices`), so dropout, drop-path and random augmentation
    inside the closure draw the same numbers in each: L(θ + δu) − L(θ − δu)
    then measures δu, not two draws of the noise. The gradient pass replays too,
    so ε is the ascent direction of the very loss whose gradient is taken, and
    after the step the generators have advanced by one closure call, as SGD's.
    micro_batches=k: each pass runs the closure on k strided parts of its batch
    (MicroBatches), summing, with 1/k of a pass's activation memory; the
    closure must take `indices` and return per-sample losses.
    grad_scaler: a torch.amp.GradScaler; gradient passes backpropagate the
    scaled loss, `unscale_` takes the scale back off before clipping.

    Options of the extra passes (ZO-SAM sets them; `name` prefixes their errors):
    batch_fraction < 1: run them on the first ceil(fraction * B) samples of the
    batch (a shuffled loader makes those a random subset). The closure must then
    take `indices` and return per-sample losses; B is their count in the last
    gradient pass (`observe_batch`), kept in the state so a resumed run slices
    as the uninterrupted one; until B is known, the whole batch is used.
    autocast=torch.bfloat16 (or float16): run them under autocast; the weights
    stay float32, so a small perturbation still moves them."""

    def __init__(self, batch_fraction: float = 1.0, autocast: Optional[torch.dtype] = None, name: str = "zo",
                 devices: Iterable[torch.device] = (), common_random_numbers: bool = False,
                 micro_batches: int = 1, grad_scaler: Optional[GradScaler] = None) -> None:
        if not isinstance(batch_fraction, (int, float)) or isinstance(batch_fraction, bool) \
                or not 0 < batch_fraction <= 1:
            raise ValueError(f"{name}_batch_fraction must be a number in (0, 1], got {batch_fraction!r}")
        if autocast not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"{name}_autocast must be None, torch.bfloat16 or torch.float16, "
                             f"got {autocast!r}")
        if grad_scaler is not None and not isinstance(grad_scaler, GradScaler):
            raise TypeError(f"grad_scaler must be a torch.amp.GradScaler, got {type(grad_scaler).__name__}")
        devices = {torch.device(d) for d in devices}
        self.batch_fraction, self.autocast, self.name = float(batch_fraction), autocast, name
        self.device_type = next(iter(sorted(d.type for d in devices if d.type != "cpu")), "cpu")
        if grad_scaler is not None and grad_scaler.is_enabled():
            # scale() makes a fresh scaler's scale, so a call of scaler.step(optimizer, closure)
            # reaches the optimizer, which says how to drive it (torch would assert first)
            grad_scaler.scale(torch.zeros((), device=min((d for d in devices if d.type == self.device_type),
                                                         key=str)))
        self.micro, self.grad_scaler = MicroBatches(micro_batches), grad_scaler
        self.random = RandomState(devices) if common_random_numbers else None
        self.batchnorm = BatchNormStatistics()   # what the extra and frozen gradient passes restore
        self.batch_size: Optional[int] = None

    def check(self, closure: Callable[..., Any]) -> None:
        """Raise now, before any pass, if the closure cannot give what these passes need."""
        if self.batch_fraction < 1:
            check_takes_indices(closure, f"{self.name}_batch_fraction={self.batch_fraction}")
        if self.micro.k > 1:
            check_takes_indices(closure, f"micro_batches={self.micro.k}")

    def begin_step(self) -> None:
        """Called once at the start of a step, before any pass."""
        if self.random is not None:
            self.random.save()
        self.batchnorm.begin_step()

    def roll_back(self) -> None:
        """After a step that is skipped or fails: the buffers the passes moved
        (BatchNorm's running statistics) as the step found them."""
        self.batchnorm.roll_back()

    def _replay(self) -> None:
        if self.random is not None:
            self.random.restore()

    def _subset(self) -> Optional[slice]:
        if self.batch_fraction == 1 or self.batch_size is None:
            return None
        return slice(0, math.ceil(self.batch_fraction * self.batch_size))

    def _per_sample(self, returned: torch.Tensor) -> torch.Tensor:
        if self.batch_fraction < 1 and returned.dim() != 1:
            raise ValueError(f"closure must return per-sample losses (a 1-D tensor) when "
                             f"{self.name}_batch_fraction={self.batch_fraction}: their count is B")
        return returned

    def extra(self, closure: Callable[..., Any], reduce: bool = True, name: str = "extra_pass") -> torch.Tensor:
        """An extra pass: the loss (reduce=False: what the closure returned, e.g.
        per-sample losses), detached. It replays the step's random state."""
        precision = (contextlib.nullcontext() if self.autocast is None
                     else torch.autocast(self.device_type, dtype=self.autocast))
        self._replay()
        with torch.no_grad(), self.batchnorm.frozen(), phase(name), precision:
            parts = [_no_backward_inside(closure, idx) for idx in self.micro.parts(self._subset())]
            returned = self._per_sample(self.micro.joined(parts))
            mean = mean_loss(returned)
        return (mean if reduce else returned).detach()

    def gradient(self, closure: Callable[..., Any], params: Sequence[torch.Tensor], freeze_batchnorm: bool = False,
                 indices: Optional[Union[torch.Tensor, slice]] = None, reduce: bool = True, replay: bool = False,
                 local: bool = False) -> torch.Tensor:
        """A gradient pass: drop the gradients, evaluate the closure with autograd
        and backpropagate the mean loss (scaled, with a grad_scaler), micro-batch
        by micro-batch. Returns the mean loss (reduce=False: what the closure
        returned, e.g. per-sample losses), detached. replay: start from the
        step's random state (with common_random_numbers). local: this
        process's gradient, by torch.autograd.grad, whose result DDP's reducer
        never sees (it hooks the accumulation into .grad), so it is not averaged.

        Dropped rather than zeroed: backward makes a fresh gradient tensor either
        way, and with no .grad to add it to, autograd keeps that tensor as is."""
        for p in params:
            p.grad = None
        if replay:
            self._replay()
        parts = self.micro.parts(indices)
        returned: list[torch.Tensor] = []
        with torch.enable_grad(), self.batchnorm.frozen(freeze_batchnorm), phase("grad_pass"):
            for idx in parts:
                part = evaluate(closure, idx)
                # one part: the mean, as one pass; several: their sums, divided by the count below
                loss = mean_loss(part) if len(parts) == 1 else self.micro.checked(part).sum()
                if not returned and any(p.grad is not None for p in params):
                    raise RuntimeError(_CALLS_BACKWARD)
                if not loss.requires_grad:
                    raise RuntimeError("closure returned a loss that does not require grad in the "
                                       "gradient pass; does the model have trainable parameters, and is "
                                       "the closure free of torch.no_grad()?")
                _backward(loss if self.grad_scaler is None else self.grad_scaler.scale(loss), params, local)
                returned.append(part.detach())
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            raise RuntimeError("no parameter of the optimizer received a gradient: the model computes "
                               "with other tensors than the ones given to the optimizer (after "
                               "model.load_state_dict(..., assign=True), or model.to() to another "
                               "device, build the optimizer anew, or load with assign=False)")
        joined = self.micro.joined(returned)
        if len(parts) > 1:
            torch._foreach_div_(grads, joined.numel())
        return mean_loss(joined) if reduce else joined

    def unscale_(self, optimizer: torch.optim.Optimizer) -> Optional[torch.Tensor]:
        """Take the grad_scaler's scale off the gradients (once per step, before
        clipping); returns whether they are finite, as a 0-dim device tensor
        (None without an enabled scaler)."""
        if self.grad_scaler is None or not self.grad_scaler.is_enabled():
            return None
        self.grad_scaler.unscale_(optimizer)
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms = torch._foreach_norm(grads)
        return torch.stack([n.to(norms[0].device) for n in norms]).isfinite().all()

    def update_scale(self) -> None:
        """The grad_scaler's once-per-step update: the scale backs off after an
        overflow found by `unscale_`, and grows after a run of finite steps."""
        if self.grad_scaler is not None and self.grad_scaler.is_enabled():
            self.grad_scaler.update()

    def observe_batch(self, returned: torch.Tensor) -> None:
        """Learn B from what the closure returned in a whole-batch gradient pass
        (the extra passes have checked that it returns per-sample losses)."""
        if self.batch_fraction < 1 and returned.dim() == 1:
            self.batch_size = returned.numel()

    def state_dict(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch_size = state.get("batch_size")


def _backward(loss: torch.Tensor, params: Sequence[torch.Tensor], local: bool) -> None:
    if not local:
        loss.backward()
        return
    params = [p for p in params if p.requires_grad]   # (ESAM's stochastic perturbation leaves some out)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for p, g in zip(params, grads):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g


class MicroBatches:
    """k strided parts of a pass's batch (part j: samples j, j + k, ...), so none
    needs the batch size; the closure returns per-sample losses for each."""

    def __init__(self, k: int) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"micro_batches must be an int >= 1, got {k!r}")
        self.k = k

    def parts(self, indices: Optional[Union[torch.Tensor, slice]]) -> list[Optional[Union[torch.Tensor, slice]]]:
        """The micro-batches of `indices` (None: the whole batch)."""
        k = self.k
        if k == 1:
            return [indices]
        if indices is None:
            return [slice(j, None, k) for j in range(k)]
        if isinstance(indices, slice):   # (a strided part of the batch: RWP's split)
            stride = indices.step or 1
            return [slice((indices.start or 0) + j * stride, indices.stop, k * stride) for j in range(k)]
        return [indices[j::k] for j in range(k)]

    def checked(self, returned: object) -> torch.Tensor:
        """What the closure returned for one micro-batch: per-sample losses, not none."""
        if not (torch.is_tensor(returned) and returned.dim() == 1):
            got = tuple(returned.shape) if torch.is_tensor(returned) else type(returned).__name__
            raise ValueError(f"closure must return per-sample losses (a 1-D tensor) with "
                             f"micro_batches={self.k}, got {got}")
        if returned.numel() == 0:
            raise ValueError(f"micro_batches={self.k} exceeds the number of samples in a "
                             "pass: a micro-batch came back empty")
        return returned

    def joined(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """What the closure returned for the whole batch, from its micro-batches:
        per-sample losses interleaved back into batch order."""
        if len(parts) == 1:
            return parts[0]
        parts = [self.checked(p) for p in parts]
        out = parts[0].new_empty(sum(p.numel() for p in parts))
        for j, p in enumerate(parts):
            out[j::len(parts)] = p
        return out


class RandomState:
    """Saves and restores the state of torch's CPU generator and of the given
    CUDA devices' generators: 5 kB for the CPU, 16 bytes per CUDA device, no
    host-device synchronisation."""

    def __init__(self, devices: Iterable[torch.device]) -> None:
        self.cuda = sorted({d.index if d.index is not None else torch.cuda.current_device()
                            for d in devices if d.type == "cuda"})
        self.saved: Any = None   # (the CPU generator's state, the CUDA generators')

    def save(self) -> None:
        self.saved = (torch.get_rng_state(), [torch.cuda.get_rng_state(i) for i in self.cuda])

    def restore(self) -> None:
        cpu, cuda = self.saved
        torch.set_rng_state(cpu)
        for i, state in zip(self.cuda, cuda):
            torch.cuda.set_rng_state(state, i)


def _no_backward_inside(closure: Callable[..., Any], indices: Optional[Union[torch.Tensor, slice]]) -> Any:
    """evaluate(closure, indices) in an extra pass, saying what is wrong when the
    closure calls backward itself (autograd's own message does not)."""
    try:
        return evaluate(closure, indices)
    except RuntimeError as e:
        if "does not require grad" not in str(e):
            raise
        raise RuntimeError(f"{_CALLS_BACKWARD} (autograd said: {e})") from None


ADAPTERS = ("In a trainer, use its adapter (zosam_kernels.integrations): Lightning, subclass "
            "lightning.SharpnessAwareModule; the Hugging Face Trainer, hf.SharpnessAwareTrainer; "
            "Accelerate, accelerate.prepare")
_CALLS_BACKWARD = ("closure must not call backward(): it runs the forward pass and returns the loss; "
                   "the optimizer calls backward itself, once per step, and evaluates the closure "
                   "without autograd where its method needs only the loss. " + ADAPTERS)
