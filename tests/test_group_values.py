"""Values a scheduler or a user sets in param_groups after construction are
checked at every step as the constructor checks them: every hyperparameter
that a member's ascent and parts keep per group (enumerated from their
group_defaults, not listed), set to a value the constructor refuses, makes
the next step raise, naming it, with nothing changed."""
import pytest

from family_cases import CASES, build, plain_closure_cases
from test_contract import assert_as_before, closure_of, problem, snapshot

BAD = {"delta": (0.0,)}   # beyond what no hyperparameter takes (below)
NEVER = (float("nan"), float("inf"), -1.0)


def group_keys(opt):
    return sorted({k for c in [opt.ascent, *opt.parts] for k, v in c.group_defaults().items()
                   if not isinstance(v, bool)})


@pytest.mark.parametrize("case", plain_closure_cases())
def test_a_bad_value_set_later_is_refused_at_the_step(case):
    model, x, y = problem(0, batchnorm=True)
    opt = build(case, model.parameters())
    closure = closure_of(model, x, y)
    opt.step(closure)
    keys = group_keys(opt)
    assert keys, "every member keeps a radius per group"
    for key in keys:
        good = opt.param_groups[0][key]
        for bad in NEVER + BAD.get(key, ()):
            opt.zero_grad()
            before = snapshot(model, opt)
            opt.param_groups[0][key] = bad
            with pytest.raises(ValueError, match=key):
                opt.step(closure)
            opt.param_groups[0][key] = good
            assert_as_before(model, opt, before)
    opt.step(closure)


@pytest.mark.parametrize("case", [c for c in CASES if "delta" in CASES[c][1] or CASES[c][0].startswith("zo")])
@pytest.mark.parametrize("delta", [0.0, float("inf"), float("nan")])
def test_delta_zero_or_not_finite_is_refused_at_construction(case, delta):
    model, _, _ = problem(0)
    with pytest.raises(ValueError, match="delta must be a finite positive number"):
        build(case, model.parameters(), delta=delta)
