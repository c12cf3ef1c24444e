"""Writes tests/data/legacy_checkpoints.pt: for every member of the family, a small model's
and optimizer's state_dict after 3 steps, and the model after 3 more steps.
It was run once, at commit 245faba (the optimizer family before the engine
redesign), so test_checkpoint_compat.py checks that today's optimizers load
that code's checkpoints and continue them bit for bit. Kept to say how the
file was made; running it again would write today's code's checkpoints."""
import copy
import pathlib

import torch
import torch.nn.functional as F

import zosam_kernels as zk

PATH = pathlib.Path(__file__).parent / "data" / "legacy_checkpoints.pt"
STEPS = 3
BASE = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
CASES = {
    "sam": ("SAM", dict(rho=0.1)),
    "sam-adaptive": ("SAM", dict(rho=0.5, adaptive=True)),
    "zosam": ("ZOSAM", dict(rho=0.1, delta=1e-2, n_dirs=2, seed=3)),
    "zosam-adaptive": ("ZOSAM", dict(rho=0.5, delta=1e-2, n_dirs=2, seed=3, adaptive=True)),
    "zosam-frac": ("ZOSAM", dict(rho=0.1, delta=1e-2, n_dirs=2, seed=3, zo_batch_fraction=0.5)),
    "esam": ("ESAM", dict(rho=0.1, beta=0.6, gamma=0.5, seed=2)),
    "looksam": ("LookSAM", dict(rho=0.1, k=2, alpha=0.7)),
    "gsam": ("GSAM", dict(rho=0.1, alpha=0.3, rho_min=0.01)),
    "ssam-f": ("SSAM", dict(rho=0.1, sparsity=0.5, update_interval=2)),
    "ssam-d": ("SSAM", dict(rho=0.1, sparsity=0.5, mask="dynamic", update_interval=2, total_steps=6)),
    "zolooksam": ("ZOLookSAM", dict(rho=0.1, k=2, delta=1e-2, n_dirs=2, seed=4)),
    "zossam": ("ZOSSAM", dict(rho=0.1, sparsity=0.5, update_interval=2, delta=1e-2, n_dirs=2, seed=5)),
}


def problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 3))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    masks = {model[0].weight: torch.rand(8, 6) < 0.6, model[3].weight: torch.rand(3, 8) < 0.6}
    return model, x, y, masks


def closure_of(model, x, y):
    def closure(indices=None):
        xi, yi = (x, y) if indices is None else (x[indices], y[indices])
        return F.cross_entropy(model(xi), yi, reduction="none")
    return closure


def main():
    out = {}
    for name, (cls, kw) in CASES.items():
        model, x, y, masks = problem()
        opt = getattr(zk, cls)(model.parameters(), torch.optim.SGD, masks=masks, **kw, **BASE)
        closure = closure_of(model, x, y)
        for _ in range(STEPS):
            opt.step(closure)
        saved = {"model": {k: v.clone() for k, v in model.state_dict().items()},
                 "opt": copy.deepcopy(opt.state_dict())}  # not views of live state
        for _ in range(STEPS):
            opt.step(closure)
        out[name] = dict(cls=cls, kwargs=kw, x=x, y=y, masks=[m.clone() for m in masks.values()],
                         after={k: v.clone() for k, v in model.state_dict().items()}, **saved)
    torch.save(out, PATH)


if __name__ == "__main__":
    main()
