"""zosam-train --diagnostics and --corrupt: the instruments of
zosam_kernels.diagnostics run on a training run, at chosen epochs.

- gradvar: variance of the mini-batch gradient at the epoch's weights;
- hessian: top Hessian eigenvalue (power iteration) and trace (Hutchinson);
- landscape: 1-D and 2-D loss slices along filter-normalised directions
  (PNG and JSON beside the run's outputs);
- ascent: cos(ε, ∇L(θ)) of the optimizer's perturbation, the loss rise
  L(θ + ε) − L(θ), and α = cos(prior, ∇L(θ)) of the momentum and of the
  previous step's gradient, on the first --diagnostics-batches steps of the
  epoch (SAM family only).

The first three use the same --diagnostics-batches training batches of
--batch-size, drawn by a generator of their own (seeded by the run's seed
and the epoch) with torch's generators forked, and every instrument restores
the weights, BatchNorm statistics and generators: a run with diagnostics
follows the same trajectory as one without. The loss measured is the plain
cross-entropy (no label smoothing), on the active weights of the masks.
"""
import json
import math
import os

import torch
import torch.nn.functional as F

from ..diagnostics import (CorruptedDataset, gradient_variance, hessian_trace, landscape_1d, landscape_2d,
                           plot_landscape, step_with_ascent_probe, top_eigenvalue)
from ..diagnostics.common import active_parameters, count_active

DIAGNOSTICS = ("gradvar", "hessian", "landscape", "ascent")


def cross_entropy(model, x, y):
    return F.cross_entropy(model(x), y)


class Probes:
    """The diagnostics of a run: which, at which epochs, on which batches."""

    def __init__(self, run):
        self.run, args = run, run.args
        self.names = args.diagnostics
        self.epochs = args.diagnostics_epochs

    def due(self, epoch, total_epochs):
        return bool(self.names) and (epoch in self.epochs or ("last" in self.epochs and epoch == total_epochs))

    def _masks(self):
        masking = self.run.sparsity.masking
        return None if masking is None else masking.param_masks()

    def _batches(self, epoch):
        run, args = self.run, self.run.args
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed * 100003 + epoch)     # augmentation draws from the global generator
            loader = torch.utils.data.DataLoader(run.data.train, args.batch_size, shuffle=True, drop_last=True,
                                                 generator=torch.Generator().manual_seed(args.seed + epoch))
            batches = []
            for x, y in loader:
                batches.append((x.to(run.device), y.to(run.device)))
                if len(batches) == args.diagnostics_batches:
                    break
        return batches

    def step(self, closure):
        """One optimizer step of an epoch being probed: (its return value, the ascent's measures)."""
        run = self.run
        return step_with_ascent_probe(run.optimizer, closure, run.model, self._masks())

    def measure(self, epoch, ascent_steps):
        """The diagnostics of this epoch, for its metrics row (landscape files written)."""
        run, out = self.run, self.run.args.out
        model, masks, batches = run.model, self._masks(), self._batches(epoch)
        found = {}
        if "gradvar" in self.names:
            found["gradvar"] = gradient_variance(model, cross_entropy, batches, masks)
        if "hessian" in self.names:
            top = top_eigenvalue(model, cross_entropy, batches, masks, iters=run.args.hessian_iters,
                                 seed=run.args.seed)
            trace = hessian_trace(model, cross_entropy, batches, masks, samples=run.args.hessian_samples,
                                  seed=run.args.seed)
            found["hessian"] = {"top_eigenvalue": top["eigenvalue"], "iterations": top["iterations"],
                                "converged": top["converged"],
                                "trace": trace["trace"], "trace_std_error": trace["std_error"]}
        if "landscape" in self.names:
            found["landscape"] = {}
            for dims, slice_ in (("1d", landscape_1d), ("2d", landscape_2d)):
                result = slice_(model, cross_entropy, batches, masks, points=run.args.landscape_points,
                                seed=run.args.seed)
                stem = os.path.join(out, f"landscape_e{epoch}_{dims}")
                with open(stem + ".json", "w") as f:
                    json.dump(result, f)
                plot_landscape(result, stem + ".png", title=f"epoch {epoch}: {run.args.optimizer}, "
                                                           f"{run.args.sparse} density {run.sparsity.density():.3g}")
                found["landscape"][dims] = os.path.basename(stem) + ".png"
        if "ascent" in self.names:
            active = count_active(active_parameters(model, masks))
            found["ascent"] = {name: _mean([step[name] for step in ascent_steps])
                               for name in ("cosine", "loss_rise", "grad_norm", "alpha_momentum", "alpha_gradient")}
            found["ascent"].update(steps=len(ascent_steps), random_direction=math.sqrt(2 / (math.pi * active)))
        return found


def _mean(values):
    """The mean of the steps that have the measure (a prior is missing on the first step)."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def corrupted_sets(data, names, seed):
    """(corruption, severity, the test set under it) for every corruption in `names`, severities 1-5."""
    for name in names:
        for severity in range(1, 6):
            yield name, severity, CorruptedDataset(data.test, data.mean, data.std, name, severity, seed=seed)
