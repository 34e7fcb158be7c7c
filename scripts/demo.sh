#!/usr/bin/env bash
# The main job end to end on built-in demo data:
#   synthetic H&E-like tiles -> Beam preprocessing (span-1) -> TFX pipeline -> pushed model.
# Reruns reuse the images and the span, so an unchanged rerun is served from TFX's cache.
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
if ! compgen -G "$OUT/demo/data/span-*" >/dev/null; then
  "$PY" -m preprocessing --input "$OUT/demo/images" --output "$OUT/demo/data"
fi
"$PY" local_runner.py --data-root "$OUT/demo/data" --output-dir "$OUT" "$@"
