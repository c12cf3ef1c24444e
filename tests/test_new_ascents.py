"""The ascents that ask what a cheap ascent buys (optim/free_ascents.py,
optim/guided.py, ascents.CoinFlipAscent) against their equations in float64."""
import math

import pytest
import torch
import torch.nn.functional as F

from f64 import Float64Model, directions, sgd_step, zosam_eps
from zosam_kernels.optim import FAMILY
from zosam_kernels.seeds import derived_seed

LR, MU, RHO, DELTA = 0.1, 0.9, 0.2, 1e-2


def problem(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    return model, torch.randn(16, 5), torch.randint(0, 3, (16,))


def make(name, model, **options):
    entry = FAMILY[name]
    return entry.build(model.parameters(), torch.optim.SGD, **{**entry.defaults, "rho": RHO, **options},
                       lr=LR, momentum=MU)


def momentum_step(theta, buf, g):
    buf = MU * buf + g
    return theta - LR * buf, buf


def closure(model, x, y):
    return lambda: F.cross_entropy(model(x), y)


@pytest.mark.parametrize("sign", [-1, 1])
def test_msam_perturbs_along_the_momentum(sign):
    model, x, y = problem(1)
    f = Float64Model(model, x, y, F.cross_entropy)
    opt = make("msam", model, sign=sign)
    theta = f.flat()
    opt.step(closure(model, x, y))                       # no momentum yet: a plain gradient step
    g = f.grad(theta)
    theta, buf = momentum_step(theta, torch.zeros_like(theta), g)
    torch.testing.assert_close(f.flat(), theta, rtol=0, atol=1e-5)
    for _ in range(3):
        opt.step(closure(model, x, y))
        g = f.grad(theta + sign * RHO * buf / buf.norm())
        theta, buf = momentum_step(theta, buf, g)
        torch.testing.assert_close(f.flat(), theta, rtol=0, atol=1e-5)


def test_the_random_direction_is_one_direction_of_the_stream():
    model, x, y = problem(2)
    f = Float64Model(model, x, y, F.cross_entropy)
    opt = make("random-direction", model, seed=7)
    theta = f.flat()
    opt.step(closure(model, x, y))
    (u,) = directions([derived_seed(7, 0, 0)], theta.numel())
    assert opt.last_seeds == [derived_seed(7, 0, 0)]
    g = f.grad(theta + RHO * u / u.norm())
    torch.testing.assert_close(f.flat(), sgd_step(theta, g, LR), rtol=0, atol=1e-5)


def test_coin_flip_keeps_the_estimate_but_not_its_sign():
    model, x, y = problem(3)
    f = Float64Model(model, x, y, F.cross_entropy)
    opt = make("zosam-coin", model, n_dirs=4, delta=DELTA, seed=2)
    agree, theta, buf = [], f.flat(), None
    for _ in range(12):
        opt.step(closure(model, x, y))
        _, c = zosam_eps(f, theta, opt.last_seeds, RHO, DELTA)
        signed = opt.last_coefficients.double()
        torch.testing.assert_close(signed.abs(), c.abs(), rtol=1e-3, atol=1e-5)
        us = directions(opt.last_seeds, theta.numel())
        g_hat = sum(ci * u for ci, u in zip(signed, us)) / len(us)
        g = f.grad(theta + RHO * g_hat / g_hat.norm())
        theta, buf = momentum_step(theta, torch.zeros_like(theta) if buf is None else buf, g)
        torch.testing.assert_close(f.flat(), theta, rtol=0, atol=1e-4)
        agree.extend((torch.sign(signed) == torch.sign(c)).tolist())
    # 48 fair coins: agreement far from all (the estimate's signs) and from none
    assert 0.25 < sum(agree) / len(agree) < 0.75


@pytest.mark.parametrize("cosine", [0.0, 0.3, 1.0])
def test_noisy_oracle_has_the_cosine_it_is_given(cosine):
    model, x, y = problem(4)
    f = Float64Model(model, x, y, F.cross_entropy)
    opt = make("oracle", model, cosine=cosine, seed=5)
    theta = f.flat()
    opt.step(closure(model, x, y))
    g = f.grad(theta)
    (u,) = directions([derived_seed(5, 0, 0)], theta.numel())
    g_unit = g / g.norm()
    u_perp = u - (u @ g_unit) * g_unit
    eps = RHO * (cosine * g_unit + math.sqrt(1 - cosine ** 2) * u_perp / u_perp.norm())
    assert float(eps @ g / (eps.norm() * g.norm())) == pytest.approx(cosine, abs=1e-9)
    torch.testing.assert_close(f.flat(), sgd_step(theta, f.grad(theta + eps), LR), rtol=0, atol=1e-5)


@pytest.mark.parametrize("n_dirs", [0, 1, 3])
@pytest.mark.parametrize("prior", ["momentum", "gradient"])
def test_guided_ascent_projects_the_gradient_on_the_prior_and_the_directions(prior, n_dirs):
    model, x, y = problem(5)
    f = Float64Model(model, x, y, F.cross_entropy)
    opt = make("zosam-guided", model, n_dirs=n_dirs, prior=prior, delta=DELTA, seed=3)
    theta = f.flat()
    opt.step(closure(model, x, y))                       # no prior yet: plain ZO-SAM, or no ascent (m = 0)
    if n_dirs:
        eps, _ = zosam_eps(f, theta, opt.last_seeds, RHO, DELTA)
    else:
        eps = torch.zeros_like(theta)
    g_prev = f.grad(theta + eps)
    theta, buf = momentum_step(theta, torch.zeros_like(theta), g_prev)
    torch.testing.assert_close(f.flat(), theta, rtol=0, atol=1e-5)
    for step in range(1, 4):
        opt.step(closure(model, x, y))
        p = buf if prior == "momentum" else g_prev
        basis = [p / p.norm()] + directions([derived_seed(3, step, i) for i in range(n_dirs)], theta.numel())
        B = torch.stack(basis, 1)
        with torch.no_grad():
            yv = torch.stack([(f.loss(theta + DELTA * b) - f.loss(theta - DELTA * b)) / (2 * DELTA) for b in basis])
        w = torch.linalg.solve(B.T @ B, yv)
        g_hat = B @ w
        eps = RHO * g_hat / g_hat.norm()
        g_prev = f.grad(theta + eps)
        theta, buf = momentum_step(theta, buf, g_prev)
        torch.testing.assert_close(f.flat(), theta, rtol=0, atol=2e-5)


def test_guided_cosine_is_at_least_the_priors():
    """||P g|| / ||g|| >= |cos(p, g)|: the estimate's cosine to the gradient, in float64."""
    torch.manual_seed(0)
    d = 200
    g, p = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    p = p + 2 * g                                         # a prior that knows something
    us = [torch.randn(d, dtype=torch.float64) for _ in range(4)]
    B = torch.stack([p / p.norm()] + us, 1)
    w = torch.linalg.solve(B.T @ B, B.T @ g)
    g_hat = B @ w
    alpha = float(p @ g / (p.norm() * g.norm()))
    assert float(g_hat @ g / (g_hat.norm() * g.norm())) >= abs(alpha)


@pytest.mark.parametrize("name,part,words", [
    ("msam", "Reuse", "nothing to reuse"), ("zosam-guided", "DataSelection", "never measures"),
    ("random-direction", "SurrogateGap", "makes none"), ("zosam-coin", "LookAhead", "makes none"),
    ("rwp", "SurrogateGap", "makes none"), ("rwp", "Reuse", "nothing to reuse"),
    ("zosam-frac", "DataSelection", "zo_batch_fraction"),
])
def test_compositions_the_math_forbids_are_refused(name, part, words):
    import zosam_kernels as zk
    ascents = {"msam": zk.optim.MomentumAscent(), "zosam-guided": zk.optim.GuidedAscent(),
               "random-direction": zk.optim.RandomAscent(), "rwp": zk.optim.FilterNoiseAscent(),
               "zosam-coin": zk.optim.CoinFlipAscent(),
               "zosam-frac": zk.optim.ZerothOrderAscent(zo_batch_fraction=0.5)}
    model, _, _ = problem()
    with pytest.raises(ValueError, match=words):
        zk.Engine(model.parameters(), torch.optim.SGD, ascent=ascents[name], parts=[getattr(zk.optim, part)()],
                  lr=0.1)


@pytest.mark.parametrize("kw,words", [(dict(sign=0), "sign"), (dict(rho=-1.0), "rho")])
def test_msam_bad_arguments(kw, words):
    model, _, _ = problem()
    with pytest.raises(ValueError, match=words):
        FAMILY["msam"].build(model.parameters(), torch.optim.SGD, lr=0.1, **kw)


@pytest.mark.parametrize("kw,words", [(dict(prior="adam"), "prior"), (dict(n_dirs=-1), "n_dirs"),
                                      (dict(cosine=1.5), "cosine")])
def test_guided_and_oracle_bad_arguments(kw, words):
    model, _, _ = problem()
    name = "oracle" if "cosine" in kw else "zosam-guided"
    with pytest.raises(ValueError, match=words):
        FAMILY[name].build(model.parameters(), torch.optim.SGD, lr=0.1, **kw)


@pytest.mark.parametrize("name, options", [("msam", {}), ("zosam-guided", dict(prior="momentum"))])
@pytest.mark.parametrize("base, base_options, setting", [
    (torch.optim.SGD, dict(lr=LR), "momentum=0"),
    (torch.optim.Adam, dict(lr=LR, betas=(0.0, 0.999)), r"betas\[0\]=0.0"),
    (torch.optim.Adagrad, dict(lr=LR), "a base optimizer without momentum"),
])
def test_a_base_without_momentum_is_refused(name, options, base, base_options, setting):
    """Along a momentum that never exists eps is 0 at every step: plain SGD under MSAM's name."""
    model, _, _ = problem()
    entry = FAMILY[name]
    with pytest.raises(ValueError, match=f"{setting}: .* keeps none"):
        entry.build(model.parameters(), base, **{**entry.defaults, **options}, **base_options)


def test_momentum_set_to_zero_later_is_refused_at_the_step():
    model, x, y = problem()
    opt = make("msam", model)
    opt.step(closure(model, x, y))
    opt.param_groups[0]["momentum"] = 0.0
    with pytest.raises(ValueError, match="momentum=0"):
        opt.step(closure(model, x, y))
    assert opt.step_count == 1
