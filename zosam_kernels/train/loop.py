"""The training run behind zosam-train: epochs of optimizer steps over a
shuffled loader, an evaluation after each, and a checkpoint that holds every
state the next epoch depends on, so that a resumed run continues the
uninterrupted one bit for bit (on the CPU).

What the checkpoint holds, and why each is needed:
- model, optimizer (base optimizer state, step counter that drives the
  direction seeds, every option's state), LR scheduler;
- the sparse method (masks, the generator of random growth, schedule
  counters and DSR's threshold, the lottery ticket's saved weights);
- the loader's generator (the order of the next epoch, and the seeds of its
  workers) and torch's global generators (augmentation in the main process,
  dropout, and the optimizers' common random numbers draw from them);
- the metrics so far (rewritten to metrics.jsonl on resume, so a line of an
  epoch that was never checkpointed does not survive).

LTH trains `lth_rounds + 1` rounds of `epochs` epochs: every round but the
last ends by pruning and rewinding; the LR schedule starts again each round.
"""
import math
import os
import time

import torch
import torch.nn.functional as F

from ..optim import is_engine
from . import outputs
from .build import first_topology, make_model, make_optimizer_for, make_sparsity
from .datasets import NoisyLabels, cifar10c, load
from .probes import Probes, corrupted_sets


class Diverged(RuntimeError):
    """The weights or buffers are no longer finite. The run stops; its summary.json has
    complete false and diverged_at, so a study counts it as a result, not a crash."""


def lr_factor(step, warmup_steps, total_steps):
    """Linear warm-up from 1/warmup_steps to 1, then half a cosine down to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress))


class Run:
    """One zosam-train run over the resolved options `args` (cli.py)."""

    def __init__(self, args):
        self.args = args
        self.config = None     # config.json's content, set by the caller, kept in the checkpoint
        self.device = torch.device(args.device)
        torch.manual_seed(args.seed)
        self.data = load(args.data, args.data_dir, train_size=args.train_size, test_size=args.test_size,
                         val_size=args.val_size, label_noise=args.label_noise, image_size=args.image_size,
                         seed=args.seed)
        self.loader_generator = torch.Generator().manual_seed(args.seed)
        pin = self.device.type == "cuda"
        if len(self.data.train) < args.batch_size:
            raise ValueError(f"--batch-size {args.batch_size} is larger than the training set "
                             f"({len(self.data.train)} images): the loader drops incomplete batches")
        self.train_loader = torch.utils.data.DataLoader(
            self.data.train, args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers,
            generator=self.loader_generator, pin_memory=pin)
        self.test_loader, self.val_loader, self.fit_loader = (
            None if dataset is None else torch.utils.data.DataLoader(
                dataset, args.eval_batch_size, num_workers=args.workers, pin_memory=pin)
            for dataset in (self.data.test, self.data.val, self._fitted()))
        self.steps_per_epoch = len(self.train_loader)
        self.round_steps = args.epochs * self.steps_per_epoch
        self.rounds = args.lth_rounds + 1 if args.sparse == "lth" else 1

        self.model = make_model(args.model, self.data.num_classes, args.model_kwargs,
                                self.data.image_shape).to(self.device)
        self.sparsity = make_sparsity(args, self.model, self.round_steps)
        self.optimizer = None
        self.probes = Probes(self)
        self.history, self.total_s = [], 0.0

    def _fitted(self):
        """The training set whose fit of clean and of noisy labels is measured every epoch:
        only with label noise, and only where an item is the same at every read (the fit of
        an augmented item is not the fit of the example)."""
        train = self.data.train
        return train if isinstance(train, NoisyLabels) and not self.data.augmented else None

    def _start_round(self):
        """A fresh optimizer and LR schedule (every LTH round starts like the first)."""
        if self.optimizer is None:
            self.optimizer = make_optimizer_for(self.args, self.model, self.sparsity, self.round_steps)
        warmup = self.args.warmup_epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, warmup, self.round_steps))

    # ---- checkpoint -------------------------------------------------------------------
    def state_dict(self):
        return {"config": self.config, "epoch": len(self.history), "history": self.history,
                "total_s": self.total_s, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "sparsity": self.sparsity.state_dict(), "loader_generator": self.loader_generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def save(self):
        path = os.path.join(self.args.out, "checkpoint.pt")
        torch.save(self.state_dict(), path + ".tmp")
        os.replace(path + ".tmp", path)     # a crash while saving leaves the last checkpoint whole

    def resume(self, state):
        self.model.load_state_dict(state["model"])
        # the masks before the optimizer: attaching it applies the masks in force
        self.sparsity.load_state_dict(state["sparsity"])
        self._start_round()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loader_generator.set_state(state["loader_generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.history, self.total_s = state["history"], state["total_s"]

    # ---- one epoch --------------------------------------------------------------------
    def train_epoch(self, bar, ascent=False):
        """(mean training loss, accuracy %, the ascent probe's measures of the first
        --diagnostics-batches steps when `ascent`)."""
        model, opt, args = self.model, self.optimizer, self.args
        plain = not is_engine(opt)
        model.train()
        seen, probed = {}, []
        # loss · samples, correct, samples: summed on the device, read once per epoch (no sync per step)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        for x, y in bar(self.train_loader):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

            def closure(indices=None):
                xs, ys = (x, y) if indices is None else (x[indices], y[indices])
                with torch.autocast(self.device.type, torch.bfloat16, enabled=args.bf16):
                    logits = model(xs)
                seen["logits"], seen["y"] = logits, ys   # the last call of a step: the gradient pass
                return F.cross_entropy(logits.float(), ys, reduction="none",
                                       label_smoothing=args.label_smoothing)

            if plain:
                opt.zero_grad(set_to_none=True)
                loss = closure().mean()
                loss.backward()
                opt.step()
            elif ascent and len(probed) < args.diagnostics_batches:
                loss, measures = self.probes.step(closure)
                probed.append(measures)
            else:
                loss = opt.step(closure)
            self.scheduler.step()
            self.sparsity.step()
            correct = (seen["logits"].argmax(1) == seen["y"]).sum()
            sums[0] += loss.detach().double() * len(y)
            sums[1] += correct
            sums[2] += len(seen["y"])
        loss_sum, correct, count = sums.tolist()
        return loss_sum / (self.steps_per_epoch * args.batch_size), 100 * correct / count, probed

    @torch.no_grad()
    def evaluate(self, loader, per_item=False):
        """Mean cross-entropy (no label smoothing) and accuracy in %; with
        `per_item`, also whether each item was right, in the loader's order."""
        self.model.eval()
        loss, hits = 0.0, []
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.args.bf16):
                logits = self.model(x)
            loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            hits.append((logits.argmax(1) == y).cpu())
        hits = torch.cat(hits)
        result = loss / len(hits), 100 * float(hits.double().mean())
        return (*result, hits) if per_item else result

    def fit_of_labels(self):
        """Accuracy in % against the given labels, in eval mode, of the training examples
        whose label the noise kept and of those it replaced (None: there are none)."""
        hits = self.evaluate(self.fit_loader, per_item=True)[2]
        changed = self.data.train.changed
        return {name: 100 * float(hits[which].double().mean()) if which.any() else None
                for name, which in (("fit_clean", ~changed), ("fit_noisy", changed))}

    # ---- the run ----------------------------------------------------------------------
    def fit(self, resume_state=None):
        args = self.args
        if resume_state is None:
            first_topology(args, self.sparsity, self.train_loader, self.data)
            self._start_round()
        else:
            self.resume(resume_state)
        outputs.rewrite_metrics(args.out, self.history)
        total_epochs = self.rounds * args.epochs
        stop = total_epochs if args.stop_after is None else min(args.stop_after, total_epochs)
        for epoch in range(len(self.history) + 1, stop + 1):
            round_, round_epoch = divmod(epoch - 1, args.epochs)
            t0 = time.perf_counter()
            bar = outputs.progress(f"epoch {epoch}/{total_epochs}", args.progress)
            probing = self.probes.due(epoch, total_epochs)
            train_loss, train_acc, probed = self.train_epoch(bar, probing and "ascent" in args.diagnostics)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            epoch_s = time.perf_counter() - t0
            try:
                self._check_finite(epoch)
            except Diverged:   # a result, not a crash: summary.json says where, and the run stops
                outputs.write_summary(args.out, self.history, self.total_s, args.targets, False,
                                      {"cifar10c": None, "corrupt": None}, self.rounds, diverged_at=epoch)
                raise
            t1 = time.perf_counter()
            test_loss, test_acc = self.evaluate(self.test_loader)
            measured = {}
            if self.val_loader is not None:
                measured["val_loss"], measured["val_acc"] = self.evaluate(self.val_loader)
            if self.fit_loader is not None:
                measured.update(self.fit_of_labels())
            eval_s = time.perf_counter() - t1
            row = {"epoch": epoch, "round": round_, "round_epoch": round_epoch + 1,
                   "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                   "test_acc": test_acc, **measured, "lr": self.optimizer.param_groups[0]["lr"],
                   "density": self.sparsity.density(), "density_all": self.sparsity.density("all"),
                   "epoch_s": epoch_s, "eval_s": eval_s,
                   "images_per_s": self.steps_per_epoch * args.batch_size / epoch_s}
            self.total_s += epoch_s + eval_s
            if probing:
                row["diagnostics"] = self.probes.measure(epoch, probed)
            round_ends = round_epoch + 1 == args.epochs and round_ + 1 < self.rounds
            if round_ends:
                self.sparsity.lottery.prune_and_rewind_()   # the round's ticket: prune, rewind, restart
                self._start_round()
                row["density_next_round"] = self.sparsity.density()
            self.history.append(row)
            # metrics.jsonl gets every epoch; a resume rewrites it back to the checkpoint's history
            if round_ends or epoch == stop or epoch % args.save_every == 0:
                self.save()
                outputs.curves(args.out, self.history, args)
            outputs.append_metrics(args.out, row)
            outputs.print_epoch(row, total_epochs)
        complete = len(self.history) == total_epochs
        robustness = {"cifar10c": self.cifar10c() if complete and args.cifar10c else None,
                      "corrupt": self.robustness(corrupted_sets(self.data, args.corrupt, args.seed))
                      if complete and args.corrupt else None}
        return outputs.write_summary(args.out, self.history, self.total_s, args.targets, complete,
                                     robustness, self.rounds)

    def _check_finite(self, epoch):
        """Diverged weights or buffers (BatchNorm's statistics) are not checkpointed: the
        last checkpoint stays the last good one. (The package's optimizers skip a step
        whose loss is not finite, and put back what its passes moved; SGD does not.)"""
        state = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        if not all(bool(torch.isfinite(t).all()) for t in state):
            raise Diverged(f"epoch {epoch}: the weights or buffers are no longer finite (the training "
                               "diverged); "
                               f"{'the checkpoint of epoch ' + str(epoch - 1) if epoch > 1 else 'no checkpoint'}"
                               f" is kept in {self.args.out}. Try a lower --lr, --warmup-epochs or "
                               f"--max-grad-norm, in a new --out")

    def robustness(self, sets):
        """Accuracy on every (corruption, severity, dataset) of `sets`, and their mean."""
        results = {}
        for corruption, severity, dataset in sets:
            loader = torch.utils.data.DataLoader(dataset, self.args.eval_batch_size,
                                                 num_workers=self.args.workers)
            results.setdefault(corruption, {})[str(severity)] = self.evaluate(loader)[1]
        accs = [a for per in results.values() for a in per.values()]
        return {"accuracy": results, "mean": sum(accs) / len(accs)}

    def cifar10c(self):
        """Accuracy on every corruption file and severity of CIFAR-10-C."""
        if self.data.num_classes != 10:
            raise ValueError(f"--cifar10c: CIFAR-10-C has 10 classes, the model {self.data.num_classes}")
        return self.robustness(cifar10c(self.args.cifar10c, self.data.mean, self.data.std))
