"""What one zeroth-order pass costs against a forward + backward: the ratio r
that bounds ZO-SAM's speed-up over SAM at 2 / (1 + 2mr) (benchmarks/RESULTS.md).

    python benchmarks/forward_cost.py [--model resnet32] [--batch-size 128] [--reps 6]
                                      [--n-dirs 1] [--device cuda|cpu]

Interleaved, median of --reps: a forward under no_grad, under inference_mode,
the optimizers' extra pass (no_grad, its BatchNorm statistics copied and
restored), and a forward + backward; then whole steps: SGD, SAM, ZOSAM, and
ZOSAM's passes by hand (2m extra passes, a forward + backward, the SGD step,
no perturbation), so that what the optimizer adds to its passes is
t(ZOSAM) - t(by hand), and what a pass costs inside a step is
r_step = (t(by hand) - t(SGD)) / (2m t(SGD)).

Last line: the speed-up over SAM that the passes allow,
2 t(fwd+bwd) / (2m t(extra pass) + t(fwd+bwd)), against the one measured,
t(SAM) / t(ZOSAM), all from this run. On CUDA each call is timed between two
device synchronisations.
"""
import statistics

import torch
import torch.nn.functional as F

from zosam_kernels import SAM, ZOSAM
from zosam_kernels.data import synthetic_cifar
from zosam_kernels.models import MODELS
from zosam_kernels.optim.passes import Passes

import harness


def main(argv=None):
    p = harness.parser(__doc__)
    p.add_argument("--model", default="resnet32", choices=sorted(MODELS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--n-dirs", type=int, default=1, help="ZO-SAM's m: 2m extra passes per step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.n_dirs < 1 or args.reps < 1:
        p.error("--n-dirs and --reps must be >= 1")
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = MODELS[args.model]().to(device)
    x, y = (t.to(device) for t in next(synthetic_cifar(args.batch_size)))

    def closure():
        return F.cross_entropy(model(x), y)

    def no_grad():
        with torch.no_grad():
            closure()

    def inference_mode():
        with torch.inference_mode():
            closure()

    def forward_backward():
        model.zero_grad(set_to_none=True)   # as in a step: backward makes the gradients, adds to none
        closure().backward()

    # every whole step trains with lr 0, so all of them see the same weights
    sgd = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    sam = SAM(model.parameters(), torch.optim.SGD, lr=0.0, momentum=0.9)
    zosam = ZOSAM(model.parameters(), torch.optim.SGD, lr=0.0, momentum=0.9, n_dirs=args.n_dirs)
    extra = Passes()

    def sgd_step():
        forward_backward()
        sgd.step()

    def by_hand():
        for _ in range(2 * args.n_dirs):
            extra.extra(closure)
        sgd_step()

    def sam_step():
        sam.zero_grad()
        sam.step(closure)

    def zosam_step():
        zosam.zero_grad()   # not needed (ZOSAM drops the gradients itself): as SGD's loop does
        zosam.step(closure)

    cases = {"no_grad forward": no_grad, "inference_mode forward": inference_mode,
             "extra_pass (no_grad, BN restored)": lambda: extra.extra(closure),
             "forward + backward": forward_backward,
             "step: SGD": sgd_step, "step: SAM": sam_step,
             "step: ZOSAM's passes by hand": by_hand, "step: ZOSAM": zosam_step}
    times = {name: [] for name in cases}
    for f in cases.values():
        f()
    for _ in range(args.reps):   # interleaved, so drift hits every case alike
        for name, f in cases.items():
            times[name].append(harness.timed(f, device))
    med = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"cpu, {torch.get_num_threads()} threads")
    print(f"{args.model}, batch {args.batch_size}, m = {args.n_dirs}, {where}, torch {torch.__version__}, "
          f"median of {args.reps}")
    for name, ms in med.items():
        print(f"{name:<40}{ms:8.2f} ms   / forward + backward = {ms / med['forward + backward']:.2f}")
    sgd_ms, sam_ms, hand_ms, zo_ms = (med[f"step: {k}"] for k in
                                      ("SGD", "SAM", "ZOSAM's passes by hand", "ZOSAM"))
    m = args.n_dirs
    print(f"r_step = {(hand_ms - sgd_ms) / (2 * m * sgd_ms):.2f}; ZOSAM - by hand = {zo_ms - hand_ms:.2f} ms "
          f"({(zo_ms - hand_ms) / zo_ms:.1%} of the step)")
    fb, pass_ms = med["forward + backward"], med["extra_pass (no_grad, BN restored)"]
    allowed, got = 2 * fb / (2 * m * pass_ms + fb), sam_ms / zo_ms
    print(f"x SAM allowed by the passes {allowed:.2f}, measured {got:.2f} ({got / allowed:.1%} of it)")
    harness.save(args, [dict(case=name, ms=ms, per_forward_backward=ms / fb) for name, ms in med.items()],
                 device=where, speedup_over_sam=dict(allowed=allowed, measured=got))


if __name__ == "__main__":
    main()
