"""The CPU study of the paper's claims (benchmarks/RESULTS.md, "The paper's
claims on the CPU"): one zosam-train command per run, printed for a runner.

    python benchmarks/study.py --runs /tmp/study > study.sh
    OMP_NUM_THREADS=1 xargs -P 2 -I{} sh -c {} < study.sh      # two runs at a time, one thread each
    zosam-report /tmp/study/* --plot acc.png

Setting (chosen before any result was seen, to fit about an hour of 2 CPU
cores): CIFAR ResNet-20 on scikit-learn's digits at 32x32, the first 384
training images with 30 % of their labels replaced by another class (the
360 test images stay clean), batch 32, 12 epochs (144 steps), LR 0.05
cosine; SNIP and RigL (one topology update per epoch) at 90 % and 98 %
sparsity; SGD, SAM (ρ = 0.05), ZO-SAM with m = 1 and m = 4 (ρ = 0.05,
δ = 1e-3); 5 seeds. Every run measures the gradient variance at epochs 1, 6 and 12, the
perturbation's cosine with the gradient (SAM family), and the corrupted test
accuracy (all corruptions, severities 1-5); the seed-0 runs also the Hessian
(10 power iterations, 4 Hutchinson samples), and the seed-0 RigL 90 % runs of
SGD and ZO-SAM m = 1 the loss landscape.
"""
import argparse
import os

OPTIMIZERS = {"sgd": "--optimizer sgd", "sam": "--optimizer sam",
              "zosam-m1": "--optimizer zosam --n-dirs 1", "zosam-m4": "--optimizer zosam --n-dirs 4"}
COMMON = ("zosam-train --data digits --train-size 384 --label-noise 0.3 --model resnet20 --batch-size 32 "
          "--epochs 12 --lr 0.05 --update-interval 12 --progress off --corrupt all "
          "--diagnostics-epochs 1,6,12 --hessian-iters 10 --hessian-samples 4")


def commands(runs, seeds):
    for seed in range(seeds):
        for sparse in ("snip", "rigl"):
            for density in (0.1, 0.02):
                for name, opt in OPTIMIZERS.items():
                    diagnostics = "gradvar" + ("" if name == "sgd" else ",ascent")
                    if seed == 0:
                        diagnostics += ",hessian"
                        if (sparse, density, name) in (("rigl", 0.1, "sgd"), ("rigl", 0.1, "zosam-m1")):
                            diagnostics += ",landscape"
                    out = os.path.join(runs, f"{sparse}-{density:g}-{name}-s{seed}")
                    yield (f"{COMMON} --sparse {sparse} --density {density:g} {opt} --seed {seed} "
                           f"--diagnostics {diagnostics} --out {out} > {out}.log 2>&1")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="study", help="parent folder of the runs")
    p.add_argument("--seeds", type=int, default=5)
    args = p.parse_args(argv)
    print("\n".join(commands(args.runs, args.seeds)))


if __name__ == "__main__":
    main()
