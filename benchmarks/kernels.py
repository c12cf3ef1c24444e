"""Kernel roofline: the fused ops against a memory copy, a naive torch
version and (on CUDA) a one-normal-per-Philox tl.randn kernel, in one run.

    python benchmarks/kernels.py [--device cuda|cpu] [--sizes 1e5,1e6,1e7,1e8] [--json PATH]

Defaults: sizes 1e5..1e8 on CUDA, 1e5..1e7 on the CPU. Times are medians
(triton.testing.do_bench on CUDA; 15 calls after a warm-up on the CPU).
Bytes per element: theta read and written (8), plus the mask (1) when there
is one; directions_sq_norm reads no weights, so only its elements/s mean
something. "x copy" is the op's elements/s over theta.copy_(other)'s,
measured at the same size in the same run: 1.0 means the op runs as fast as
memory can move the weights.
"""
import argparse
import json
import statistics
import time

import torch

from zosam_kernels import ops


def median_ms(f, device):
    if device.type == "cuda":
        import triton.testing
        return triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median")
    f()
    times = []
    for _ in range(15):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def randn_variant():
    """theta += c * tl.randn(seed, j): one Philox call per element (the tl.randn
    way), against the fused ops' four normals per call. CUDA only."""
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(theta_ptr, seed, c, n, BLOCK: tl.constexpr):
        j = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = j < n
        theta = tl.load(theta_ptr + j, mask=inside)
        tl.store(theta_ptr + j, theta + c * tl.randn(seed, j), mask=inside)

    def add_(theta, seed, c):
        n = theta.numel()
        kernel[(triton.cdiv(n, 1024),)](theta, seed, c, n, BLOCK=1024)
    return add_


def cases(n, device):
    theta = torch.randn(n, device=device)
    other = torch.randn(n, device=device)
    mask = torch.rand(n, device=device) < 0.1
    seeds = {k: torch.arange(100, 100 + k, device=device) for k in (1, 2, 4)}
    coefs = {k: torch.full((k,), 1e-3, device=device) for k in (1, 2, 4)}
    out = {"copy_ (roofline)": (8, lambda: theta.copy_(other))}
    for k in (1, 2, 4):
        out[f"add_directions_ K={k}"] = (8, lambda k=k: ops.add_directions_(theta, seeds[k], coefs[k]))
    out["add_directions_ K=1 masked"] = (9, lambda: ops.add_directions_(theta, seeds[1], coefs[1], mask))
    out["directions_sq_norm K=1"] = (0, lambda: ops.directions_sq_norm(seeds[1], coefs[1], n))
    # what one writes without the package: a direction materialised, scaled, added
    out["naive randn * c + add_"] = (8, lambda: theta.add_(torch.randn(n, device=device) * coefs[1]))
    if device.type == "cuda":
        add_randn = randn_variant()
        out["tl.randn, 1 normal/Philox"] = (8, lambda: add_randn(theta, 100, 1e-3))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default=None, help="comma-separated element counts")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    sizes = [int(float(s)) for s in (args.sizes or ("1e5,1e6,1e7,1e8" if device.type == "cuda"
                                                    else "1e5,1e6,1e7")).split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu, {torch.get_num_threads()} threads"
    print(f"{name}, torch {torch.__version__}")
    print("| elements | op | ms | GB/s | Gelem/s | x copy |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    rows = []
    for n in sizes:
        for op, (bytes_per, f) in cases(n, device).items():   # the copy comes first
            ms = median_ms(f, device)
            if op.startswith("copy_"):
                copy_ms = ms
            gbs = bytes_per * n / ms / 1e6 if bytes_per else None
            rows.append(dict(elements=n, op=op, ms=ms, gb_per_s=gbs, gelem_per_s=n / ms / 1e6,
                             vs_copy=copy_ms / ms))
            print(f"| {n:.0e} | {op} | {ms:.3f} | {f'{gbs:.1f}' if gbs else '-'} | {n / ms / 1e6:.2f} | "
                  f"{copy_ms / ms:.2f} |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": name, "torch": torch.__version__, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
