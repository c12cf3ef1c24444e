"""BatchNorm running statistics that a pass leaves as they were.

The extra passes and SAM's second gradient pass run the model in training
mode: BatchNorm normalises with the batch's statistics, as in the gradient
pass, but only that one pass per step may move the running statistics
(running_mean, running_var, num_batches_tracked). So they are copied before
such a pass and copied back after it (ResNet-32: 93 tensors, 9 kB), and the
pass itself is the model's ordinary training forward. Why copies: switching
track_running_stats off around each layer's forward (global module hooks) is
invisible to a torch.compile'd graph, which updates the buffers anyway, and
hooks registered anew per pass change what Dynamo guards on, so every pass
recompiled; a copy changes nothing a graph sees.

A step that is skipped (a non-finite loss) or fails (an exception in the
closure) leaves them as the step found them: `begin_step` copies them once
per step and `roll_back` puts the copy back.

The optimizer holds only parameters, so it finds the layers itself, once: the
first pass runs with torch.compile switched off and a global forward
pre-hook that, for every module the closure calls, collects the BatchNorm
layers below it. Below, not only the ones that run: a block that stochastic
depth skips in that pass may run in a later one. Later passes copy the
buffers of those layers and register no hook.
"""
import contextlib
import warnings
from typing import Any, Iterator, Optional

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.module import register_module_forward_pre_hook


class BatchNormStatistics:
    """The running statistics of the BatchNorm layers in the models an optimizer's closure calls."""

    _buffers: list[torch.Tensor]
    _saved: list[torch.Tensor]
    _start: list[torch.Tensor]

    def __init__(self) -> None:
        self.layers: Optional[list[_BatchNorm]] = None   # None until the first pass has found them
        self._buffers, self._saved, self._start = [], [], []   # buffers as last seen; room for copies
        self._started = False   # whether _start holds this step's statistics

    def forget(self) -> None:
        """Find the layers again in the next pass (new parameters may come with new layers)."""
        self.layers = None

    def begin_step(self) -> None:
        """Keep the statistics as the step finds them, for `roll_back`."""
        self._started = self.layers is not None
        if self._started:
            buffers, _ = self._current()
            _copy(self._start, buffers)

    def roll_back(self) -> None:
        """The statistics as the step found them (after a skipped or failed step)."""
        if self._started:
            _copy(self._buffers, self._start)

    @contextlib.contextmanager
    def frozen(self, freeze: bool = True) -> Iterator[None]:
        """Passes in the block use batch statistics as usual; when it ends, however
        it ends, the running statistics are what they were before it (freeze=False:
        the block may move them, as the one updating pass of a step does)."""
        if self.layers is None:
            with self._finding(freeze):
                yield
            return
        if not freeze:
            yield
            return
        buffers, saved = self._current()
        _copy(saved, buffers)
        try:
            yield
        finally:
            _copy(buffers, saved)

    def _current(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The layers' buffers and the room for their copies, made anew only when a
        buffer was replaced (e.g. `bn.running_mean = ...`). Module._buffers rather
        than buffers(): the public generator costs 25x more, per pass."""
        buffers = [b for m in self.layers or () for b in m._buffers.values() if b is not None]
        if len(buffers) != len(self._buffers) or any(a is not b for a, b in zip(buffers, self._buffers)):
            self._buffers, self._saved = buffers, [torch.empty_like(b) for b in buffers]
            self._start, self._started = [b.clone() for b in buffers], False
        return self._buffers, self._saved

    @contextlib.contextmanager
    def _finding(self, freeze: bool) -> Iterator[None]:
        """The first pass, run eagerly. The hook meets the module the closure
        calls first (the model) before anything below it runs, and copies the
        buffers of every BatchNorm below it; a module met later that is not below
        a former one adds its own. The layers are kept only if the pass completes
        (else the next pass looks again); their copies, the statistics before
        the pass, become the step's start (the first pass of a step finds them)."""
        seen: set[torch.nn.Module] = set()
        layers: list[_BatchNorm] = []
        buffers: list[torch.Tensor] = []
        copies: list[torch.Tensor] = []

        def find(module: torch.nn.Module, args: Any) -> None:
            if module in seen:
                return
            for m in module.modules():
                if m not in seen:
                    seen.add(m)
                    if isinstance(m, _BatchNorm):
                        layers.append(m)
                        new = [b for b in m._buffers.values() if b is not None]
                        buffers.extend(new)
                        copies.extend(b.clone() for b in new)

        try:
            eager = torch.compiler.set_stance("force_eager")   # in force from here; the block restores
        except RuntimeError as e:   # torch refuses to change its stance while compiling
            raise RuntimeError(COMPILED_STEP) from e
        with eager, warnings.catch_warnings():
            # torch.compile(module) warns that global hooks fire for its wrapper too: harmless here
            warnings.filterwarnings("ignore", message=r"Using `torch\.compile\(module\)` when there "
                                                      r"are global hooks")
            hook = register_module_forward_pre_hook(find)
            try:
                yield
            except BaseException:
                _copy(buffers, copies)   # a pass that failed midway moved nothing
                raise
            finally:
                hook.remove()
            if freeze:
                _copy(buffers, copies)
        self.layers, self._buffers, self._start = layers, buffers, copies
        self._saved, self._started = [torch.empty_like(b) for b in buffers], True


@torch.no_grad()   # the copies are no part of any graph, and autograd's checks would double their cost
def _copy(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    if dst:   # a model without BatchNorm: nothing to copy, and _foreach ops refuse empty lists
        torch._foreach_copy_(dst, src)


COMPILED_STEP = ("the optimizer runs inside a torch.compile'd function, where it cannot find the "
                  "BatchNorm layers whose statistics its extra passes must leave alone (that takes one "
                  "eager pass, and torch.compiler.set_stance refuses to switch inside a compiled "
                  "function): compile the model, or the closure, and call step() outside torch.compile")
