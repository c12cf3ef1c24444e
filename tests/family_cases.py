"""The family at test scale, for the tests that run over every member: each
member of the registry (optim.family.FAMILY) with what makes its state matter
within a few steps (the papers remake masks every 1950 steps, for example),
and variants of some. A member added to FAMILY is missing here until it is
given test-scale options, and test_every_member_has_a_case says so."""
import torch

from zosam_kernels.optim import FAMILY

SGD = dict(lr=0.05, momentum=0.9)
ADAMW = dict(lr=0.01)
ZO = dict(n_dirs=2)

# case: (member, its options, the base optimizer and its options)
CASES = {
    "sam": ("sam", {}, (torch.optim.SGD, SGD)),
    "zosam": ("zosam", ZO, (torch.optim.SGD, SGD)),
    "zosam-unfused": ("zosam", ZO | dict(backend="unfused"), (torch.optim.SGD, SGD)),
    "zosam-adaptive": ("zosam", dict(n_dirs=1, adaptive=True), (torch.optim.AdamW, ADAMW)),
    "esam": ("esam", dict(beta=0.5, gamma=1.0, seed=1), (torch.optim.SGD, SGD)),
    "looksam": ("looksam", dict(k=2), (torch.optim.SGD, SGD)),
    "looksam-every-step": ("looksam", dict(k=1), (torch.optim.AdamW, ADAMW)),
    "gsam": ("gsam", dict(alpha=0.3, rho_min=0.01), (torch.optim.SGD, SGD)),
    "ssam-fisher": ("ssam-f", dict(update_interval=2), (torch.optim.SGD, SGD)),
    "ssam-dynamic": ("ssam-d", dict(update_interval=2, total_steps=6), (torch.optim.AdamW, ADAMW)),
    "zolooksam": ("zolooksam", ZO | dict(k=2), (torch.optim.SGD, SGD)),
    "zolooksam-adaptive": ("zolooksam", dict(k=3, adaptive=True, backend="unfused"), (torch.optim.AdamW, ADAMW)),
    "zossam-fisher": ("zossam", ZO | dict(update_interval=2), (torch.optim.SGD, SGD)),
    "zossam-dynamic": ("zossam", ZO | dict(mask="dynamic", update_interval=2, total_steps=6, backend="unfused"),
                       (torch.optim.AdamW, ADAMW)),
    "zogsam": ("zogsam", ZO | dict(alpha=0.3), (torch.optim.SGD, SGD)),
    # data selection: its closure must take `indices` and return per-sample losses
    "zoesam": ("zoesam", ZO | dict(gamma=0.5), (torch.optim.SGD, SGD)),
    "msam": ("msam", {}, (torch.optim.SGD, SGD)),
    "msam-adamw": ("msam", dict(sign=1), (torch.optim.AdamW, ADAMW)),
    "rwp": ("rwp", {}, (torch.optim.SGD, SGD)),
    "zosam-coin": ("zosam-coin", ZO, (torch.optim.SGD, SGD)),
    "oracle": ("oracle", dict(cosine=0.3), (torch.optim.SGD, SGD)),
    "zosam-guided": ("zosam-guided", ZO, (torch.optim.SGD, SGD)),
    "zosam-guided-gradient": ("zosam-guided", dict(n_dirs=0, prior="gradient"), (torch.optim.SGD, SGD)),
}
NEEDS_PER_SAMPLE = {"zoesam"}


def build(case, params, **options):
    """The optimizer of `case` over params; options override the case's."""
    member, own, (base, base_kwargs) = CASES[case]
    entry = FAMILY[member]
    return entry.build(params, base, **{**entry.defaults, **own, **base_kwargs, **options})


def builder(case):
    return lambda params, **options: build(case, params, **options)


def plain_closure_cases():
    """The cases whose closure may be a plain `lambda: loss` (no data selection)."""
    return [c for c in CASES if c not in NEEDS_PER_SAMPLE]
