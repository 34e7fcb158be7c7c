#!/usr/bin/env bash
# The main job end to end on built-in demo data:
#   synthetic H&E-like tiles -> TFX pipeline (ingestion into span-1, ..., pushed model).
# Reruns reuse the images; with nothing new the rerun is served from TFX's cache. Images
# added under $OUT/demo/images become the next span on the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup_env.sh
OUT="${HISTO_OUTPUT_DIR:-outputs}"
PY=.venv/bin/python
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"  # TFX/TF deprecation noise, not our errors

if [ ! -d "$OUT/demo/images" ]; then
  rm -rf "$OUT/demo/images.partial"
  "$PY" -m demo.generate --output "$OUT/demo/images.partial"
  mv "$OUT/demo/images.partial" "$OUT/demo/images"
fi
"$PY" local_runner.py --image-root "$OUT/demo/images" --data-root "$OUT/demo/data" \
  --output-dir "$OUT" "$@"
