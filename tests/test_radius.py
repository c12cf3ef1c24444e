"""The relative radius (radius_scale="relative": ascents.StreamAscent, free_ascents.MomentumAscent):
eps in units of each tensor's RMS. Scaling a ReLU net layer by layer so that its
function is unchanged scales each tensor's eps with the tensor: the relative eps,
eps_t / ||theta_t||, is the same. The absolute radius (norm rho) has no such
invariance, which is why the test can fail. And against its equation in float64."""
import copy

import pytest
import torch
import torch.nn.functional as F

from f64 import directions
from zosam_kernels.optim import Engine, MomentumAscent, RandomAscent, ZerothOrderAscent
from zosam_kernels.optim.stream_ascents import CoinFlipAscent
from zosam_kernels.seeds import derived_seed

SCALES = (4.0, 0.25)   # the hidden layer times 4 (weight and bias), the output weights / 4: the same function


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.ReLU(), torch.nn.Linear(9, 3))


def rescaled(model):
    out = copy.deepcopy(model)
    with torch.no_grad():
        out[0].weight.mul_(SCALES[0])
        out[0].bias.mul_(SCALES[0])
        out[2].weight.mul_(SCALES[1])
    return out


ASCENTS = {
    "random": lambda scale: RandomAscent(rho=0.3, seed=3, radius_scale=scale),
    "zosam": lambda scale: ZerothOrderAscent(rho=0.3, delta=0.05, n_dirs=3, seed=3, radius_scale=scale),
    "coin": lambda scale: CoinFlipAscent(rho=0.3, delta=0.05, n_dirs=2, seed=3, radius_scale=scale),
    "msam": lambda scale: MomentumAscent(rho=0.3, radius_scale=scale),
}


def relative_eps(model, make, radius, momentum=None):
    """eps_t / ||theta_t|| of the first step (the weights at the update's pass, less theta)."""
    torch.manual_seed(1)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    theta = [p.detach().clone() for p in model.parameters()]
    seen = []

    def closure():
        seen.append([p.detach().clone() for p in model.parameters()])
        return F.cross_entropy(model(x), y)

    opt = Engine(model.parameters(), torch.optim.SGD, ascent=make(radius), lr=0.0, momentum=0.9)
    if momentum is not None:
        for p, v in zip(model.parameters(), momentum):
            opt.state[p]["momentum_buffer"] = v.clone()
    opt.step(closure)
    return [(w - t) / t.norm() for w, t in zip(seen[-1], theta)]


def momenta(model):
    """A momentum-like gradient of each model, at the same point of the function."""
    torch.manual_seed(2)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    return list(torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters())))


@pytest.mark.parametrize("name", sorted(ASCENTS))
def test_the_relative_eps_of_a_rescaled_relu_net_is_the_same(name):
    model = net()
    other = rescaled(model)
    extra = (lambda m: momenta(m)) if name == "msam" else (lambda m: None)
    a = relative_eps(model, ASCENTS[name], "relative", extra(model))
    b = relative_eps(other, ASCENTS[name], "relative", extra(other))
    assert max(float(t.abs().max()) for t in a) > 1e-3   # it perturbs
    for s, t in zip(a, b):
        torch.testing.assert_close(s, t, rtol=2e-3, atol=1e-5)
    a = relative_eps(model, ASCENTS[name], "absolute", extra(model))
    b = relative_eps(other, ASCENTS[name], "absolute", extra(other))
    assert max(float((s - t).abs().max()) for s, t in zip(a, b)) > 1e-2


def test_the_relative_random_eps_is_its_equation():
    """eps = rho sqrt(d) s u / ||u||, s_i the RMS of weight i's tensor: in float64."""
    model = net()
    theta = torch.cat([p.detach().flatten() for p in model.parameters()]).double()
    rms = torch.cat([torch.full((p.numel(),), float(p.detach().double().norm() / p.numel() ** 0.5),
                                dtype=torch.float64) for p in model.parameters()])
    (u,) = directions([derived_seed(3, 0, 0)], theta.numel())
    expected = 0.3 * theta.numel() ** 0.5 * rms * u / u.norm()
    got = torch.cat([(e * t.norm()).flatten() for e, t in
                     zip(relative_eps(model, ASCENTS["random"], "relative"), net().parameters())]).double()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_relative_and_adaptive_together_are_refused():
    with pytest.raises(ValueError, match="radius_scale='relative' and adaptive=True"):
        ZerothOrderAscent(adaptive=True, radius_scale="relative")
    with pytest.raises(ValueError, match="radius_scale must be one of"):
        RandomAscent(radius_scale="per-filter")
