#!/usr/bin/env bash
# On a lent GPU machine (device tool): build, run the whole suite with the
# Triton kernels compiled, then the kernel roofline, the step benchmarks (every
# row, with a profile) and the ZO quality study. Uses the machine's own torch
# and triton (no venv: the device has no network). Everything lands in $OUT.
#
#   benchmarks/gpu_check.sh [tests|kernels|bench|train|all]
#
# A device call may run 10 minutes: give each stage its own call (tests, then
# kernels, then bench); "all" runs them in one. Each stage builds first (a
# no-op when the build is there).
set -uo pipefail
OUT=${OUT:-out}
STAGE=${1:-all}
mkdir -p "$OUT"

build() {
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
    date -u
  } > "$OUT/versions.txt" 2>&1
  pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
}

tests() {
  python -m pytest tests -q -rs > "$OUT/tests.log" 2>&1; echo "pytest rc=$?" >> "$OUT/tests.log"
  tail -n 15 "$OUT/tests.log"
}

kernels() {
  python benchmarks/kernels.py --json "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1
  cat "$OUT/kernels.log"
}

bench() {
  python -m zosam_kernels.bench --methods sgd,sam,zosam,zosam-unfused,zosam-frac,zosam-bf16 \
    --json "$OUT/bench_resnet32.json" --profile "$OUT/profile" > "$OUT/bench.log" 2>&1
  python -m zosam_kernels.bench --batch-size 512 --methods sgd,sam,zosam,zosam-frac,zosam-bf16 \
    --json "$OUT/bench_b512.json" > "$OUT/bench_b512.log" 2>&1
  python -m zosam_kernels.bench --model resnet32_wide --methods sgd,sam,zosam,zosam-frac \
    --json "$OUT/bench_wide.json" > "$OUT/bench_wide.log" 2>&1
  python -m zosam_kernels.bench --methods sgd,sam,zosam,esam,looksam,gsam,ssam-f,ssam-d,zolooksam,zossam \
    --json "$OUT/bench_family.json" > "$OUT/bench_family.log" 2>&1
  python -m zosam_kernels.bench --methods sgd,zosam,zosam-no-crn,zosam-clip,zosam-scaler,zosam-micro4 \
    --json "$OUT/bench_loop.json" > "$OUT/bench_loop.log" 2>&1
  python -m zosam_kernels.bench --bf16 --channels-last --methods sgd,sam,zosam \
    --json "$OUT/bench_bf16.json" > "$OUT/bench_bf16.log" 2>&1
  python benchmarks/zo_quality.py --json "$OUT/zo_quality.json" > "$OUT/zo_quality.log" 2>&1
  cat "$OUT/bench.log" "$OUT/bench_b512.log" "$OUT/bench_wide.log" "$OUT/bench_family.log" \
    "$OUT/bench_loop.log" "$OUT/bench_bf16.log" "$OUT/zo_quality.log"
}

# zosam-train on CUDA: seconds per epoch of ResNet-32 on the synthetic data
# (5000 images) for SGD, SAM and ZO-SAM, and a run cut after epoch 1 and
# resumed, against the same run uninterrupted (cuDNN may make CUDA differ in
# the last bits: the log shows how much).
train() {
  for opt in sgd sam zosam; do
    python -m zosam_kernels.train --optimizer "$opt" --epochs 3 --progress off --workers 4 \
      --out "$OUT/train/$opt" > "$OUT/train_$opt.log" 2>&1
  done
  args="--sparse rigl --density 0.1 --update-interval 10 --optimizer zosam --epochs 2 --progress off"
  python -m zosam_kernels.train $args --out "$OUT/train/whole" > "$OUT/train_resume.log" 2>&1
  python -m zosam_kernels.train $args --out "$OUT/train/cut" --stop-after 1 >> "$OUT/train_resume.log" 2>&1
  python -m zosam_kernels.train $args --out "$OUT/train/cut" --resume >> "$OUT/train_resume.log" 2>&1
  rm -f "$OUT"/train/*/checkpoint.pt
  python - "$OUT/train" <<'PY' | tee "$OUT/train_summary.txt"
import json, sys
root = sys.argv[1]
rows = lambda run: [json.loads(l) for l in open(f"{root}/{run}/metrics.jsonl")]
for opt in ("sgd", "sam", "zosam"):
    r = rows(opt)
    print(opt, "epoch_s", [round(x["epoch_s"], 2) for x in r], "img/s", [round(x["images_per_s"]) for x in r])
keys = ("train_loss", "test_loss", "test_acc", "density")
for a, b in zip(rows("whole"), rows("cut")):
    print("epoch", a["epoch"], {k: (a[k], b[k]) for k in keys}, "equal" if all(a[k] == b[k] for k in keys) else "DIFFER")
PY
}

build
cat "$OUT/versions.txt"
case "$STAGE" in
  tests) tests ;;
  kernels) kernels ;;
  bench) bench ;;
  train) train ;;
  all) tests; kernels; bench; train ;;
  *) echo "stage must be tests, kernels, bench, train or all, got $STAGE" >&2; exit 2 ;;
esac
