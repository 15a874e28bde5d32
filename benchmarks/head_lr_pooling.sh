#!/usr/bin/env bash
# Issue 16 items 3/4: the head_lr grid and the pooling before/after on MiniLM / TweetEval emotion
# (BENCHMARKS.md); 20 runs of 64 steps and 2 probes, ~4 minutes each on 2 busy CPU cores.
# usage: benchmarks/head_lr_pooling.sh RESULTS_DIR   (PEFTBENCH / PYTHON: the CLI and interpreter to use)
set -euo pipefail
R=${1:-results/head-lr-pooling}
C=benchmarks/head_lr_pooling.yaml
PEFTBENCH=${PEFTBENCH:-peftbench}
PYTHON=${PYTHON:-python}
run() { HF_HUB_OFFLINE=1 $PEFTBENCH run -c "$C" --results-dir "$R" "$@" > /dev/null; }
lr() { $PYTHON -c "from peftbench.methods import get_method as g; print(g('$1').default_lr)"; }
# before: the model's own pooler ([CLS] through BERT's pooler), the head at the method's rate;
# after: the checkpoint's pooling (mean), the head at the method's rate, then at other head rates
run -m head --pooling model
for h in 5e-2 1e-2 1e-1; do run -m head --head-lr "$h"; done
for m in parallel_adapter bottleneck_adapter lora; do
  run -m "$m" --pooling model --head-lr "$(lr $m)"
  for h in "$(lr $m)" 1e-2 5e-2; do run -m "$m" --head-lr "$h"; done
done
for pool in model mean; do run -m linear_probe --pooling "$pool"; done
# the head rate alone, under the old pooler
for m in parallel_adapter bottleneck_adapter; do run -m "$m" --pooling model --head-lr 5e-2; done
