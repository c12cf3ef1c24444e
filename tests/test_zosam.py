"""One ZOSAM step against the algorithm of docs/DESIGN.md computed independently in float64."""
import zlib

import pytest
import torch

import zosam_kernels as zk
from f64 import Float64Model, adamw_step, sgd_step, zosam_eps


def make_problem(seed, batchnorm=False, device="cpu"):
    """A small classifier with its batch, drawn on the CPU, then moved to device."""
    g = torch.Generator().manual_seed(seed)
    layers = [torch.nn.Linear(7, 9), torch.nn.Tanh(), torch.nn.Linear(9, 4)]
    if batchnorm:
        layers.insert(1, torch.nn.BatchNorm1d(9))
    model = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x = torch.randn(16, 7, generator=g)
    y = torch.randint(0, 4, (16,), generator=g)
    return model.to(device), x.to(device), y.to(device)


def random_masks(model, density, seed):
    """Masks drawn on the CPU (the same on every device), on their weights' device."""
    g = torch.Generator().manual_seed(seed)
    return {p: (torch.rand(p.shape, generator=g) < density).to(p.device)
            for p in model.parameters() if p.dim() > 1}


def flat_mask(model, masks):
    """The masks as one float64 vector on the CPU, 1 where a weight is active."""
    return torch.cat([masks.get(p, torch.ones_like(p, dtype=torch.bool)).reshape(-1).double().cpu()
                      for p in model.parameters()])


BASES = {
    "sgd": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=5e-4),
            lambda th, g: sgd_step(th, g, 0.1, 5e-4)),
    "adamw": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-2),
              lambda th, g: adamw_step(th, g, 1e-2, weight_decay=1e-2)),
}


@pytest.mark.parametrize("backend", ["fused", "unfused"])
@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("n_dirs", [1, 3])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("adaptive", [False, True])
def test_step_matches_float64_algorithm(backend, base, n_dirs, masked, adaptive, device):
    # stable across processes (hash() of a str is randomised per process by PYTHONHASHSEED)
    seed = zlib.crc32(repr((backend, base, n_dirs, masked, adaptive)).encode()) % 1000
    model, x, y = make_problem(seed, device=device)
    masks = random_masks(model, 0.6, seed) if masked else {}
    loss_fn = torch.nn.functional.cross_entropy
    f = Float64Model(model, x, y, loss_fn)
    mask = flat_mask(model, masks) if masked else None
    theta0 = f.flat() * (mask if masked else 1)   # the optimizer zeroes pruned weights at init
    rho, delta = 0.05, 1e-2
    base_cls, kw, step64 = BASES[base]
    opt = zk.ZOSAM(model.parameters(), base_cls, rho=rho, delta=delta, n_dirs=n_dirs, seed=seed,
                   masks=masks or None, adaptive=adaptive, backend=backend, **kw)
    loss = opt.step(lambda: loss_fn(model(x), y))

    eps, c = zosam_eps(f, theta0, opt.last_seeds, rho, delta, mask, adaptive)
    g = f.grad(theta0 + eps)
    if masked:
        g = g * mask
    expected = step64(theta0, g)
    torch.testing.assert_close(opt.last_coefficients.double().cpu(), c, rtol=2e-3, atol=2e-4)
    torch.testing.assert_close(f.flat(), expected, rtol=0, atol=2e-5)
    torch.testing.assert_close(loss.double().cpu(), f.loss(theta0).detach(), rtol=1e-3, atol=1e-4)
    if masked:
        assert (f.flat()[mask == 0] == 0).all()


@pytest.mark.parametrize("adaptive", [False, True])
def test_fused_and_unfused_backends_agree_over_steps(adaptive, device):
    results = []
    for backend in ["fused", "unfused"]:
        model, x, y = make_problem(3, batchnorm=True, device=device)
        masks = random_masks(model, 0.5, 3)
        opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9, n_dirs=2,
                       seed=11, masks=masks, adaptive=adaptive, backend=backend)
        for _ in range(5):
            opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))
        results.append(torch.cat([p.detach().cpu().reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-5)


def test_seeds_differ_across_steps_and_directions_and_replay():
    model, x, y = make_problem(0)
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.01, n_dirs=3, seed=5)
    seen = []
    for _ in range(3):
        opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))
        seen.extend(opt.last_seeds)
    assert len(set(seen)) == 9 and all(0 <= s < 2**63 for s in seen)
    model2, _, _ = make_problem(0)
    opt2 = zk.ZOSAM(model2.parameters(), torch.optim.SGD, lr=0.01, n_dirs=3, seed=5)
    opt2.step(lambda: torch.nn.functional.cross_entropy(model2(x), y))
    assert opt2.last_seeds == seen[:3]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the Triton kernels compiled)")
def test_cuda_fused_matches_cpu_unfused_backend():
    results = []
    for device, backend in [("cuda", "fused"), ("cpu", "unfused")]:
        model, x, y = make_problem(4, batchnorm=True, device=device)
        masks = random_masks(model, 0.5, 4)
        opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9, n_dirs=2,
                       seed=13, masks=masks, backend=backend)
        for _ in range(3):
            opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))
        results.append(torch.cat([p.detach().cpu().reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-4)


@pytest.mark.parametrize("backend", ["fused", "unfused"])
def test_zo_batch_fraction_uses_leading_samples_for_the_estimate_only(backend, device):
    model, x, y = make_problem(21, device=device)
    loss_fn = torch.nn.functional.cross_entropy
    rho, delta, frac = 0.05, 1e-2, 0.3
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1, rho=rho, delta=delta, n_dirs=2,
                   seed=21, backend=backend, zo_batch_fraction=frac)
    calls = []

    def closure(indices=None):
        calls.append(indices)
        idx = slice(None) if indices is None else indices
        return loss_fn(model(x[idx]), y[idx], reduction="none")

    opt.step(closure)                       # B unknown yet: the whole batch throughout
    assert calls == [None] * 5
    calls.clear()
    n = -(-len(x) * 3 // 10)                # ceil(0.3 * 16) = 5
    full, sub = Float64Model(model, x, y, loss_fn), Float64Model(model, x[:n], y[:n], loss_fn)
    theta0 = full.flat()
    opt.step(closure)
    assert [c if c is None else (c.start, c.stop) for c in calls] == [(0, n)] * 4 + [None]
    eps, c = zosam_eps(sub, theta0, opt.last_seeds, rho, delta)
    torch.testing.assert_close(opt.last_coefficients.double().cpu(), c, rtol=2e-3, atol=2e-4)
    expected = sgd_step(theta0, full.grad(theta0 + eps), 0.1)
    torch.testing.assert_close(full.flat(), expected, rtol=0, atol=2e-5)


def test_zo_batch_fraction_needs_indices_and_per_sample_losses():
    model, x, y = make_problem(22)
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1, zo_batch_fraction=0.5)
    with pytest.raises(TypeError, match="indices"):
        opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))
    with pytest.raises(ValueError, match="zo_batch_fraction"):
        opt.step(lambda indices=None: torch.nn.functional.cross_entropy(model(x), y))
    for bad in (0, -0.5, 1.5, "half"):
        with pytest.raises(ValueError, match="zo_batch_fraction"):
            zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1, zo_batch_fraction=bad)
    with pytest.raises(ValueError, match="zo_autocast"):
        zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1, zo_autocast=torch.float64)


def test_zo_autocast_applies_to_the_zeroth_order_passes_only():
    model, x, y = make_problem(23)
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1, n_dirs=2, zo_autocast=torch.bfloat16)
    dtypes = []

    def closure():
        out = model(x)
        dtypes.append(out.dtype)
        return torch.nn.functional.cross_entropy(out.float(), y)

    opt.step(closure)
    assert dtypes == [torch.bfloat16] * 4 + [torch.float32]
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (host-device syncs exist only there)")
def test_cuda_step_without_finiteness_check_never_syncs():
    model, x, y = make_problem(24, batchnorm=True, device="cuda")
    masks = random_masks(model, 0.5, 24)
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9, n_dirs=2,
                   masks=masks, check_finite=False)
    closure = lambda: torch.nn.functional.cross_entropy(model(x), y)  # noqa: E731
    opt.step(closure)                        # first step: lazy state, kernel compilation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            opt.step(closure)
    finally:
        torch.cuda.set_sync_debug_mode("default")
