"""What the training loop's options add to a ZO-SAM step, timed as their own
work (whole-step differences drown in a shared VM's spread).

    python benchmarks/loop_options_cost.py [--model resnet32] [--batch-size 128] [--reps 50]

On the model's real gradients, median of --reps: common random numbers (save
the random state once, restore it before each of the 2m + 1 passes), the
grad scaler (scale the loss, unscale the gradients and check them, update),
clipping (the global norm and the scaling), against an SGD step of the same
model timed in the same run. Micro-batches change the passes themselves:
zosam-bench --methods zosam,zosam-micro4 times them whole.
"""

import torch
import torch.nn.functional as F

from zosam_kernels.data import synthetic_cifar
from zosam_kernels.models import MODELS
from zosam_kernels.optim.batchnorm import BatchNormStatistics
from zosam_kernels.optim.passes import RandomState

import harness


def main(argv=None):
    p = harness.parser(__doc__)
    p.add_argument("--model", default="resnet32", choices=sorted(MODELS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--n-dirs", type=int, default=1)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = MODELS[args.model]()
    params = list(model.parameters())
    x, y = next(synthetic_cifar(args.batch_size))
    sgd = torch.optim.SGD(params, lr=0.0, momentum=0.9)

    def sgd_step():
        sgd.zero_grad()
        F.cross_entropy(model(x), y).backward()
        sgd.step()
    cpu = torch.device("cpu")
    step_ms = harness.median_ms(sgd_step, cpu, max(3, args.reps // 10))

    passes = 2 * args.n_dirs + 1
    random_state = RandomState([torch.device("cpu")])

    def crn():
        random_state.save()
        for _ in range(passes):
            random_state.restore()

    scaler = torch.amp.GradScaler("cpu")
    loss = torch.tensor(2.3, requires_grad=True)

    def grad_scaler():
        scaler.scale(loss)
        scaler.unscale_(sgd)
        norms = torch._foreach_norm([q.grad for q in params])
        torch.stack(norms).isfinite().all()
        scaler.update()

    grads = [q.grad.clone() for q in params]

    def clip():
        for q, g in zip(params, grads):
            q.grad.copy_(g)   # the same gradient every time (counted: a copy of the gradients)
        torch.nn.utils.clip_grad_norm_(params, 1.0)

    statistics = BatchNormStatistics()
    with torch.no_grad(), statistics.frozen():   # the first frozen pass finds the layers
        model(x)

    def freeze():
        with statistics.frozen():
            pass

    copy_ms = harness.median_ms(lambda: [q.grad.copy_(g) for q, g in zip(params, grads)], cpu, args.reps)
    rows = {"common random numbers": harness.median_ms(crn, cpu, args.reps),
            "grad scaler": harness.median_ms(grad_scaler, cpu, args.reps),
            "max_grad_norm": harness.median_ms(clip, cpu, args.reps) - copy_ms,
            "BatchNorm freezing, per extra pass": harness.median_ms(freeze, cpu, args.reps)}
    n = sum(q.numel() for q in params)
    print(f"{args.model} ({n} weights), batch {args.batch_size}, n_dirs {args.n_dirs}, cpu, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; SGD step {step_ms:.1f} ms")
    print("| option | ms per step | share of an SGD step |")
    print("| --- | ---: | ---: |")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.3f} | {ms / step_ms:.2%} |")
    harness.save(args, [dict(option=name, ms=ms, share_of_sgd_step=ms / step_ms) for name, ms in rows.items()],
                 sgd_step_ms=step_ms)


if __name__ == "__main__":
    main()
