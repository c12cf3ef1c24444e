"""SAM / ASAM against their equations computed independently in float64."""
import pytest
import torch

import zosam_kernels as zk
from f64 import Float64Model, sam_eps, sgd_step
from test_zosam import flat_mask, make_problem, random_masks


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_sam_step_matches_float64(adaptive, masked, device):
    model, x, y = make_problem(21 + adaptive + 2 * masked, device=device)
    masks = random_masks(model, 0.6, 4) if masked else {}
    loss_fn = torch.nn.functional.cross_entropy
    f = Float64Model(model, x, y, loss_fn)
    mask = flat_mask(model, masks) if masked else None
    theta0 = f.flat() * (mask if masked else 1)
    opt = zk.SAM(model.parameters(), torch.optim.SGD, rho=0.1, adaptive=adaptive,
                 masks=masks or None, lr=0.1, momentum=0.9)
    loss = opt.step(lambda: loss_fn(model(x), y))

    eps = sam_eps(f, theta0, 0.1, mask, adaptive)
    g = f.grad(theta0 + eps)
    if masked:
        g = g * mask
    torch.testing.assert_close(f.flat(), sgd_step(theta0, g, 0.1), rtol=0, atol=1e-5)
    torch.testing.assert_close(loss.double().cpu(), f.loss(theta0).detach(), rtol=1e-5, atol=1e-6)


def test_sam_rho_zero_is_the_base_optimizer():
    model_a, x, y = make_problem(5)
    model_b, _, _ = make_problem(5)
    sam = zk.SAM(model_a.parameters(), torch.optim.SGD, rho=0.0, lr=0.1, momentum=0.9)
    sgd = torch.optim.SGD(model_b.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        sam.step(lambda: torch.nn.functional.cross_entropy(model_a(x), y))
        sgd.zero_grad()
        torch.nn.functional.cross_entropy(model_b(x), y).backward()
        sgd.step()
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
