#!/usr/bin/env bash
# Rewrite the golden files after an intended change of numbers or layout; review the diff before committing.
# They are made with --no-lower: the lower-bound search stops within a time budget, so it is machine-dependent.
# The tests compare numbers with a tolerance (tests/golden_text.py), so files made on any CPU serve every CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
run() { env -i PATH=/usr/bin:/bin PYTHONPATH="$PWD" COLUMNS=200 NO_COLOR=1 .venv/bin/python -m lipcheck "$@"; }
for pair in markdown:md github:txt junit:xml csv:csv; do
  run check sample_models/mlp.onnx sample_models/cnn.onnx --fail-above 1.0 --layer-threshold '2.*=0.9' --no-lower \
    -f "${pair%%:*}" > "tests/golden/check_${pair%%:*}.${pair##*:}" || test $? -eq 1
done
for sample in cnn.onnx cnn.pt; do
  run inspect "sample_models/$sample" --no-lower > "tests/golden/inspect_${sample/./_}.txt"
done
for columns in 80 140; do
  env -i PATH=/usr/bin:/bin PYTHONPATH="$PWD" COLUMNS=$columns NO_COLOR=1 .venv/bin/python -m lipcheck inspect sample_models/cnn.onnx --no-lower \
    > "tests/golden/inspect_cnn_onnx_${columns}.txt"
done
