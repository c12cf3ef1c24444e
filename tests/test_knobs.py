"""Every option of every member of the registry does what it says: changed from
the member's value, the trained weights change, or stay equal where the
documentation says the option only changes the cost (or acts under DDP only),
or the option is refused with its name. The options are the registry's
(optim.family.FAMILY: each member's `defaults`), enumerated, so an option
added to a component is under this test until it is given an expectation."""
import pytest
import torch
import torch.nn.functional as F

from zosam_kernels.optim import FAMILY

CHANGES, SAME = "changes", "same"
# option -> (the options to set instead, from the member's value; what the documentation says happens)
KNOBS = {
    "rho": (lambda v: dict(rho=4 * v), CHANGES),
    "adaptive": (lambda v: dict(adaptive=not v), CHANGES),
    "m_sharpness": (lambda v: dict(m_sharpness=not v), SAME),   # eps from each rank's own shard: one process, one rank
    "beta": (lambda v: dict(beta=0.9 if v < 0.9 else 0.5), CHANGES),
    "seed": (lambda v: dict(seed=v + 1), CHANGES),
    "delta": (lambda v: dict(delta=300 * v), CHANGES),   # (its effect is of order delta^2)
    "n_dirs": (lambda v: dict(n_dirs=v + 1), CHANGES),
    "backend": (lambda v: dict(backend="unfused" if v == "fused" else "fused"), SAME),   # the same math, materialised
    "zo_batch_fraction": (lambda v: dict(zo_batch_fraction=0.5), CHANGES),
    "zo_autocast": (lambda v: dict(zo_autocast=torch.bfloat16), CHANGES),
    "gamma": (lambda v: dict(gamma=0.5 if v == 1 else 1.0), CHANGES),
    "k": (lambda v: dict(k=v + 1), CHANGES),
    "alpha": (lambda v: dict(alpha=min(1.0, 3 * v + 0.1) if v < 0.9 else 0.5), CHANGES),
    "rho_min": (lambda v: dict(rho_min=0.01 if v is None else 2 * v), CHANGES),
    "lr_max": (lambda v: dict(lr_max=0.2), CHANGES),
    "lr_min": (lambda v: dict(lr_min=0.001), CHANGES),   # (below the last step's lr: rho_t stays >= rho_min)
    "sparsity": (lambda v: dict(sparsity=0.2), CHANGES),
    "mask": (lambda v: dict(mask="fisher", total_steps=None) if v == "dynamic" else dict(mask="dynamic", total_steps=6),
             CHANGES),
    "update_interval": (lambda v: dict(update_interval=v + 1), CHANGES),
    "drop_rate": (lambda v: dict(drop_rate=0.2), CHANGES),
    "total_steps": (lambda v: dict(total_steps=3 * (v or 6)), CHANGES),
    "sign": (lambda v: dict(sign=-v), CHANGES),
    "cosine": (lambda v: dict(cosine=0.9), CHANGES),
    "prior": (lambda v: dict(prior="gradient" if v == "momentum" else "momentum"), CHANGES),
    "radius_scale": (lambda v: dict(radius_scale="relative" if v == "absolute" else "absolute"), CHANGES),
    "perturb": (lambda v: dict(perturb="last:1" if v in (None, "norm") else "norm"), CHANGES),
    "eta": (lambda v: dict(eta=v + 0.5), CHANGES),
    "unscaled": (lambda v: dict(unscaled=None if v else "biases"), CHANGES),
    "draws": (lambda v: dict(draws=v + 1), CHANGES),
    "batch": (lambda v: dict(batch="same" if v == "split" else "split"), CHANGES),
}
# (member, option): what differs from KNOBS for that member, and why
EXCEPT = {
    ("ssam-f", "seed"): SAME,                 # the Fisher mask draws nothing, and SAM's ascent neither
    ("ssam-f", "drop_rate"): "refused",       # the dynamic mask's; the Fisher mask would ignore them
    ("ssam-f", "total_steps"): "refused",
    ("zossam", "drop_rate"): "refused",
    ("zossam", "total_steps"): "refused",
    ("looksam", "m_sharpness"): "refused",    # parts that read the gradient at theta for more than eps:
    ("gsam", "m_sharpness"): "refused",       # under m-sharpness it differs between ranks
    ("ssam-f", "m_sharpness"): "refused",
    ("ssam-d", "m_sharpness"): "refused",
    ("zoesam", "zo_batch_fraction"): "refused",   # data selection compares the whole batch's losses
    ("zosam-guided", "adaptive"): "refused",      # no ASAM form
    ("esam", "m_sharpness"): SAME,            # (its quick options select every sample: no data selection)
    ("looksam", "perturb"): "refused",        # surgery needs the whole gradient at theta
    ("gsam", "perturb"): "refused",
    ("sam-on", "adaptive"): "refused",        # its eta and unscaled are ASAM's
}
STEPS = 4
ADAPTIVE_ONLY = ("eta", "unscaled")   # ASAM's: refused where adaptive is off


def train(member, options):
    """The weights after STEPS steps, at a radius where eps's direction shows in them."""
    options = {"rho": 0.5, **options} if "rho" in FAMILY[member].defaults else options
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))

    def closure(indices=None):
        i = slice(None) if indices is None else indices
        return F.cross_entropy(model(x[i]), y[i], reduction="none")

    if "model" in FAMILY[member].takes():   # a selection of tensors by module (perturb="norm") needs it
        options = {**options, "model": model}
    opt = FAMILY[member].build(model.parameters(), torch.optim.SGD, **options, lr=0.05, momentum=0.9)
    schedule = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)   # a moving LR (GSAM's radius follows it)
    for _ in range(STEPS):
        opt.step(closure)
        schedule.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


KNOB_CASES = [(m, o) for m in FAMILY if m != "sgd" for o in FAMILY[m].defaults]


def test_every_option_has_an_expectation():
    missing = sorted({o for _, o in KNOB_CASES} - set(KNOBS))
    assert not missing, f"say in KNOBS what changing {missing} does"


@pytest.mark.parametrize("member,option", KNOB_CASES, ids=[f"{m}-{o}" for m, o in KNOB_CASES])
def test_changing_an_option_does_what_it_says(member, option):
    own = {**FAMILY[member].defaults, **FAMILY[member].quick}
    other, expected = KNOBS[option]
    expected = EXCEPT.get((member, option), expected)
    if option in ADAPTIVE_ONLY and not own["adaptive"]:
        expected = "refused"
    changed = other(own[option])
    before = train(member, FAMILY[member].quick)
    if expected == "refused":
        with pytest.raises((ValueError, TypeError), match=option):
            train(member, {**FAMILY[member].quick, **changed})
        return
    after = train(member, {**FAMILY[member].quick, **changed})
    gap = float((after - before).abs().max())
    if expected == CHANGES:
        assert gap > 1e-5, f"{member}: {changed} left the weights as they were"
    else:
        assert gap < 1e-5, f"{member}: {changed} moved the weights by {gap}"


FIXED = [(m, o) for m in FAMILY for o in FAMILY[m].fixed]


@pytest.mark.parametrize("member,option", FIXED, ids=[f"{m}-{o}" for m, o in FIXED])
def test_an_option_the_member_pins_is_refused(member, option):
    with pytest.raises(ValueError, match=f"{option}: this method pins"):
        train(member, {option: 0.5})


def test_an_option_of_a_part_that_is_out_is_refused():
    """GSAM's radius schedule joins with rho_min; lr_max alone would be read by nothing."""
    with pytest.raises(ValueError, match="lr_max: only read by LearningRateRadius"):
        train("gsam", dict(lr_max=0.2))
    train("gsam", dict(lr_max=0.2, rho_min=0.01))


def test_the_classes_show_their_options_and_defaults():
    import inspect
    for name, member in FAMILY.items():
        if member.cls is None or member.cls.name != name:
            continue
        shown = {n: p.default for n, p in inspect.signature(member.cls).parameters.items()
                 if p.kind is p.KEYWORD_ONLY}
        assert {n: shown[n] for n in member.defaults} == member.defaults, name
