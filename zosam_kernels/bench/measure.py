"""What zosam-bench measures about one step: its time, its peak memory, the
memory the optimizer keeps between steps, and a per-phase profile."""
import contextlib
import os
import sys
import tempfile
import time
import warnings

import torch

PHASES = ("zo_forward", "perturb", "grad_pass", "restore", "base_step")


def timed(fn, device):
    """Seconds of one call of fn (a step, a kernel): CUDA events on the GPU, a wall
    clock on the CPU. The package's one timer: zosam-bench and benchmarks/ use it."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _tensors(obj, seen_objects):
    """Tensors reachable from an optimizer: its state, and the attributes of
    the package's own objects (saved copies, flat buffers, masks)."""
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v, seen_objects)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v, seen_objects)
    elif type(obj).__module__.startswith(("zosam_kernels", "torch.optim")) and id(obj) not in seen_objects:
        seen_objects.add(id(obj))
        yield from _tensors(vars(obj), seen_objects)


def _storage_bytes(tensors, exclude=()):
    """Bytes of the distinct storages of `tensors`, leaving out those of `exclude`."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen, total = set(), 0
    for t in tensors:
        ptr = t.untyped_storage().data_ptr()
        if ptr and ptr not in skip and ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def optimizer_bytes(run):
    """Bytes the optimizer keeps between steps, beyond the model's parameters,
    their gradients and its buffers, which it may refer to (momentum, SAM's
    saved weights, masks, the copy of the BatchNorm statistics, ...)."""
    params = list(run.model.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    return _storage_bytes(_tensors(run.opt, set()), exclude=params + grads + list(run.model.buffers()))


def live_bytes(run):
    """Bytes of the run's own tensors alive between steps: parameters,
    gradients, buffers, the batch, and what the optimizer keeps."""
    model = list(run.model.parameters()) + list(run.model.buffers())
    grads = [p.grad for p in run.model.parameters() if p.grad is not None]
    return _storage_bytes(model + grads + [run.x, run.y]) + optimizer_bytes(run)


@contextlib.contextmanager
def quiet_profiler():
    """Keep the torch profiler's own chatter off stderr while it runs: Kineto's
    profiler_start/stop lines and c10's warnings are written by C++ straight to
    file descriptor 2, so fd 2 itself goes to a temporary file (swallowing
    Python logging to stderr too); Python warnings are silenced as well, as
    they bypass fd 2 where sys.stderr was replaced (pytest's capsys). Should
    the body raise, what was held back is written out, so a failure keeps its
    diagnostics. Single-threaded use only: fd 2 is the whole process's."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        failed = True
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                os.dup2(sink.fileno(), 2)
                yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                sink.seek(0)
                os.write(2, sink.read())


def step_peak_bytes(run, device):
    """Peak memory of one step: the run's live tensors at its start plus the
    most that the step allocated on top of them (activations, temporaries).
    On CUDA, from the caching allocator's peak; on the CPU, from the
    allocation events of a profiled step (None where the profiler gives none)."""
    start = live_bytes(run)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run.step()
        torch.cuda.synchronize(device)
        return start + torch.cuda.max_memory_allocated(device) - base
    with quiet_profiler(), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        run.step()
    # the raw allocation events, in time order: their running sum is the live total
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        return None
    events = sorted((e for e in results.events() if e.name() == "[memory]"
                     and e.device_type() == torch.autograd.DeviceType.CPU), key=lambda e: e.start_ns())
    level = peak = 0
    for e in events:
        level += e.nbytes()
        peak = max(peak, level)
    return start + peak


def profile(run, device, directory, steps=3):
    """A Chrome/Perfetto trace of `steps` steps in directory/<method>.json, and
    the mean time per step of each named phase (ms): CPU time, and device
    time on CUDA."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    os.makedirs(directory, exist_ok=True)
    with quiet_profiler():
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(steps):
                run.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        prof.export_chrome_trace(os.path.join(directory, f"{run.method}.json"))
    phases = {}
    for e in prof.key_averages():
        if e.key in PHASES:
            device_us = getattr(e, "device_time_total", 0) if device.type == "cuda" else 0
            phases[e.key] = dict(cpu_ms=e.cpu_time_total / steps / 1e3,
                                 device_ms=device_us / steps / 1e3, calls=e.count / steps)
    return phases
