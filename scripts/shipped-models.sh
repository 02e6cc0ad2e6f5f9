#!/usr/bin/env bash
# Scores every shipped model (models/NAME with calib/NAME.json) on its dataset's test split with
# `caliper eval --json` and writes the figures to docs/results/shipped-models.json, the single
# source of README's model table; tests/serve/shipped_models.rs (`make check-models`) recomputes
# them and fails on any difference. Run after replacing a model or its calibrator.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/caliper}
out=docs/results/shipped-models.json
{
  echo '{'
  first=1
  for dir in models/*/; do
    m=$(basename "$dir")
    [[ -f calib/$m.json ]] || continue
    dataset=$(sed -n 's/^dataset = "\(.*\)"/\1/p' "$dir/model.toml")
    [[ $first == 1 ]] || echo ','
    first=0
    printf '"%s": {"data": "%s:test", "eval": ' "$m" "$dataset"
    "$BIN" eval --model "$m" --data "$dataset:test" --calib "calib/$m.json" --json
    printf '}'
  done
  echo '}'
} | python3 -m json.tool --indent 1 > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
