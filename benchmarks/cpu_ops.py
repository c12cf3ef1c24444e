"""Fused CPU ops at 1e7 elements against a naive torch version and a memory copy.

    .venv/bin/python benchmarks/cpu_ops.py
Median of 15 calls after one warm-up; GB/s counts the 8 bytes of theta read
and written per element. (The full roofline benchmark is issue 3's.)
"""
import statistics
import time

import torch

from zosam_kernels import ops


def median_seconds(f, reps=15):
    f()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(n=10**7):
    theta, other = torch.randn(n), torch.randn(n)
    seeds, coefs = torch.tensor([123]), torch.tensor([0.5])
    cases = {
        "theta.copy_(other) (memory roofline)": lambda: theta.copy_(other),
        "add_directions_, K = 1": lambda: ops.add_directions_(theta, seeds, coefs),
        "add_directions_, K = 4": lambda: ops.add_directions_(theta, torch.arange(4), torch.ones(4)),
        "directions_sq_norm, K = 1": lambda: ops.directions_sq_norm(seeds, coefs, n),
        "naive theta.add_(torch.randn(n) * c)": lambda: theta.add_(torch.randn(n) * coefs),
    }
    print(f"| op | ms | GB/s | Gelem/s |  (n = {n}, {torch.get_num_threads()} threads)")
    for name, f in cases.items():
        s = median_seconds(f)
        print(f"| {name} | {s * 1e3:.1f} | {8 * n / s / 1e9:.1f} | {n / s / 1e9:.2f} |")


if __name__ == "__main__":
    main()
