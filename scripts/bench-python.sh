#!/usr/bin/env bash
# Prints the path of the benchmarks' Python (onnxruntime, Pillow, numpy): $PYTHON when set, else
# runs/bench-venv/bin/python, creating that virtual environment on first use (benchmark only,
# ignored by git). Used by bench-serve.sh (the Python baseline server) and bench-serve-all.py
# (resizing the photo for the 224x224 model). Exits non-zero with the reason on stderr.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
  echo "$PYTHON"
  exit 0
fi
PY="$ROOT/runs/bench-venv/bin/python"
if ! "$PY" -c "import onnxruntime, PIL, numpy" 2>/dev/null; then
  echo "creating runs/bench-venv (onnxruntime, Pillow, numpy; benchmark only)" >&2
  python3 -m venv "$ROOT/runs/bench-venv" >&2 || { echo "python3 -m venv failed (apt-get install python3-venv)" >&2; exit 1; }
  "$ROOT/runs/bench-venv/bin/pip" install --quiet onnxruntime==1.31.1 pillow numpy >&2 ||
    { echo "pip install onnxruntime==1.31.1 pillow numpy into runs/bench-venv failed" >&2; exit 1; }
fi
echo "$PY"
