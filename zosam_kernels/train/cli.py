"""zosam-train: train a (sparse) network with any optimizer of the package and
record what a paper's table needs: accuracy per epoch, epochs to a target
accuracy, time per epoch, robustness on CIFAR-10-C.

    zosam-train --data cifar10 --data-dir ~/data --model resnet32 --sparse rigl \\
        --density 0.1 --optimizer zosam --epochs 160 --out runs/rigl-zosam-0.1

The defaults are the CIFAR recipe of the sparse-training papers: SGD with
momentum 0.9 and weight decay 5e-4, batch 128, LR 0.1 with a cosine decay,
ERK layer densities, topology updates every 100 steps.
"""
import argparse
import importlib
import json
import os
import platform
import subprocess
import sys

import torch

from ..models import MODELS, SIGNAL_MODELS
from ..optim.family import FAMILY
from .. import sparse
from ..diagnostics import CORRUPTIONS
from .build import SPARSE_INITS, SPARSE_METHODS, check_optimizer
from .datasets import DATASETS
from .outputs import write_json
from .probes import DIAGNOSTICS

# options that change how a run executes or what it measures, not its trajectory:
# free to differ on --resume, and not part of a configuration for zosam-report
EXECUTION = {"out", "resume", "stop_after", "save_every", "workers", "progress", "cifar10c", "eval_batch_size",
             "diagnostics", "diagnostics_epochs", "diagnostics_batches", "corrupt", "hessian_iters",
             "hessian_samples", "landscape_points"}

EPILOG = """\
outputs in --out:
  config.json     every resolved option, versions, device
  metrics.jsonl   one JSON object per epoch: epoch, round, round_epoch, train_loss,
                  train_acc (of the gradient pass: at θ + ε for the SAM family),
                  test_loss, test_acc (%), val_loss, val_acc (mnist1d's validation
                  split, labels as noisy as train's), fit_clean, fit_noisy (with
                  --label-noise, on synthetic and mnist1d: accuracy % in eval mode
                  against the given labels of the training examples whose label
                  the noise kept / replaced), lr, density (of the masked weights),
                  density_all (of all trainable weights), epoch_s, eval_s, images_per_s
  summary.json    final_test_acc, best_test_acc, best_epoch, epochs_to (target
                  accuracy -> first epoch reaching it), best_val_acc, best_val_epoch
                  (the first epoch of the highest val_acc), test_acc_at_best_val,
                  final_fit_clean, final_fit_noisy, final_density, total_s,
                  cifar10c (per corruption and severity, and the mean); complete,
                  diverged_at (the epoch whose weights were no longer finite: the run
                  stopped there, and summary.json describes the epochs before)
  checkpoint.pt   everything a --resume needs, rewritten after every epoch
  curves.png      loss and accuracy per epoch

LTH trains --lth-rounds rounds that each prune 1 - density^(1/rounds) of the
remaining weights and rewind to the initial weights, then a last round at the
target density; every round has --epochs epochs, and summary.json describes
the last one."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in --help (a required one has none), and the epilog's line breaks kept."""

    def _get_help_string(self, action):
        return action.help if action.required else super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Errors on one line: argparse's would print the whole usage (a dozen lines) first."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (zosam-train --help lists the options)\n")


# what building a run raises for bad input (a missing dataset, a malformed file, an absent
# package): the message names the option and what to do, so it is printed alone
USER_ERRORS = (ValueError, OSError, ImportError)


def _model(name):
    if name in MODELS or name in SIGNAL_MODELS or (name.startswith("timm:") and len(name) > len("timm:")):
        return name
    raise argparse.ArgumentTypeError(f"{name!r}: choose from {', '.join(sorted(MODELS))}, "
                                     f"{', '.join(SIGNAL_MODELS)} (1-D) or timm:<name>")


def _json_object(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object is needed, e.g. '{{\"img_size\": 32}}', got {text!r}")
    return value


def _targets(text):
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated accuracies in %, e.g. 80,90, got {text!r}") from None


def _names(choices, allow_all=False):
    def parse(text):
        names = [n.strip() for n in text.split(",") if n.strip()]
        if allow_all and names == ["all"]:
            return list(choices)
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"{unknown or text!r}: choose from {', '.join(choices)}"
                                             + (" (or all)" if allow_all else ""))
        return names
    return parse


def _epochs(text):
    try:
        return [t.strip() if t.strip() == "last" else int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated epochs or 'last', e.g. 1,80,last, got {text!r}") from None


def parser():
    p = _Parser(prog="zosam-train", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=_HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", default="synthetic", choices=DATASETS,
                   help="synthetic: class templates plus noise; digits: scikit-learn's 8x8 digits at "
                        "32x32; mnist1d: MNIST-1D's 1-D signals, generated (train, validation and test "
                        "splits; --model mlp1d or cnn1d); cifar10/cifar100: the official python files in "
                        "--data-dir; imagefolder: --data-dir/train and --data-dir/val (ImageNet layout)")
    g.add_argument("--data-dir", default=None, help="where the dataset lies (never downloaded)")
    g.add_argument("--train-size", type=int, default=None, help="use the first N training images")
    g.add_argument("--test-size", type=int, default=None, help="use the first N test images")
    g.add_argument("--val-size", type=int, default=None,
                   help="mnist1d: validation examples (default 1000; train and test default to 3000, 5000)")
    g.add_argument("--label-noise", type=float, default=0.0,
                   help="fraction of training (and mnist1d's validation) labels replaced by a random "
                        "other class")
    g.add_argument("--image-size", type=int, default=224, help="imagefolder: crop size")
    g.add_argument("--cifar10c", default=None, metavar="DIR",
                   help="after training, accuracy on every corruption file of CIFAR-10-C in DIR")
    g.add_argument("--workers", type=int, default=None,
                   help="data-loading processes; default 0 on the CPU, 4 on CUDA")
    g = p.add_argument_group("model and sparsity")
    g.add_argument("--model", type=_model, default="resnet32",
                   help=f"{', '.join(sorted(MODELS))}, {', '.join(SIGNAL_MODELS)} (1-D, for mnist1d), "
                        "or timm:<name> (e.g. timm:deit_tiny_patch16_224)")
    g.add_argument("--model-kwargs", type=_json_object, default={},
                   help="JSON object passed to timm.create_model, e.g. '{\"img_size\": 32, \"patch_size\": 4}', "
                        "or to a 1-D model: '{\"width\": 1024, \"depth\": 2}'")
    g.add_argument("--sparse", default="dense", choices=SPARSE_METHODS, help="sparse-training method")
    g.add_argument("--density", type=float, default=None,
                   help="fraction of the masked weights kept (default 1 for dense, else 0.1)")
    g.add_argument("--distribution", default="erk", choices=sparse.DISTRIBUTIONS,
                   help="layer densities of the random and dynamic methods")
    g.add_argument("--sparse-init", default="standard", choices=SPARSE_INITS,
                   help="fan-in: scale the first topology's weights to each unit's active fan-in, "
                        "restoring the dense init's signal variance (Evci et al. 2022)")
    g.add_argument("--update-interval", type=int, default=100,
                   help="set/dsr/rigl/mest: steps between topology updates")
    g.add_argument("--lth-rounds", type=int, default=1, help="lth: pruning rounds before the last round")
    g = p.add_argument_group("optimizer (options left unset take the method's default, see README)")
    g.add_argument("--optimizer", default="zosam", choices=list(FAMILY),
                   help="every one wraps SGD (momentum, weight decay) at its paper's defaults")
    g.add_argument("--epochs", type=int, default=160, help="epochs (per round, for lth)")
    g.add_argument("--batch-size", type=int, default=128, help="training images per step")
    g.add_argument("--eval-batch-size", type=int, default=512, help="images per evaluation batch")
    g.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay")
    g.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up before the cosine")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="of the training loss")
    g.add_argument("--rho", type=float, default=None, help="SAM family: perturbation radius")
    g.add_argument("--delta", type=float, default=None, help="zeroth-order: finite-difference step")
    g.add_argument("--n-dirs", type=int, default=None, help="zeroth-order: directions per step")
    g.add_argument("--zo-batch-fraction", type=float, default=None,
                   help="zosam: share of the batch in the zeroth-order passes")
    g.add_argument("--zo-bf16", action="store_true", help="zeroth-order passes under bf16 autocast")
    g.add_argument("--bf16", action="store_true", help="every forward pass under bf16 autocast")
    g.add_argument("--adaptive", action="store_const", const=True, default=None,
                   help="ASAM-style adaptive perturbation")
    g.add_argument("--k", type=int, default=None, help="looksam/zolooksam: full step every k steps")
    g.add_argument("--alpha", type=float, default=None,
                   help="looksam: gradient mixing; gsam: ascent; rwp: the perturbed gradient's weight")
    g.add_argument("--beta", type=float, default=None, help="esam: share of weights perturbed")
    g.add_argument("--gamma", type=float, default=None, help="esam: share of samples in the update")
    g.add_argument("--sam-sparsity", type=float, default=None, help="ssam/zossam: perturbation sparsity")
    g.add_argument("--cosine", type=float, default=None, help="oracle: cos(eps, grad L) of the ascent")
    g.add_argument("--prior", default=None, choices=("momentum", "gradient"),
                   help="zosam-guided: the free first-order prior the finite differences run along")
    g.add_argument("--sign", type=int, default=None, choices=(-1, 1),
                   help="msam: eps against (-1, the published default) or along (+1) the momentum")
    g.add_argument("--radius-scale", default=None, choices=("absolute", "relative"),
                   help="random-direction, zosam, zosam-coin, msam: eps of norm rho, or rho times each tensor's "
                        "RMS per weight")
    g.add_argument("--perturb", default=None,
                   help="sam, sam-partial, sam-on, zosam, ...: perturb only these tensors: norm (the normalization "
                        "layers), last:K (the last K modules with parameters); the first backward stops below them")
    g.add_argument("--draws", type=int, default=None, help="rwp, lpf-sgd: noise draws per step (LPF-SGD's M)")
    g.add_argument("--noise-batch", default=None, choices=("split", "same"),
                   help="rwp, lpf-sgd: each gradient on its own part of the batch, or all on the whole batch")
    g.add_argument("--max-grad-norm", type=float, default=None,
                   help="SAM family: clip the gradient's global norm")
    g = p.add_argument_group("diagnostics and robustness (none of them changes the training trajectory)")
    g.add_argument("--diagnostics", type=_names(DIAGNOSTICS), default=[],
                   help=f"comma-separated, from {', '.join(DIAGNOSTICS)}: gradient variance, top Hessian "
                        "eigenvalue and trace, 1-D/2-D loss landscape, cos(eps, grad L) of the optimizer")
    g.add_argument("--diagnostics-epochs", type=_epochs, default=["last"],
                   help="the epochs to measure at (global epoch numbers; 'last': the final epoch)")
    g.add_argument("--diagnostics-batches", type=int, default=8,
                   help="training batches the diagnostics average over (and probed steps for ascent)")
    g.add_argument("--hessian-iters", type=int, default=20, help="hessian: power iterations at most")
    g.add_argument("--hessian-samples", type=int, default=10, help="hessian: Hutchinson samples of the trace")
    g.add_argument("--landscape-points", type=int, default=11,
                   help="landscape: points per axis (1-D: this many; 2-D: its square), over [-1, 1]")
    g.add_argument("--corrupt", type=_names(list(CORRUPTIONS), allow_all=True), default=[],
                   help=f"after training, test accuracy under these corruptions at severities 1-5 "
                        f"(CIFAR-10-C's, computed in torch on any test set): {', '.join(CORRUPTIONS)} or all")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="weights, masks, data order, directions")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--out", required=True, metavar="RUN_DIR", help="directory of the run's outputs")
    g.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    g.add_argument("--stop-after", type=int, default=None, metavar="EPOCH",
                   help="stop after this epoch, leaving a checkpoint to --resume (time-limited jobs)")
    g.add_argument("--save-every", type=int, default=1, metavar="EPOCHS",
                   help="write the checkpoint and the curves every this many epochs, and always at the "
                        "last one and at a lottery round's end (short runs: writing them each epoch can "
                        "cost as much as the training; a resume replays the epochs since)")
    g.add_argument("--targets", type=_targets, default=[50.0, 80.0, 90.0],
                   help="test accuracies (%%) whose first epoch summary.json's epochs_to gives")
    g.add_argument("--progress", default="auto", choices=("auto", "on", "off"),
                   help="progress bar per epoch (auto: on a terminal only)")
    return p


def parse_args(argv=None, p=None):
    """The resolved options of these command-line arguments, checked as a run checks them."""
    p = p or parser()
    args = p.parse_args(argv)
    _check(p, args)
    return args


def _check(p, args):
    """Errors that name the option, before anything is built."""
    if args.density is None:
        args.density = 1.0 if args.sparse == "dense" else 0.1
    if args.sparse == "dense" and args.density != 1.0:
        p.error(f"--density {args.density} with --sparse dense: choose a sparse method, e.g. --sparse rigl")
    if args.sparse != "dense" and not 0 < args.density < 1:
        p.error(f"--density must be in (0, 1) for --sparse {args.sparse}, got {args.density}")
    if args.sparse_init != "standard" and args.sparse in ("dense", "lth"):
        p.error(f"--sparse-init {args.sparse_init} scales a sparse topology's first weights; --sparse "
                f"{args.sparse} has {'none' if args.sparse == 'dense' else 'the dense init to rewind to'}: "
                "use it with random, snip, grasp, synflow, set, dsr, rigl or mest")
    positive = {"epochs": args.epochs, "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size,
                "update_interval": args.update_interval, "lth_rounds": args.lth_rounds,
                "image_size": args.image_size}
    for name, value in positive.items():
        if value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("train_size", "test_size", "val_size", "stop_after", "save_every"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.diagnostics_batches < 2:
        p.error(f"--diagnostics-batches must be >= 2 (a variance needs two batches), got {args.diagnostics_batches}")
    if args.hessian_iters < 1 or args.hessian_samples < 2 or args.landscape_points < 2:
        p.error("--hessian-iters must be >= 1, --hessian-samples and --landscape-points >= 2")
    if args.corrupt and args.data in ("synthetic", "mnist1d"):
        p.error(f"--corrupt: the {args.data} data are not images in [0, 1]; use --data digits, cifar10, ...")
    if args.cifar10c and args.data == "mnist1d":
        p.error("--cifar10c: CIFAR-10-C holds images; a model trained on --data mnist1d takes 1-D signals")
    if "ascent" in args.diagnostics and args.optimizer == "sgd":
        p.error("--diagnostics ascent: SGD has no perturbation ε; choose a SAM-family --optimizer")
    if not 0 <= args.label_noise < 1:
        p.error(f"--label-noise must be in [0, 1), got {args.label_noise}")
    if not 0 <= args.label_smoothing < 1:
        p.error(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.lr <= 0 or args.warmup_epochs < 0 or args.weight_decay < 0:
        p.error("--lr must be > 0, --warmup-epochs and --weight-decay >= 0")
    if args.data in ("cifar10", "cifar100", "imagefolder") and args.data_dir is None:
        p.error(f"--data {args.data} needs --data-dir (the folder that holds the dataset; it is never downloaded)")
    if args.data not in ("cifar10", "cifar100", "imagefolder") and args.data_dir is not None:
        p.error(f"--data-dir: --data {args.data} reads no folder; did you mean --data cifar10?")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.workers is None:
        args.workers = 4 if args.device.startswith("cuda") else 0
    if args.cifar10c and not os.path.isdir(args.cifar10c):
        p.error(f"--cifar10c {args.cifar10c}: no such directory (the official CIFAR-10-C folder of "
                f"<corruption>.npy files and labels.npy)")
    checkpoint = os.path.join(args.out, "checkpoint.pt")
    if args.resume and not os.path.exists(checkpoint):
        p.error(f"--resume: no checkpoint at {checkpoint}")
    if not args.resume and os.path.exists(checkpoint):
        p.error(f"--out {args.out} holds a run already: add --resume to continue it, or choose another --out")
    try:
        check_optimizer(args)
    except ValueError as e:
        p.error(str(e))


def _version(module):
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


def _git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _config(args, run):
    device = torch.device(args.device)
    return {
        "args": {k: v for k, v in vars(args).items()},
        "command": sys.argv,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": _version("torchvision"), "timm": _version("timm"),
                     "numpy": _version("numpy"), "zosam_kernels_commit": _git_commit()},
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"),
        "data": {"train_images": len(run.data.train), "test_images": len(run.data.test),
                 "val_images": None if run.data.val is None else len(run.data.val),
                 "num_classes": run.data.num_classes, "image_shape": list(run.data.image_shape)},
        "steps_per_epoch": run.steps_per_epoch,
        "parameters": sum(p.numel() for p in run.model.parameters()),
    }


def _check_resume(args, saved):
    now = {k: v for k, v in vars(args).items() if k not in EXECUTION}
    before = {k: v for k, v in saved["config"]["args"].items() if k not in EXECUTION}
    differ = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
    if differ:
        changes = ", ".join(f"--{k.replace('_', '-')} {before.get(k)!r} -> {now.get(k)!r}" for k in differ)
        raise SystemExit(f"zosam-train: --resume: the options differ from the run in {args.out}: {changes}; "
                         f"resume with the same options, or start a new --out")


def train(argv=None):
    """Run zosam-train with these command-line arguments; returns summary.json's content."""
    from .loop import Run   # after parsing: --help needs no dataset or model code
    p = parser()
    args = parse_args(argv, p)
    state = None
    if args.resume:
        # our own file: it holds generator states and optimizer options besides tensors
        # on the CPU: generator states must be CPU tensors; load_state_dict moves the rest
        state = torch.load(os.path.join(args.out, "checkpoint.pt"), map_location="cpu", weights_only=False)
        _check_resume(args, state)
    try:
        run = Run(args)   # the data and the model
    except USER_ERRORS as e:
        p.error(str(e))
    os.makedirs(args.out, exist_ok=True)   # only now: a refused run leaves nothing behind
    run.config = _config(args, run)
    write_json(os.path.join(args.out, "config.json"), run.config)
    summary = run.fit(state)
    print(json.dumps({k: summary[k] for k in ("final_test_acc", "best_test_acc", "epochs_to", "total_s")}))
    return summary


def main(argv=None):
    """The console script: its return value would become the exit status."""
    train(argv)


if __name__ == "__main__":
    main()
