"""How much noise dropout puts into ZO-SAM's coefficient c = (L(θ+δu) − L(θ−δu)) / 2δ,
with and without common random numbers.

    python benchmarks/crn_noise.py [--draws 300] [--dropout 0.1 0.5] [--json PATH]

At fixed weights and one fixed direction u (lr = 0, the step counter reset so
every step draws the same u), each step sees a new draw of the dropout masks
and of an input-noise augmentation inside the closure. With common random
numbers both passes of a step share the draw, so c varies only as the
directional derivative of each draw's loss does (the noise SGD's gradient has
too); without, the two passes draw apart and their loss difference, divided by
2δ, swamps it. Prints mean and standard deviation of c over the draws, and the
share of draws whose sign agrees with the mean's.
"""
import statistics

import torch
import torch.nn.functional as F

import zosam_kernels as zk

import harness


def coefficients(dropout, crn, draws, delta):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.GELU(), torch.nn.Dropout(dropout),
                                torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Dropout(dropout),
                                torch.nn.Linear(256, 10))
    x, y = torch.randn(256, 32), torch.randint(0, 10, (256,))

    def closure():
        return F.cross_entropy(model(x + 0.1 * torch.randn_like(x)), y)

    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.0, delta=delta, n_dirs=1,
                   common_random_numbers=crn)
    out = []
    for i in range(draws):
        torch.manual_seed(1000 + i)
        opt.step_count = 0   # the same direction u at every step
        opt.step(closure)
        out.append(float(opt.last_coefficients[0]))
    return out


def main(argv=None):
    p = harness.parser(__doc__)
    p.add_argument("--draws", type=int, default=300)
    p.add_argument("--dropout", type=float, nargs="+", default=[0.1, 0.5])
    p.add_argument("--delta", type=float, default=1e-3)
    args = p.parse_args(argv)
    rows = []
    print(f"MLP 32-256-256-10 with dropout, input noise 0.1, batch 256, δ = {args.delta}, "
          f"{args.draws} draws, torch {torch.__version__}")
    print("| dropout | common random numbers | mean c | std c | std / |mean| | sign = mean's |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for p_drop in args.dropout:
        for crn in (True, False):
            c = coefficients(p_drop, crn, args.draws, args.delta)
            mean, std = statistics.fmean(c), statistics.stdev(c)
            agree = sum((ci > 0) == (mean > 0) for ci in c) / len(c)
            rows.append(dict(dropout=p_drop, crn=crn, mean=mean, std=std, agree=agree))
            print(f"| {p_drop} | {'on' if crn else 'off'} | {mean:.4f} | {std:.4f} | "
                  f"{std / abs(mean):.2f} | {agree:.2f} |", flush=True)
    harness.save(args, rows)


if __name__ == "__main__":
    main()
