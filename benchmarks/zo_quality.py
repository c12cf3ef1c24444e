"""How much the cheaper zeroth-order passes cost in estimate quality.

    python benchmarks/zo_quality.py [--model resnet20] [--batch-size 128] [--seeds 32] [--json PATH]

At fixed weights (the model at initialisation) and on one synthetic batch
(zosam_kernels.data), for the same seeds s_1..s_N, each variant computes the
coefficients c_i = (L(θ + δu_i) − L(θ − δu_i)) / 2δ exactly as ZOSAM does
(no-grad passes, BatchNorm statistics frozen, directions from the fused op)
and is compared with full-batch float32:

- sign agreement: the share of seeds whose c_i has the reference's sign.
  With n_dirs = 1 this is all that matters: ε = ρ c u / ‖c u‖ = ρ sign(c) u / ‖u‖.
- cos(ĝ): cosine between ĝ = Σ c_i u_i of the variant and of the reference
  (the m = N estimate with shared seeds), computed exactly from the stream
  with directions_sq_norm: <A, B> = (‖A + B‖² − ‖A − B‖²) / 4.
- noise: std(c − c_ref) / std(c_ref), the error relative to the signal.
"""
import math

import torch
import torch.nn.functional as F

from zosam_kernels import ops
from zosam_kernels.data import synthetic_cifar
from zosam_kernels.flat import FlatParams, Layout
from zosam_kernels.models import MODELS
from zosam_kernels.optim.passes import Passes

import harness

VARIANTS = {   # name: (zo_batch_fraction, autocast dtype)
    "fp32, full batch": (1.0, None),
    "fp32, fraction 0.5": (0.5, None),
    "fp32, fraction 0.25": (0.25, None),
    "fp32, fraction 0.125": (0.125, None),
    "bf16 autocast, full batch": (1.0, torch.bfloat16),
    "bf16 autocast, fraction 0.25": (0.25, torch.bfloat16),
}


def coefficients(model, flat, x, y, seeds, delta, fraction, dtype, device):
    buffer = flat.buffers[0]
    extra_pass = Passes()
    n = math.ceil(fraction * len(x))

    def closure():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(x[:n])
        return F.cross_entropy(out.float(), y[:n])

    coefs = []
    for s in seeds:
        seed = torch.tensor([s], device=device)
        ops.add_directions_(buffer, seed, torch.tensor([delta], device=device))
        plus = extra_pass.extra(closure)
        ops.add_directions_(buffer, seed, torch.tensor([-2 * delta], device=device))
        minus = extra_pass.extra(closure)
        ops.add_directions_(buffer, seed, torch.tensor([delta], device=device))
        coefs.append(((plus - minus) / (2 * delta)).float())
    return torch.stack(coefs)


def cosine(seeds, a, b, numel):
    sq = lambda c: ops.directions_sq_norm(seeds, c, numel).double()  # noqa: E731
    dot = (sq(a + b) - sq(a - b)) / 4
    return float(dot / (sq(a).sqrt() * sq(b).sqrt()))


def main(argv=None):
    p = harness.parser(__doc__)
    p.add_argument("--model", default="resnet20", choices=sorted(MODELS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seeds", type=int, default=32)
    p.add_argument("--delta", type=float, default=1e-3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = MODELS[args.model]().to(device)
    flat = FlatParams(Layout(model.parameters()))
    x, y = next(synthetic_cifar(args.batch_size, seed=1))
    x, y = x.to(device), y.to(device)
    seeds = list(range(1000, 1000 + args.seeds))
    seeds_t = torch.tensor(seeds, device=device)

    results = {}
    for name, (fraction, dtype) in VARIANTS.items():
        results[name] = coefficients(model, flat, x, y, seeds, args.delta, fraction, dtype, device)
    ref = results["fp32, full batch"]
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.model}, batch {args.batch_size}, delta {args.delta}, {args.seeds} seeds, {label}, "
          f"torch {torch.__version__}")
    print("| variant | sign agreement | cos(ĝ) | noise |")
    print("| --- | ---: | ---: | ---: |")
    rows = []
    for name, c in results.items():
        row = dict(variant=name, sign_agreement=float((c.sign() == ref.sign()).float().mean()),
                   cosine=cosine(seeds_t, c, ref, flat.layout.numel),
                   noise=float((c - ref).std() / ref.std()))
        rows.append(row)
        print(f"| {name} | {row['sign_agreement']:.2f} | {row['cosine']:.3f} | {row['noise']:.3f} |")
    harness.save(args, rows, device=label, coefficients={k: v.tolist() for k, v in results.items()})


if __name__ == "__main__":
    main()
