#!/usr/bin/env bash
# Installs the Debian packages the benchmarks need when they are missing (as install-test-deps.sh
# does for the tests): wrk (bench-serve's load generator), curl, python3-venv (each benchmark keeps
# its Python packages in its own ignored virtual environment, installed with pip on first use:
# runs/bench-venv, .venv-bench, .venv-calib) and GNU time (bench-calibration).
set -euo pipefail
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
python3 -c "import ensurepip, venv" 2>/dev/null || missing+=(python3-venv)
[[ -x /usr/bin/time ]] || missing+=(time)
((${#missing[@]})) || exit 0
if [[ $(id -u) != 0 ]]; then
  echo "error: missing ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
