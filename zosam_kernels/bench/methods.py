"""The methods zosam-bench compares, and one benchmark run of each: a model,
its optimizer, a fixed synthetic batch (zosam_kernels.data), and hooks that
count the passes."""
import contextlib

import torch
import torch.nn.functional as F

from .. import ESAM, GSAM, SAM, SSAM, ZOSAM, ZOSSAM, LookSAM, ZOLookSAM
from ..data import synthetic_cifar
from ..flat import Layout
from ..masks import Masks
from ..models import MODELS
from ..optim.base import SharpnessAwareOptimizer

BASE = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)   # the CIFAR recipe of the papers


def _zosam(**kw):
    def make(params, args, masks):
        return ZOSAM(params, torch.optim.SGD, rho=0.05, delta=1e-3, n_dirs=args.n_dirs, masks=masks,
                     **kw, **BASE)
    return make


def _zosam_scaler(params, args, masks):
    """ZO-SAM with a GradScaler (no autocast: what the scaler itself costs)."""
    return _zosam(grad_scaler=torch.amp.GradScaler(params[0].device.type))(params, args, masks)


def _zosam_fraction(params, args, masks):
    return _zosam(zo_batch_fraction=args.zo_batch_fraction)(params, args, masks)


def _family(cls, **kw):
    """A SAM-family optimizer at its paper's defaults (README, "The SAM family")."""
    def make(params, args, masks):
        if cls in (ZOLookSAM, ZOSSAM):
            kw["n_dirs"] = args.n_dirs
        return cls(params, torch.optim.SGD, masks=masks, **kw, **BASE)
    return make


METHODS = {
    "sgd": lambda params, args, masks: torch.optim.SGD(params, **BASE),
    "sam": lambda params, args, masks: SAM(params, torch.optim.SGD, rho=0.05, masks=masks, **BASE),
    "zosam": _zosam(),
    "zosam-unfused": _zosam(backend="unfused"),
    "zosam-frac": _zosam_fraction,
    "zosam-bf16": _zosam(zo_autocast=torch.bfloat16),
    # the loop's options, one at a time (README, "In your training loop"): what each costs
    "zosam-no-crn": _zosam(common_random_numbers=False),
    "zosam-clip": _zosam(max_grad_norm=1.0),
    "zosam-scaler": _zosam_scaler,
    "zosam-micro4": _zosam(micro_batches=4),
    "esam": _family(ESAM, rho=0.05, beta=0.6, gamma=0.5),
    "looksam": _family(LookSAM, rho=0.05, k=5, alpha=0.7),
    "gsam": _family(GSAM, rho=0.05, alpha=0.02),
    "ssam-f": _family(SSAM, rho=0.1, sparsity=0.5),
    "ssam-d": _family(SSAM, rho=0.1, sparsity=0.5, mask="dynamic", total_steps=78000),
    "zolooksam": _family(ZOLookSAM, rho=0.05, k=5),
    "zossam": _family(ZOSSAM, rho=0.05, sparsity=0.5),
}
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
        self.forward_samples = 0

    def _on_forward(self, module, args, out):
        self.forward += 1
        self.forward_samples += out.shape[0]
        if out.requires_grad:
            out.register_hook(self._on_backward)

    def _on_backward(self, grad):
        self.backward += 1


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
        self.opt = METHODS[method](list(self.model.parameters()), args, masks)
        # plain torch optimizers get the masks applied around their step
        self.plain = not isinstance(self.opt, SharpnessAwareOptimizer)
        self.masks = Masks(Layout(self.model.parameters()), masks) if self.plain else None
        if self.plain:
            self.masks.mask_params_()
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
        self.masks.mask_grads_()
        self.opt.step()
        self.masks.mask_params_()
        return loss.detach()
