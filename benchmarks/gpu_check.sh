#!/usr/bin/env bash
# One call on a lent GPU machine (device tool): build, run the whole suite with
# the Triton kernels compiled, and benchmark. Uses the machine's own torch and
# triton (no venv: the device has no network). Results land in $OUT.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
} > "$OUT/versions.txt" 2>&1
pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
python -m pytest tests -q -x > "$OUT/tests.log" 2>&1; echo "pytest rc=$?" >> "$OUT/tests.log"
python -m zosam_kernels.bench --json "$OUT/bench_resnet32.json" > "$OUT/bench.log" 2>&1
tail -n 3 "$OUT/tests.log"; cat "$OUT/versions.txt" "$OUT/bench.log"
