"""The partial ascents (optim/selection.py; GradientAscent's and ZerothOrderAscent's
`perturb`): which tensors a selection names, that the first backward of a partial
gradient ascent computes no gradient below the lowest chosen tensor, that eps
stays on the chosen tensors in every pass, and the errors of a selection that
cannot be resolved. Their equations in float64 are in test_contract.py."""
import pytest
import torch
import torch.nn.functional as F

import zosam_kernels as zk
from zosam_kernels.optim import FAMILY, select
from zosam_kernels.optim.selection import biases
from zosam_kernels.recipes import make_optimizer


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def test_selections_name_the_tensors():
    model = net()
    def same(a, b):
        return len(a) == len(b) and all(x is y for x, y in zip(a, b))
    assert same(select(model, "norm"), [model[1].weight, model[1].bias, model[4].weight, model[4].bias])
    assert same(select(model, "last:1"), [model[6].weight, model[6].bias])
    assert same(select(model, "last:2"), [model[4].weight, model[4].bias, model[6].weight, model[6].bias])
    assert select(model, lambda name, p: name.endswith("bias") and p.dim() == 1)[0] is model[0].bias
    assert same(biases(model, select(model, "norm")), [model[1].bias, model[4].bias])
    model[4].weight.requires_grad_(False)
    assert all(p is not model[4].weight for p in select(model, "norm"))


@pytest.mark.parametrize("spec,words", [("middle", "not a selection"), ("last:0", "not a selection"),
                                        (lambda n, p: False, "chose no trainable parameter")])
def test_a_selection_that_names_nothing_is_refused(spec, words):
    with pytest.raises(ValueError, match=words):
        select(net(), spec)


def test_a_selection_by_module_needs_the_model():
    model = net()
    with pytest.raises(ValueError, match="pass model="):
        FAMILY["sam-on"].build(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="pass model="):
        zk.SAM(model.parameters(), torch.optim.SGD, lr=0.1, perturb="norm")
    with pytest.raises(TypeError, match="names parts of a model"):
        zk.optim.GradientAscent(perturb="norm")
    opt = make_optimizer("sam-on", model.parameters(), torch.optim.SGD, dict(lr=0.1), model=model)
    assert opt.ascent.perturb == {id(p) for p in select(model, "norm")}


def backward_counts(member, **options):
    """How many gradient passes reach the first layer's and the last layer's weights in one step."""
    model = net()
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    counts = {"first": 0, "last": 0}
    model[0].weight.register_hook(lambda g: counts.__setitem__("first", counts["first"] + 1))
    model[6].weight.register_hook(lambda g: counts.__setitem__("last", counts["last"] + 1))
    opt = make_optimizer(member, model.parameters(), torch.optim.SGD, dict(lr=0.1), model=model, **options)
    opt.step(lambda: F.cross_entropy(model(x), y))
    return counts


def test_the_first_backward_stops_below_the_lowest_chosen_tensor():
    assert backward_counts("sam") == {"first": 2, "last": 2}
    assert backward_counts("sam-partial", perturb="last:1") == {"first": 1, "last": 2}
    assert backward_counts("sam-partial", perturb="last:2") == {"first": 1, "last": 2}


@pytest.mark.parametrize("member,options", [("sam-partial", dict(perturb="last:2")), ("sam-on", {}),
                                            ("zosam", dict(perturb="norm", n_dirs=2))])
def test_eps_stays_on_the_chosen_tensors_in_every_pass(member, options):
    model = net()
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    chosen = {id(p) for p in select(model, options.get("perturb", "norm"))}
    moved = set()

    def closure():
        for n, p in model.named_parameters():
            if not torch.equal(p.detach(), theta[n]):
                moved.add(n)
                assert id(p) in chosen, f"{n} moved during the step"
        return F.cross_entropy(model(x), y)

    make_optimizer(member, model.parameters(), torch.optim.SGD, dict(lr=0.1), model=model,
                      **options).step(closure)
    assert moved   # it perturbs
