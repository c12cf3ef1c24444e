"""What a run of zosam-train is made of, built from its resolved options: the
model, the sparse-training method (a Masking plus the object that changes
it), and the optimizer (recipes.py) with the masks attached as the README
shows.
"""
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import sparse
from ..models import MODELS, SIGNAL_MODELS
from ..optim.family import FAMILY
from ..recipes import make_optimizer, options_of

STATIC = ("snip", "grasp", "synflow")          # pruning at initialisation
DYNAMIC = {"set": sparse.SET, "dsr": sparse.DSR, "rigl": sparse.RigL, "mest": sparse.MEST}
SPARSE_METHODS = ("dense", "lth", "random", *STATIC, *DYNAMIC)   # random: a fixed random topology
SPARSE_INITS = ("standard", "fan-in")           # fan-in: sparse.rescale_to_fan_in_ on the first topology
GRASP_SAMPLES_PER_CLASS = 10                    # GraSP's code: 10 samples of each class

# command-line option -> optimizer keyword (None: the option is not given)
OPTIMIZER_OPTIONS = {"rho": "rho", "delta": "delta", "n_dirs": "n_dirs",
                     "zo_batch_fraction": "zo_batch_fraction", "adaptive": "adaptive",
                     "k": "k", "alpha": "alpha", "beta": "beta", "gamma": "gamma",
                     "sam_sparsity": "sparsity", "max_grad_norm": "max_grad_norm",
                     "cosine": "cosine", "prior": "prior", "sign": "sign", "radius_scale": "radius_scale",
                     "draws": "draws", "noise_batch": "batch", "perturb": "perturb"}


def make_model(name, num_classes, model_kwargs, input_shape):
    """A built-in CIFAR network, a 1-D one (SIGNAL_MODELS), or `timm:<name>`
    from timm (not pretrained), for items of `input_shape` ((C, H, W) images,
    (C, L) signals)."""
    signal = name in SIGNAL_MODELS
    if signal != (len(input_shape) == 2):
        takes = "1-D signals (C, L)" if signal else "images (C, H, W)"
        choose = ", ".join(SIGNAL_MODELS) if len(input_shape) == 2 else "an image model"
        raise ValueError(f"--model {name} takes {takes}, but the data's items have shape "
                         f"{tuple(input_shape)}: choose {choose}")
    if signal:
        takes = set(inspect.signature(SIGNAL_MODELS[name]).parameters) - {"num_classes", "input_shape"}
        unknown = sorted(set(model_kwargs) - takes)
        if unknown:
            raise ValueError(f"--model-kwargs {unknown}: not an option of --model {name}; "
                             f"it takes {', '.join(sorted(takes))}")
        return SIGNAL_MODELS[name](num_classes=num_classes, input_shape=tuple(input_shape), **model_kwargs)
    if not name.startswith("timm:"):
        if model_kwargs:
            raise ValueError(f"--model-kwargs applies to timm and 1-D models only, not to {name!r}")
        return MODELS[name](num_classes=num_classes)
    try:
        import timm
    except ImportError:
        raise ImportError(f"--model {name}: timm is not installed; pip install timm "
                          f"(or pip install 'zosam_kernels[timm]')") from None
    timm_name = name[len("timm:"):]
    if not timm.is_model(timm_name):
        raise ValueError(f"--model {name}: timm has no model {timm_name!r} "
                         f"(timm.list_models('{timm_name[:4]}*') lists similar names)")
    return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **model_kwargs)


@dataclass
class Sparsity:
    """The sparse-training method of a run: `masking` (None for dense), and what
    changes it: `schedule` (dynamic methods, stepped after every optimizer step)
    or `lottery` (LTH, stepped too, pruned at the end of every round but the last)."""
    masking: object = None
    schedule: object = None
    lottery: object = None

    def step(self):
        if self.schedule is not None:
            self.schedule.step()
        if self.lottery is not None:
            self.lottery.step()

    def density(self, of="masked"):
        return 1.0 if self.masking is None else self.masking.density(of)

    def state_dict(self):
        return {k: getattr(self, k).state_dict() for k in ("masking", "schedule", "lottery")
                if getattr(self, k) is not None}

    def load_state_dict(self, state):
        for k, v in state.items():
            getattr(self, k).load_state_dict(v)


def make_sparsity(args, model, total_steps):
    """The Masking and schedule of `args.sparse` (before any pruning at init)."""
    method = args.sparse
    if method == "dense":
        return Sparsity()
    if method == "lth":
        masking = sparse.Masking(model, 1.0, args.distribution, seed=args.seed)
        fraction = 1 - args.density ** (1 / args.lth_rounds)   # R equal rounds reach the density
        return Sparsity(masking, lottery=sparse.LotteryTicket(masking, prune_fraction=fraction))
    init = "dense" if method in STATIC else "random"
    masking = sparse.Masking(model, args.density, args.distribution, init=init, seed=args.seed)
    if method in DYNAMIC:
        return Sparsity(masking, schedule=DYNAMIC[method](
            masking, update_interval=args.update_interval, total_steps=total_steps))
    return Sparsity(masking)


def first_topology(args, sparsity, loader, data):
    """The topology training starts from: pruned at initialisation for SNIP, GraSP and
    SynFlow; then, with --sparse-init fan-in, its weights scaled to each unit's active
    fan-in (sparse/fan_in.py)."""
    if args.sparse in STATIC:
        prune_at_init(args, sparsity, loader, data)
    if args.sparse_init == "fan-in":
        sparse.rescale_to_fan_in_(sparsity.masking)


def prune_at_init(args, sparsity, loader, data):
    """Score the dense model on the first training batches and keep the budget
    (SNIP: one batch; GraSP: enough for 10 samples of every class; SynFlow: no
    data, only the input shape)."""
    num_classes = data.num_classes
    kw, batches = {}, []
    if args.sparse == "synflow":
        kw["input_shape"] = tuple(data.image_shape)
    else:
        wanted = 1 if args.sparse == "snip" else math.ceil(
            2 * GRASP_SAMPLES_PER_CLASS * num_classes / args.batch_size)   # 2x: classes are not balanced
        for x, y in loader:
            batches.append((x.to(args.device), y.to(args.device)))
            if len(batches) == wanted:
                break
    if args.sparse == "grasp":
        seen = torch.cat([y for _, y in batches]).bincount(minlength=num_classes)
        kw["samples_per_class"] = max(1, min(GRASP_SAMPLES_PER_CLASS, int(seen.min())))
    sparse.prune_at_init_(sparsity.masking, args.sparse, F.cross_entropy, batches, **kw)


def optimizer_arguments(args, masking=None, total_steps=1):
    """What make_optimizer gets for `args.optimizer`: (base optimizer kwargs, options),
    every option given on the command line passed on. An option the optimizer
    does not take is a ValueError that names it."""
    name = args.optimizer
    options = {kw: getattr(args, opt) for opt, kw in OPTIMIZER_OPTIONS.items()
               if getattr(args, opt) is not None}
    takes = options_of(name)
    if name != "sgd":
        options["masks"] = masking
        if "seed" in takes:
            options["seed"] = args.seed
        if FAMILY[name].needs_total_steps:
            options["total_steps"] = total_steps
        if args.zo_bf16:
            options["zo_autocast"] = torch.bfloat16
    given = {opt for opt, kw in OPTIMIZER_OPTIONS.items() if kw in options and kw not in takes}
    if args.zo_bf16 and "zo_autocast" not in takes:
        given.add("zo_bf16")
    if given:
        flags = ", ".join("--" + g.replace("_", "-") for g in sorted(given))
        flags_taken = sorted("--" + opt.replace("_", "-") for opt, kw in OPTIMIZER_OPTIONS.items() if kw in takes)
        raise ValueError(f"{flags}: not an option of --optimizer {name}; it takes "
                         f"{', '.join(flags_taken) or 'only --lr, --momentum, --weight-decay'}")
    return dict(lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay), options


def check_optimizer(args):
    """Build `args.optimizer` over one stand-in parameter, so that a bad value
    (--rho -1, --n-dirs 0) is refused before any data or model is made; the
    error names the command-line option."""
    base, options = optimizer_arguments(args)
    try:
        stand_in = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))   # a selection resolves
        if "model" in options_of(args.optimizer):
            options["model"] = stand_in
        make_optimizer(args.optimizer, stand_in.parameters(), torch.optim.SGD, base, **options)
    except (ValueError, TypeError) as e:
        message = str(e)
        for opt, kw in OPTIMIZER_OPTIONS.items():   # "n_dirs must be ..." -> "--n-dirs must be ..."
            if message.startswith(kw + " "):
                message = "--" + opt.replace("_", "-") + message[len(kw):]
                break
        raise ValueError(f"--optimizer {args.optimizer}: {message}") from None


def make_optimizer_for(args, model, sparsity, total_steps):
    """The optimizer of `args.optimizer` over the model, SGD with momentum and
    weight decay inside, every option given on the command line passed on."""
    base, options = optimizer_arguments(args, sparsity.masking, total_steps)
    if "model" in options_of(args.optimizer):   # a selection of tensors (--perturb norm) reads the model
        options["model"] = model
    opt = make_optimizer(args.optimizer, model.parameters(), torch.optim.SGD, base, **options)
    if sparsity.masking is not None:
        sparsity.masking.attach(opt)
    return opt
