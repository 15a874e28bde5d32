#!/usr/bin/env bash
# Issue 16 items 3/4: the head_lr grid and the pooling before/after (BENCHMARKS.md); 20 runs of 64 steps.
# usage: benchmarks/head_lr_pooling.sh RESULTS_DIR   (PEFTBENCH / PYTHON: the CLI and interpreter to use)
set -euo pipefail
R=${1:-results/head-lr-pooling}
C=benchmarks/head_lr_pooling.yaml
PEFTBENCH=${PEFTBENCH:-peftbench}
PYTHON=${PYTHON:-python}
run() { HF_HUB_OFFLINE=1 $PEFTBENCH run -c "$C" --results-dir "$R" "$@" > /dev/null; }
for m in head parallel_adapter bottleneck_adapter lora; do
  lr=$($PYTHON -c "from peftbench.methods import get_method as g; print(g('$m').default_lr)")
  # before: the model's own pooler ([CLS] through BERT's pooler), the head at the method's rate
  run -m "$m" --pooling model --head-lr "$lr"
  # after: the checkpoint's pooling (mean); the head at the method's rate, then a grid of head rates
  for h in "$lr" 1e-2 5e-2 1e-1; do
    if [ "$m" != head ] || [ "$h" != 5e-2 ]; then run -m "$m" --head-lr "$h"; fi
  done
done
