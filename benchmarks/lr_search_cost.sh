#!/usr/bin/env bash
# Issue 18 item 4 (BENCHMARKS.md): the default comparison's learning-rate search, grid vs halving, each in
# its own results folder (nothing reused between them); then the search runs' FLOPs, seconds and choices.
# usage: benchmarks/lr_search_cost.sh OUT_DIR   (PEFTBENCH / PYTHON: the CLI and interpreter to use)
set -euo pipefail
OUT=${1:-peftbench-results/lr-search-cost}
PEFTBENCH=${PEFTBENCH:-peftbench}
PYTHON=${PYTHON:-python}
for how in grid halving; do
  start=$(date +%s)
  HF_HUB_OFFLINE=1 $PEFTBENCH compare -c benchmarks/lr_search_cost.yaml --lr-grid auto --lr-search "$how" \
    --results-dir "$OUT/$how" --json > "$OUT-$how.json"
  echo "$how: whole compare $(( $(date +%s) - start )) s wall"
done
$PYTHON - "$OUT" <<'PY'
import json, sys
from peftbench.store import Store
out = sys.argv[1]
for how in ("grid", "halving"):
    runs = [r for r in Store(f"{out}/{how}").list("done") if r.config["train"]["test"] is False]
    flops = sum(r.result["costs"]["train_flops"] for r in runs)
    secs = sum(r.result["costs"]["train_seconds"] + r.result["costs"]["eval_seconds"] for r in runs)
    chosen = json.load(open(f"{out}-{how}.json"))["chosen_lr"]
    print(f"{how}: {len(runs)} search runs, {flops:.4g} training FLOPs, {secs:.0f} s training + validation; chosen {chosen}")
PY
