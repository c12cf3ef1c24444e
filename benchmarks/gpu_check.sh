#!/usr/bin/env bash
# One call on a lent GPU machine (device tool): build, run the whole suite with
# the Triton kernels compiled, then the kernel roofline, the step benchmark
# (every row, with a profile), its bf16 variant, and the ZO quality study.
# Uses the machine's own torch and triton (no venv: the device has no
# network). Everything lands in $OUT.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
  date -u
} > "$OUT/versions.txt" 2>&1
pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
python -m pytest tests -q -x > "$OUT/tests.log" 2>&1; echo "pytest rc=$?" >> "$OUT/tests.log"
python benchmarks/kernels.py --json "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1
python -m zosam_kernels.bench --methods sgd,sam,zosam,zosam-unfused,zosam-frac,zosam-bf16 \
  --json "$OUT/bench_resnet32.json" --profile "$OUT/profile" > "$OUT/bench.log" 2>&1
python -m zosam_kernels.bench --model resnet32_wide --methods sgd,sam,zosam,zosam-frac \
  --json "$OUT/bench_wide.json" > "$OUT/bench_wide.log" 2>&1
python -m zosam_kernels.bench --bf16 --channels-last --methods sgd,sam,zosam \
  --json "$OUT/bench_bf16.json" > "$OUT/bench_bf16.log" 2>&1
python benchmarks/zo_quality.py --json "$OUT/zo_quality.json" > "$OUT/zo_quality.log" 2>&1
tail -n 3 "$OUT/tests.log"; cat "$OUT/versions.txt" "$OUT/kernels.log" "$OUT/bench.log" \
  "$OUT/bench_wide.log" "$OUT/bench_bf16.log" "$OUT/zo_quality.log"
