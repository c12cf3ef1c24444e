"""The family at test scale, for the tests that run over every member: each
member of the registry (optim.family.FAMILY) at its `quick` options (what
makes its state matter within a few steps: the papers remake masks every
1950 steps, for example), and variants of some."""
import torch

from zosam_kernels.optim import FAMILY

SGD = dict(lr=0.05, momentum=0.9)
ADAMW = dict(lr=0.01)
ZO = dict(n_dirs=2)

# case: (member, its options, the base optimizer and its options): every member of the registry at
# its quick options (what makes its state matter within a few steps), and variants of some
CASES = {name: (name, member.quick, (torch.optim.SGD, SGD)) for name, member in FAMILY.items() if name != "sgd"}
CASES.update({
    "zosam-unfused": ("zosam", ZO | dict(backend="unfused"), (torch.optim.SGD, SGD)),
    "zosam-adaptive": ("zosam", dict(n_dirs=1, adaptive=True), (torch.optim.AdamW, ADAMW)),
    "looksam-every-step": ("looksam", dict(k=1), (torch.optim.AdamW, ADAMW)),
    "ssam-d": ("ssam-d", FAMILY["ssam-d"].quick, (torch.optim.AdamW, ADAMW)),
    "zolooksam-adaptive": ("zolooksam", dict(k=3, adaptive=True, backend="unfused"), (torch.optim.AdamW, ADAMW)),
    "zossam-dynamic": ("zossam", ZO | dict(mask="dynamic", update_interval=2, total_steps=6, backend="unfused"),
                       (torch.optim.AdamW, ADAMW)),
    "msam-adamw": ("msam", dict(sign=1), (torch.optim.AdamW, ADAMW)),
    "zosam-guided-gradient": ("zosam-guided", dict(n_dirs=0, prior="gradient"), (torch.optim.SGD, SGD)),
    "rwp-same-batch": ("rwp", dict(batch="same", draws=2, rho=0.05), (torch.optim.AdamW, ADAMW)),
})



class Tensors:
    """An option made of the optimizer's own tensors, picked from its parameter list when it is
    built (the partial ascents' perturb=, which a model resolves outside tests)."""

    def __init__(self, pick):
        self.pick = pick


LAST_LAYER = Tensors(lambda params: params[-2:])   # the last Linear's weight and bias
LAST_BIAS = Tensors(lambda params: params[-1:])
CASES.update({   # a partial ascent on the models of the tests: no normalization layer, so the last layer
    "sam-on": ("sam-on", dict(perturb=LAST_LAYER, unscaled=LAST_BIAS), (torch.optim.SGD, SGD)),
    "sam-partial": ("sam-partial", dict(perturb=LAST_LAYER), (torch.optim.SGD, SGD)),
    "zosam-partial": ("zosam", ZO | dict(perturb=LAST_LAYER), (torch.optim.SGD, SGD)),
})
NEEDS_PER_SAMPLE = {c for c, (member, options, _) in CASES.items() if FAMILY[member].needs_indices(options)}


def build(case, params, **options):
    """The optimizer of `case` over params; options override the case's."""
    member, own, (base, base_kwargs) = CASES[case]
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]   # (param groups too)
    own = {k: v.pick(tensors) if isinstance(v, Tensors) else v for k, v in own.items()}
    return FAMILY[member].build(params, base, **{**own, **base_kwargs, **options})


def builder(case):
    return lambda params, **options: build(case, params, **options)


def plain_closure_cases():
    """The cases whose closure may be a plain `lambda: loss` (no data selection)."""
    return [c for c in CASES if c not in NEEDS_PER_SAMPLE]
