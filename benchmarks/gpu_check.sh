#!/usr/bin/env bash
# shellcheck disable=SC2086  # the dry mode's *_TINY options split into words on purpose
# On a lent GPU machine (device tool): build, run the tests with the Triton
# kernels compiled, then the kernel roofline, the pass costs, the step
# benchmarks (with a profile) and zosam-train. Uses the machine's own python3,
# torch and triton (no venv: the device has no network). The suite also needs
# ruff, mypy and mnist1d, which the device image lacks: `make gpu-wheels` here
# puts their wheels in .whl/, and the `run` call carries them (carry [".whl"]);
# the script installs whatever wheels $WHEELS (default .whl) holds, beside the
# image's packages, before anything else runs.
#
#   benchmarks/gpu_check.sh [core|rest|all]
#
# Sized for the lease: 15 minutes of device time per task (the machine's
# start included), at most 10 minutes per call, at most 8 files back. So two
# calls, back to back while the machine is warm (the device tool's
# `run` with command "bash benchmarks/gpu_check.sh core", carry [".whl"],
# timeout_s 600; then
# the same with "rest"; then give the machine back):
#   core  build; the GPU tests (kernels against the reference, the stream
#         against the C++ one, the optimizers on CUDA, a step with no host
#         sync); the kernel roofline; forward_cost (the ratio the passes
#         allow); the main benchmark row, ResNet-32 batch 128, with a profile;
#         the Triton kernel's launch-geometry sweep
#   rest  batch 512, the 2x-wide ResNet-32, the SAM family, bf16 +
#         channels_last, the training loop's options; the whole suite; the ZO
#         quality study; zosam-train epochs and resume
# Each step runs under a timeout that also respects the stage's deadline
# (BUDGET_S seconds from the start, default 540), so the script always ends,
# and packs, before the call's limit. What comes back:
#   $OUT/summary.txt      a line per step: rc (124: timed out), seconds, limit
#   $OUT/versions.txt     GPU, driver, python, torch, triton, date
#   $OUT/<stage>.tar.gz   every log and JSON of the stage
#   $OUT/profile.tar.gz   (core) the Chrome/Perfetto traces, one per method
# and the end of stdout shows the summary and the main tables.
#
# DRY=1 runs every step on the CPU at tiny sizes, in seconds, so the script
# cannot drift from the package (tests/test_gpu_check.py, in `make test`):
# the Triton kernels interpreted, the benchmarks at batch 4 for one step, the
# test files collected rather than run (the suite runs them anyway), and the
# GPU-only steps (nvidia-smi, the editable build) reported as skipped.
set -uo pipefail
OUT=${OUT:-out}
STAGE=${1:-core}
case "$STAGE" in
  core | rest | all) ;;
  *) echo "stage must be core, rest or all, got $STAGE" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-540}
DRY=${DRY:-0}
WHEELS=${WHEELS:-.whl}
START=$SECONDS
RAW=$(mktemp -d)
SITE=$(mktemp -d)   # the carried wheels, installed (outside $RAW, which is packed)
mkdir -p "$OUT"
# the tree itself is importable even if the editable install fails
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# Options appended to each command in dry mode (argparse keeps the last value,
# so the method and model names under check stay the script's own).
if [ "$DRY" = 1 ]; then
  export TRITON_INTERPRET=1
  BENCH_TINY="--device cpu --batch-size 4 --steps 1 --warmup 0"   # 4: zosam-micro4
  KERNELS_TINY="--device cpu --sizes 1000,1001 --sweep 1001"
  PASSES_TINY="--device cpu --batch-size 2 --reps 1"
  QUALITY_TINY="--device cpu --batch-size 2 --seeds 2"
  TRAIN_TINY="--device cpu --train-size 8 --test-size 8 --batch-size 4 --eval-batch-size 8 --workers 0"
  PYTEST_TINY="--collect-only"
else
  unset TRITON_INTERPRET
  BENCH_TINY="" KERNELS_TINY="" PASSES_TINY="" QUALITY_TINY="" TRAIN_TINY="" PYTEST_TINY=""
fi

# gpu_only NAME CMD...: CMD as a step, or in dry mode reported as skipped
gpu_only() {
  local name=$1; shift
  if [ "$DRY" = 1 ]; then echo "$name: skipped, GPU only (dry mode)" | tee -a "$OUT/summary.txt"
  else step "$name" "$@"; fi
}

# step NAME MAX_S CMD...: CMD's output to $RAW/NAME.log, under
# min(MAX_S, what is left of the budget less 20 s for packing)
step() {
  local name=$1 max=$2; shift 2
  local left=$((BUDGET_S - (SECONDS - START) - 20))
  if ((left < 10)); then
    echo "$name: skipped, stage budget spent" | tee -a "$OUT/summary.txt"; return
  fi
  local limit=$((max < left ? max : left)) t0=$SECONDS
  timeout -k 5 "$limit" "$@" > "$RAW/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc $((SECONDS - t0))s (limit ${limit}s)" | tee -a "$OUT/summary.txt"
}

# pytest's closing summary (failures, errors, skips and the count) from a log
pytest_summary() {
  if grep -q "short test summary" "$1" 2> /dev/null; then
    sed -n '/short test summary/,$p' "$1" | tail -n 60
  else
    tail -n 1 "$1" 2> /dev/null
  fi
}

# pytest in parallel where pytest-xdist is installed (the device image has it)
pytest_n() {
  if [ "$DRY" != 1 ] && "$PY" -c "import xdist" 2> /dev/null; then echo "-n $1"; fi
}

pack() {
  if [ -d "$RAW/profile" ]; then
    tar czf "$OUT/profile.tar.gz" -C "$RAW" profile
    # one file comes back only under 16 MiB: keep SAM's and ZO-SAM's traces
    if [ "$(stat -c %s "$OUT/profile.tar.gz")" -gt 15000000 ]; then
      find "$RAW/profile" -name '*.json' ! -name sam.json ! -name zosam.json -delete
      tar czf "$OUT/profile.tar.gz" -C "$RAW" profile
    fi
    rm -rf "$RAW/profile"
  fi
  tar czf "$OUT/$STAGE.tar.gz" -C "$RAW" .
}
trap pack EXIT

build() {
  if compgen -G "$WHEELS/*.whl" > /dev/null; then
    step wheels 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH=$SITE:$PYTHONPATH
  fi
  {
    if [ "$DRY" = 1 ]; then echo "dry mode: no GPU"
    else nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv; fi
    "$PY" -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
    # the carried packages, as every step's Python finds them (through PYTHONPATH)
    "$PY" -c "import importlib.metadata as md, sys
names = sorted(d.metadata['Name'] for d in md.distributions(path=[sys.argv[1]]))
print('carried:', ', '.join(f'{n} {md.version(n)}' for n in names) or 'none')" "$SITE"
    date -u
  } > "$OUT/versions.txt" 2>&1
  cat "$OUT/versions.txt"
  gpu_only build 240 env MAX_JOBS=16 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
  step import 60 "$PY" -c "from zosam_kernels.ops import library as L; print('C++ extension', L.HAS_CPU_EXTENSION, 'triton', L.triton_kernels is not None)"
  cat "$RAW/import.log"
}

# The files whose tests touch CUDA or the Triton kernels: on this machine the
# kernels run compiled, and the stream, optimizer and no-sync tests run on CUDA.
GPU_TESTS="tests/test_triton_kernels.py tests/test_stream_agreement.py tests/test_zosam.py
  tests/test_behaviour.py tests/test_training_loop.py tests/test_sam.py tests/test_family.py"

core() {
  # shellcheck disable=SC2046
  step gpu_tests 180 "$PY" -m pytest -q -rfEs -p no:cacheprovider $(pytest_n 8) $PYTEST_TINY $GPU_TESTS
  step kernels 120 "$PY" benchmarks/kernels.py --json "$RAW/kernels.json" $KERNELS_TINY
  step forward_cost 60 "$PY" benchmarks/forward_cost.py --reps 20 $PASSES_TINY
  step bench 150 "$PY" -m zosam_kernels.bench --methods sgd,sam,zosam,zosam-unfused,zosam-frac,zosam-bf16 \
    --json "$RAW/bench_resnet32.json" --profile "$RAW/profile" $BENCH_TINY
  # 10000010: a weight count that is not a multiple of 16, as real models have
  # (no 16-byte accesses: benchmarks/RESULTS.md, the machine-code section)
  step kernel_sweep 120 "$PY" benchmarks/kernels.py --sizes 1e7,10000010 --sweep 1e7,1e8 \
    --json "$RAW/kernel_sweep.json" $KERNELS_TINY
  pytest_summary "$RAW/gpu_tests.log"
  cat "$RAW/kernels.log" "$RAW/forward_cost.log" "$RAW/bench.log" "$RAW/kernel_sweep.log" 2> /dev/null
}

rest() {
  step bench_b512 75 "$PY" -m zosam_kernels.bench --batch-size 512 --methods sgd,sam,zosam,zosam-frac,zosam-bf16 \
    --json "$RAW/bench_b512.json" $BENCH_TINY
  step bench_wide 75 "$PY" -m zosam_kernels.bench --model resnet32_wide --methods sgd,sam,zosam,zosam-frac \
    --json "$RAW/bench_wide.json" $BENCH_TINY
  step bench_family 90 "$PY" -m zosam_kernels.bench \
    --methods sgd,sam,zosam,esam,looksam,gsam,ssam-f,ssam-d,zolooksam,zossam --json "$RAW/bench_family.json" $BENCH_TINY
  step bench_bf16 60 "$PY" -m zosam_kernels.bench --bf16 --channels-last --methods sgd,sam,zosam \
    --json "$RAW/bench_bf16.json" $BENCH_TINY
  # shellcheck disable=SC2046
  step suite 240 "$PY" -m pytest tests -q -rfEs -p no:cacheprovider $(pytest_n 12) $PYTEST_TINY
  step train 150 bash -c train
  step bench_loop 60 "$PY" -m zosam_kernels.bench \
    --methods sgd,zosam,zosam-no-crn,zosam-clip,zosam-scaler,zosam-micro4 --json "$RAW/bench_loop.json" $BENCH_TINY
  step zo_quality 60 "$PY" benchmarks/zo_quality.py --json "$RAW/zo_quality.json" $QUALITY_TINY
  pytest_summary "$RAW/suite.log"
  for f in bench_b512 bench_wide bench_family bench_bf16 train bench_loop zo_quality; do
    echo "== $f"; cat "$RAW/$f.log" 2> /dev/null
  done
}

# zosam-train on CUDA: seconds per epoch of ResNet-32 on the synthetic data
# (5000 images) for SGD, SAM and ZO-SAM, and a run cut after epoch 1 and
# resumed, against the same run uninterrupted (cuDNN may make CUDA differ in
# the last bits: the log shows how much).
train() {
  local runs=$RAW/train
  for opt in sgd sam zosam; do
    "$PY" -m zosam_kernels.train --optimizer "$opt" --epochs 3 --progress off --workers 4 --out "$runs/$opt" \
      $TRAIN_TINY || return
  done
  local args="--sparse rigl --density 0.1 --update-interval 10 --optimizer zosam --epochs 2 --progress off $TRAIN_TINY"
  "$PY" -m zosam_kernels.train $args --out "$runs/whole" &&
    "$PY" -m zosam_kernels.train $args --out "$runs/cut" --stop-after 1 &&
    "$PY" -m zosam_kernels.train $args --out "$runs/cut" --resume || return
  rm -f "$runs"/*/checkpoint.pt
  "$PY" - "$runs" <<'PY'
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
export -f train
export PY RAW TRAIN_TINY

echo "stage $STAGE, budget ${BUDGET_S}s" | tee -a "$OUT/summary.txt"
build
case "$STAGE" in
  core) core ;;
  rest) rest ;;
  all) core; rest ;;
esac
echo "== summary"; cat "$OUT/summary.txt"
