"""Kernel roofline: the fused ops against a memory copy, a naive torch
version and (on CUDA) a one-normal-per-Philox tl.randn kernel, in one run.

    python benchmarks/kernels.py [--device cuda|cpu] [--sizes 1e5,1e6,1e7,1e8] [--json PATH]
                                 [--sweep 1e7,1e8]

--sweep: the Triton add_directions_ (K = 1) over its launch geometry, Philox
counters per program (BLOCK_Q, 4 elements each) x num_warps, against the copy
at each size (the first thing to try when the kernel misses the roofline),
each checked against the default geometry's result.

Defaults: sizes 1e5..1e8 on CUDA, 1e5..1e7 on the CPU. Times are medians
(triton.testing.do_bench on CUDA; 15 calls after a warm-up on the CPU).
Bytes per element: theta read and written (8), plus the mask (1) when there
is one; directions_sq_norm reads no weights, so only its elements/s mean
something. "x copy" is the op's elements/s over theta.copy_(other)'s,
measured at the same size in the same run: 1.0 means the op runs as fast as
memory can move the weights.
"""

import torch

from zosam_kernels import ops

import harness


def median_ms(f, device):
    """The median of 15 timed calls (100 on a GPU, after 25 warm-up calls there)."""
    if device.type == "cuda":
        return harness.median_ms(f, device, reps=100, warmup=25)
    return harness.median_ms(f, device, reps=15)


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


def sweep(sizes, device, blocks=(64, 128, 256, 512, 1024), warps=(2, 4, 8)):
    """Rows of the geometry sweep. The launchers read BLOCK_Q and the launch
    options from their module at each call, so the sweep sets them there and
    puts them back. Each geometry's result is also compared with the default
    one's on the same input: every element is computed alike whatever the
    tiling, so max_abs_diff must be 0."""
    from zosam_kernels.ops import triton_kernels as tk
    saved = tk.BLOCK_Q, dict(tk._LAUNCH_OPTIONS)
    seeds = torch.arange(100, 101, device=device)
    coefs = torch.full((1,), 1e-3, device=device)
    rows = []
    try:
        for n in sizes:
            theta, other = torch.randn(n, device=device), torch.randn(n, device=device)
            expected = other.clone()
            tk.add_directions_(expected, seeds, coefs)
            copy_ms = median_ms(lambda: theta.copy_(other), device)
            for block_q in blocks:
                for w in warps:
                    tk.BLOCK_Q, tk._LAUNCH_OPTIONS["num_warps"] = block_q, w
                    got = other.clone()
                    tk.add_directions_(got, seeds, coefs)
                    diff = (got - expected).abs().max().item()
                    ms = median_ms(lambda: tk.add_directions_(theta, seeds, coefs), device)
                    rows.append(dict(elements=n, block_q=block_q, num_warps=w, ms=ms,
                                     gb_per_s=8 * n / ms / 1e6, vs_copy=copy_ms / ms, max_abs_diff=diff))
                    print(f"| {n:.0e} | {block_q} | {w} | {ms:.3f} | {8 * n / ms / 1e6:.1f} | "
                          f"{copy_ms / ms:.2f} | {diff:.1e} |", flush=True)
    finally:
        tk.BLOCK_Q = saved[0]
        tk._LAUNCH_OPTIONS.clear()
        tk._LAUNCH_OPTIONS.update(saved[1])
    return rows


def main(argv=None):
    p = harness.parser(__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default=None, help="comma-separated element counts")
    p.add_argument("--sweep", default=None, help="comma-separated element counts for the geometry sweep")
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
    sweep_rows = []
    if args.sweep:
        print("\nadd_directions_ K=1 (Triton) over the launch geometry; default BLOCK_Q 256, num_warps 4")
        print("| elements | BLOCK_Q | num_warps | ms | GB/s | x copy | max diff from default |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        sweep_rows = sweep([int(float(s)) for s in args.sweep.split(",")], device)
    harness.save(args, rows, device=name, sweep=sweep_rows)


if __name__ == "__main__":
    main()
