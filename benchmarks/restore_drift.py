"""How far the weights drift when every step's moves should cancel: ZOSAM over
SGD with lr = 0, so θ_T = θ_0 in exact arithmetic, and all that moves θ is
float32 rounding in θ + δu − 2δu + (ε + δu) − ε.

    python benchmarks/restore_drift.py [--steps 100000] [--n-dirs 1] [--json PATH]

Prints ‖θ_t − θ_0‖ / ‖θ_0‖ and the share of weights that moved at powers of
ten of t; a small MLP on a fixed random batch keeps 1e5 steps to minutes.
"""
import time

import torch
import torch.nn.functional as F

import zosam_kernels as zk

import harness


def main(argv=None):
    p = harness.parser(__doc__)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--n-dirs", type=int, default=1)
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--delta", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--adaptive", action="store_true")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, args.width), torch.nn.Tanh(),
                                torch.nn.Linear(args.width, 10))
    x, y = torch.randn(64, 32), torch.randint(0, 10, (64,))
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.0, rho=args.rho, delta=args.delta,
                   n_dirs=args.n_dirs, adaptive=args.adaptive, check_finite=False)
    theta0 = opt.flat.buffers[0].clone()
    norm0 = float(theta0.norm())
    closure = lambda: F.cross_entropy(model(x), y)  # noqa: E731
    rows, t0 = [], time.perf_counter()
    checkpoints = {10 ** k for k in range(1, 9)} | {args.steps}
    print(f"ZOSAM lr=0, n_dirs={args.n_dirs}, rho={args.rho}, delta={args.delta}, adaptive="
          f"{args.adaptive}, {opt.layout.numel} weights, ‖θ0‖={norm0:.3f}, torch {torch.__version__}")
    print("| steps | ‖θ−θ0‖/‖θ0‖ | weights moved | max |Δθ| / |θ0| |")
    print("| ---: | ---: | ---: | ---: |")
    for t in range(1, args.steps + 1):
        opt.step(closure)
        if t in checkpoints:
            theta = opt.flat.buffers[0]
            diff = (theta - theta0).abs()
            row = dict(steps=t, relative=float(diff.norm()) / norm0,
                       moved=float((diff > 0).float().mean()),
                       max_relative=float((diff / theta0.abs().clamp_min(1e-30)).max()))
            rows.append(row)
            print(f"| {t} | {row['relative']:.2e} | {row['moved']:.3f} | {row['max_relative']:.2e} |",
                  flush=True)
    print(f"{time.perf_counter() - t0:.0f} s")
    harness.save(args, rows)


if __name__ == "__main__":
    main()
