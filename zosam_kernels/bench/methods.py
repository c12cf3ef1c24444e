"""The methods zosam-bench compares, and one benchmark run of each: a model,
its optimizer, a fixed synthetic batch (zosam_kernels.data), and hooks that
count the passes."""
import contextlib

import torch
import torch.nn.functional as F

from ..data import synthetic_cifar
from ..masks import mask_plain_optimizer
from ..models import MODELS
from ..optim import FAMILY, is_engine
from ..recipes import make_optimizer, options_of

BASE = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)   # the CIFAR recipe of the papers


def _method(name, options=lambda args, params: {}):
    """The optimizer `name` at its paper's defaults (recipes.py), plus `options(args, params)`."""
    def make(params, args, masks, model):
        kw = {} if name == "sgd" else {"masks": masks}
        if "model" in options_of(name):   # a selection of tensors (sam-on's normalization layers) reads it
            kw["model"] = model
        if "n_dirs" in options_of(name):
            kw["n_dirs"] = args.n_dirs
        if FAMILY[name].needs_total_steps:
            kw["total_steps"] = 78000            # 200 CIFAR epochs of batch 128
        return make_optimizer(name, params, torch.optim.SGD, BASE, **kw, **options(args, params))
    return make


METHODS = {name: _method(name) for name in FAMILY}
METHODS.update({
    "zosam-unfused": _method("zosam", lambda args, params: dict(backend="unfused")),
    "zosam-frac": _method("zosam", lambda args, params: dict(zo_batch_fraction=args.zo_batch_fraction)),
    "zosam-bf16": _method("zosam", lambda args, params: dict(zo_autocast=torch.bfloat16)),
    # the loop's options, one at a time (README, "In your training loop"): what each costs
    "zosam-no-crn": _method("zosam", lambda args, params: dict(common_random_numbers=False)),
    "zosam-clip": _method("zosam", lambda args, params: dict(max_grad_norm=1.0)),
    # a GradScaler without autocast: what the scaler itself costs
    "zosam-scaler": _method("zosam", lambda args, params: dict(
        grad_scaler=torch.amp.GradScaler(params[0].device.type))),
    "zosam-micro4": _method("zosam", lambda args, params: dict(micro_batches=4)),
})
DEFAULT_METHODS = ("sgd", "sam", "zosam", "zosam-unfused", "zosam-frac")


class PassCounter:
    """Counts forward calls of the model (and the samples they saw) and
    backward passes through its output."""

    def __init__(self, model, batch_size):
        self.batch_size = batch_size
        self.reset()
        model.register_forward_hook(self._on_forward)

    def reset(self):
        self.forward = self.backward = 0
        self.forward_samples = self.backward_samples = 0

    def _on_forward(self, module, args, out):
        self.forward += 1
        self.forward_samples += out.shape[0]
        if out.requires_grad:
            out.register_hook(self._on_backward)

    def _on_backward(self, grad):
        self.backward += 1
        self.backward_samples += grad.shape[0]


def random_masks(model, sparsity, generator):
    """A random static mask at the given sparsity on conv and linear weights."""
    return {p: torch.rand(p.shape, generator=generator).to(p.device) >= sparsity
            for p in model.parameters() if p.dim() > 1}


class Run:
    """One method on its own copy of the model (same initial weights and batch for all)."""

    def __init__(self, method, args, device):
        torch.manual_seed(0)
        self.method = method
        self.model = MODELS[args.model]().to(device)
        g = torch.Generator(device="cpu").manual_seed(1)
        masks = random_masks(self.model, args.sparsity, g) if args.sparsity else None
        x, y = next(synthetic_cifar(args.batch_size, seed=1))
        self.x, self.y = x.to(device), y.to(device)
        if args.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16
                         else contextlib.nullcontext())
        self.counter = PassCounter(self.model, args.batch_size)
        self.opt = METHODS[method](list(self.model.parameters()), args, masks, self.model)
        self.plain = not is_engine(self.opt)
        if self.plain and masks:
            mask_plain_optimizer(self.opt, masks)
        self.times = []

    def closure(self, indices=None):
        """Per-sample losses, on the samples `indices` (the closure protocol's subset extension)."""
        x, y = (self.x, self.y) if indices is None else (self.x[indices], self.y[indices])
        with self.autocast:
            out = self.model(x)
        return F.cross_entropy(out.float(), y, reduction="none")

    def step(self):
        if not self.plain:
            return self.opt.step(self.closure)
        self.opt.zero_grad()
        loss = self.closure().mean()
        loss.backward()
        self.opt.step()
        return loss.detach()
