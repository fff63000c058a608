#!/usr/bin/env bash
# The GPU check of prepared face sets, at most 8 minutes on one GPU machine:
#   the GPU-relevant tests; training images/s of the face network at batch 128 (float32, bf16)
#   fed from a prepared 10^5 set; step time with real input against the same batch repeated from
#   memory; mirrored training on one GPU against no strategy; `facetrip prepare` with 16 workers.
# Usage: bash scripts/gpu_check.sh [OUTPUT_DIR]   (results: OUTPUT_DIR/gpu_check.md, default $OUT or ./gpu_check)
set -euo pipefail
cd "$(dirname "$0")/.."
OUTPUT="${1:-${OUT:-gpu_check}}"
mkdir -p "$OUTPUT"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || { python3 -m venv .venv && .venv/bin/pip install --quiet -e '.[dev]'; PY=.venv/bin/python; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUTPUT/card.txt"
WORK="$(mktemp -d)"
timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/training/test_distribute.py tests/data/test_prepared.py \
    -k "mirrored or random_access or bf16" 2>&1 | tail -3 | tee "$OUTPUT/tests.txt" || true
timeout 360 "$PY" scripts/bench_scale.py --gpu-check --sizes 100000 --workdir "$WORK" --workers 16 --no-beam \
    --steps 30 --batch-size 128 --output "$OUTPUT/gpu_check.md" 2>&1 | tail -40
rm -rf "$WORK"
