"""Every composition of the engine, enumerated: every ascent alone, with every
part, and with every pair of parts (the ascents and parts are found as the
subclasses of components.Ascent and components.Part, so a new one joins
without being listed, and fails until it has test-scale options here).

Each composition is refused at construction with a reason, or keeps the
contract of components.py:
- a perturbation mask holds in every pass: weights outside it are exactly
  theta whenever the closure runs;
- a run resumed from a checkpoint taken after any of the first steps (in the
  middle of a reuse period included) continues bit for bit;
- a closure that raises at any pass of a step, or returns a non-finite loss,
  leaves weights, buffers and optimizer state as they were;
- two DDP ranks stay bit-identical.
The first step against float64 equations is test_contract.py's, for the
registry's members."""
import copy
import itertools

import pytest
import torch

from test_contract import (assert_ranks_identical, closure_of, fail_at_every_pass, passes_of_step, problem,
                           weights_on_ranks)
from zosam_kernels.optim import components, parts as parts_module
from zosam_kernels.optim.stream_ascents import CoinFlipSigns, UnitCoefficients
from zosam_kernels.optim.engine import Engine
from zosam_kernels.optim.perturbation_mask import PerturbationMasking

pytestmark = pytest.mark.filterwarnings("ignore:.*non-finite loss:RuntimeWarning")

BASE = dict(lr=0.05, momentum=0.9)

# test-scale options of every ascent and part (a mask made once, so the mask of a step is known)
ASCENT_OPTIONS = {
    "GradientAscent": dict(rho=0.05),
    "ZerothOrderAscent": dict(rho=0.05, n_dirs=2),
    "CoinFlipAscent": dict(rho=0.05, n_dirs=2),
    "RandomAscent": dict(rho=0.05),
    # the skeleton of the stream ascents, with pieces no member puts together: no pass, coin-flip signs
    "StreamAscent": dict(rho=0.05, n_dirs=2, seed=0, adaptive=False, backend="fused",
                         estimate=UnitCoefficients(), transform=CoinFlipSigns()),
    "MomentumAscent": dict(rho=0.3),
    "NoisyOracleAscent": dict(rho=0.05, cosine=0.5),
    "GuidedAscent": dict(rho=0.05, n_dirs=1),
    "FilterNoiseAscent": dict(rho=0.05, draws=2),
}
PART_OPTIONS = {
    "Reuse": dict(k=2),
    "LookAhead": dict(k=2),
    "SurrogateGap": dict(alpha=0.3),
    "LearningRateRadius": dict(rho_min=0.01),
    "DataSelection": dict(gamma=0.5),
    "PerturbationMasking": dict(sparsity=0.5, update_interval=1000),
}


def subclasses(cls):
    out = {}
    for sub in cls.__subclasses__():
        out[sub.__name__] = sub
        out.update(subclasses(sub))
    return out


def _import_all():
    from zosam_kernels.optim import (free_ascents, gradient_ascent, guided, noise_ascents,  # noqa: F401
                                     perturbation_mask, stream_ascents)
    return parts_module


_import_all()
ASCENTS = subclasses(components.Ascent)
PARTS = subclasses(components.Part)
COMPOSITIONS = [(a, ps) for a in sorted(ASCENTS)
                for n in range(3) for ps in itertools.combinations(sorted(PARTS), n)]


def test_every_ascent_and_part_has_test_options():
    assert set(ASCENTS) == set(ASCENT_OPTIONS), "give a new ascent test-scale options in ASCENT_OPTIONS"
    assert set(PARTS) == set(PART_OPTIONS), "give a new part test-scale options in PART_OPTIONS"


def build(ascent, part_names, params):
    return Engine(params, torch.optim.SGD, ascent=ASCENTS[ascent](**ASCENT_OPTIONS[ascent]),
                  parts=[PARTS[p](**PART_OPTIONS[p]) for p in part_names], **BASE)


def refusal(ascent, part_names):
    """The reason a composition is refused at construction, or None."""
    model, _, _ = problem(0)
    try:
        build(ascent, part_names, model.parameters())
    except ValueError as e:
        return str(e)
    return None


ACCEPTED = [c for c in COMPOSITIONS if refusal(*c) is None]


def name(c):
    return "+".join((c[0],) + c[1])


@pytest.mark.parametrize("composition", COMPOSITIONS, ids=name)
def test_refused_with_a_reason_or_steps(composition):
    reason = refusal(*composition)
    if reason is not None:
        assert ": " in reason and len(reason) > 40, reason   # names what and says why
        return
    model, x, y = problem(1)
    opt = build(*composition, model.parameters())
    for _ in range(3):
        loss = opt.step(closure_of(model, x, y))
        assert torch.isfinite(loss)
    assert opt.step_count == 3


@pytest.mark.parametrize("composition", [c for c in ACCEPTED if "PerturbationMasking" in c[1]], ids=name)
def test_the_perturbation_mask_holds_in_every_pass(composition):
    model, x, y = problem(2)
    opt = build(*composition, model.parameters())
    closure = closure_of(model, x, y)
    masking = next(p for p in opt.parts if isinstance(p, PerturbationMasking))
    seen = []

    def watched(indices=None):
        seen.append(torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()]))
        return closure(indices)

    moved_inside = False
    for index in range(4):
        theta = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
        seen.clear()
        opt.step(watched)
        # made at step 0 and never remade (update_interval 1000): the mask of every step
        views = dict(zip(map(id, opt.params), masking.perturbation_mask.views()))
        inside = torch.cat([views[id(p)].reshape(-1) for p in model.parameters()])
        assert 0 < int(inside.sum()) < inside.numel()
        for k, weights in enumerate(seen):
            outside = ~inside
            assert torch.equal(weights[outside], theta[outside]), f"step {index}, pass {k + 1}"
            moved_inside |= not torch.equal(weights[inside], theta[inside])
    assert moved_inside, "the perturbation never moved a weight: the test would not see a leak"


def run(model, opt, x, y, steps):
    for _ in range(steps):
        opt.step(closure_of(model, x, y))


@pytest.mark.parametrize("composition", ACCEPTED, ids=name)
def test_resume_at_any_step_continues_bit_for_bit(composition, tmp_path):
    total = 5
    model, x, y = problem(2, batchnorm=True)
    run(model, build(*composition, model.parameters()), x, y, total)
    straight = copy.deepcopy(model.state_dict())
    for at in (1, 2, 3):
        model, x, y = problem(2, batchnorm=True)
        opt = build(*composition, model.parameters())
        run(model, opt, x, y, at)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
        model, _, _ = problem(9, batchnorm=True)
        opt = build(*composition, model.parameters())
        ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        run(model, opt, x, y, total - at)
        for k, v in model.state_dict().items():
            assert torch.equal(v, straight[k]), f"resumed after step {at}: {k}"


@pytest.mark.parametrize("composition", ACCEPTED, ids=name)
def test_a_fault_at_any_pass_loses_nothing(composition):
    """Steps 0 and 1 (a full step; for the parts that decide the plan, an in-between
    step), each pass raising, then each returning a non-finite loss."""
    model, x, y = problem(3, batchnorm=True)
    opt = build(*composition, model.parameters())
    closure = closure_of(model, x, y)
    for index in (0, 1):
        fail_at_every_pass(model, opt, closure, passes_of_step(lambda params: build(*composition, params), index))
        assert opt.step_count == index
        opt.step(closure)


def ddp_run(rank, world):
    """Every accepted composition."""
    makers = {name(c): (lambda params, c=c: build(*c, params), False) for c in ACCEPTED}
    return weights_on_ranks(rank, world, makers)


def test_two_ddp_ranks_stay_bit_identical(tmp_path):
    from test_distributed import spawn
    assert_ranks_identical(spawn(ddp_run, tmp_path), [name(c) for c in ACCEPTED])


def sgd_run(model, x, y, steps):
    opt = torch.optim.SGD(model.parameters(), **BASE)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("ascent", sorted(ASCENTS))
def test_every_ascent_takes_its_radius_from_the_schedule(ascent):
    """LearningRateRadius at lr = lr_min gives rho_t = rho_min = 0: no perturbation,
    the steps of plain SGD; without the schedule the same ascent moves elsewhere."""
    reference, x, y = problem(5)
    sgd_run(reference, x, y, 3)
    scheduled, _, _ = problem(5)
    # (the filter noise's gradients on parts of the batch make SGD's at rho = 0 only if each sees all of it)
    options = {**ASCENT_OPTIONS[ascent], **({"batch": "same"} if ascent == "FilterNoiseAscent" else {})}
    opt = Engine(scheduled.parameters(), torch.optim.SGD, ascent=ASCENTS[ascent](**options),
                 parts=[parts_module.LearningRateRadius(rho_min=0.0, lr_max=1.0, lr_min=BASE["lr"])], **BASE)
    run(scheduled, opt, x, y, 3)
    for a, b in zip(scheduled.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    unscheduled, _, _ = problem(5)
    run(unscheduled, build(ascent, (), unscheduled.parameters()), x, y, 3)
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(unscheduled.parameters(), reference.parameters()))


def test_every_member_has_a_case():
    """Each member of the registry is under test_contract.py's float64 contract."""
    from family_cases import CASES
    from zosam_kernels.optim import FAMILY
    missing = set(FAMILY) - {"sgd"} - {member for member, _, _ in CASES.values()}
    assert not missing, f"give {sorted(missing)} a case in tests/family_cases.py"


@pytest.mark.parametrize("part", sorted(PARTS))
def test_a_part_given_twice_is_refused(part):
    model, _, _ = problem(0)
    with pytest.raises(ValueError, match=f"parts: {part} given twice"):
        Engine(model.parameters(), torch.optim.SGD, ascent=ASCENTS["GradientAscent"](),
               parts=[PARTS[part](**PART_OPTIONS[part]) for _ in range(2)], **BASE)


def test_two_parts_that_decide_the_plan_are_refused():
    deciders = [p for p in sorted(PARTS) if PARTS[p].decides_plan]
    assert len(deciders) >= 2
    for pair in itertools.combinations(deciders, 2):
        reason = refusal("ZerothOrderAscent", pair)
        assert reason is not None and "both decide which steps are full" in reason, pair


@pytest.mark.parametrize("ascent", sorted(ASCENTS))
def test_surgery_beside_reuse_is_refused(ascent):
    """A reused step measures no gradient at theta: GSAM's surgery would silently skip it."""
    reason = refusal(ascent, ("Reuse", "SurrogateGap"))
    assert reason is not None and ("a reused step measures no gradient at theta" in reason
                                   or "nothing to reuse" in reason or "makes none" in reason), reason


@pytest.mark.parametrize("composition", ACCEPTED, ids=name)
def test_the_optimizer_shows_what_its_components_report_and_nothing_else(composition):
    model, _, _ = problem(0)
    opt = build(*composition, model.parameters())
    for component in [opt.ascent, *opt.parts]:
        for shown in component.reports:
            assert getattr(opt, shown) is getattr(component, shown)
    for per_group in opt.defaults:   # per-group values live in param_groups, where a scheduler changes them
        if per_group not in {n for c in [opt.ascent, *opt.parts] for n in c.reports}:
            with pytest.raises(AttributeError):
                getattr(opt, per_group)
