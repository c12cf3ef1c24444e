"""The optimizers with a torch.compile'd model in the closure: how many graphs
Dynamo compiles, and whether BatchNorm running statistics move once per step.

    python benchmarks/compile_batchnorm.py [--backend aot_eager] [--steps 6] [--methods zosam sam]

Per method: a small CNN with two BatchNorm2d layers, compiled fresh; after
each step, the graphs compiled so far (a counting backend, so every graph
Dynamo hands over is counted, whatever triggered it) and num_batches_tracked
of the first BatchNorm (the step number when the statistics move once per
step); at the end, whether its running_mean equals that of an eager copy of
the model trained by the same optimizer, and the step time after warm-up.
"""
import copy

import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend

import zosam_kernels as zk

import harness

METHODS = {
    "zosam": lambda p: zk.ZOSAM(p, torch.optim.SGD, lr=0.05, momentum=0.9, n_dirs=2),
    "sam": lambda p: zk.SAM(p, torch.optim.SGD, lr=0.05, momentum=0.9),
    "gsam": lambda p: zk.GSAM(p, torch.optim.SGD, lr=0.05, momentum=0.9, alpha=0.3),
    "esam": lambda p: zk.ESAM(p, torch.optim.SGD, lr=0.05, momentum=0.9, beta=0.5, gamma=0.5),
    # without the random choice of tensors, whose requires_grad switches Dynamo guards on
    "esam-beta1": lambda p: zk.ESAM(p, torch.optim.SGD, lr=0.05, momentum=0.9, beta=1.0, gamma=0.5),
}


def small_cnn():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))


def run(method, backend, steps, timed):
    torch.manual_seed(0)
    model = small_cnn()
    eager = copy.deepcopy(model)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    torch._dynamo.reset()
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter)
    opt, ref = METHODS[method](model.parameters()), METHODS[method](eager.parameters())
    closure = lambda indices=None: F.cross_entropy(   # noqa: E731
        compiled(x if indices is None else x[indices]), y if indices is None else y[indices],
        reduction="none")
    ref_closure = lambda indices=None: F.cross_entropy(   # noqa: E731
        eager(x if indices is None else x[indices]), y if indices is None else y[indices],
        reduction="none")
    graphs, tracked = [], []
    for _ in range(steps):
        opt.step(closure)
        ref.step(ref_closure)
        graphs.append(counter.frame_count)
        tracked.append(int(model[1].num_batches_tracked))
    same_stats = torch.allclose(model[1].running_mean, eager[1].running_mean, atol=1e-5)
    def steps():
        for _ in range(timed):
            opt.step(closure)
    ms = harness.timed(steps, next(model.parameters()).device) / timed * 1e3 if timed else float("nan")
    return graphs, tracked, same_stats, ms


def main(argv=None):
    p = harness.parser(__doc__)
    p.add_argument("--backend", default="aot_eager")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--timed", type=int, default=0, help="steps timed after the counted ones")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, backend {args.backend}, {torch.get_num_threads()} threads")
    print("method | graphs after each step | num_batches_tracked after each step | "
          "running_mean = eager's | ms/step")
    rows = []
    for method in args.methods:
        graphs, tracked, same, ms = run(method, args.backend, args.steps, args.timed)
        print(f"{method} | {graphs} | {tracked} | {same} | {ms:.1f}")
        rows.append(dict(method=method, graphs=graphs, num_batches_tracked=tracked, running_mean_as_eager=same,
                         ms_per_step=ms))
    harness.save(args, rows)


if __name__ == "__main__":
    main()
