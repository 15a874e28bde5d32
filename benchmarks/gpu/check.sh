#!/usr/bin/env bash
# The GPU check in one call (issue 13 item 8), on a bare CUDA machine without network.
#
# Here:   bash tools/fetch_gpu_wheels.sh        # pydantic, datasets, rouge-score, bitsandbytes, ... into .whl/
# There:  bash benchmarks/gpu/check.sh          # with .whl carried along; results go to $OUT (default ./gpu-results)
#
# It installs the carried wheels (no index), then runs, each under its own time limit so the
# whole stays under 8 minutes: the GPU tests (pytest -m gpu), the throughput benchmark against
# HF Trainer + peft on a Llama-3.2-1B-shaped random model, and QLoRA against bf16 LoRA.
# A step that fails is recorded in summary.txt and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-gpu-results}"
WHEELS="${WHEELS:-.whl}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python3}"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "benchmarks/gpu/check.sh needs a CUDA GPU (torch sees none here); nothing was run" >&2
  exit 1
fi

summary="$OUT/summary.txt"
: >"$summary"
step() {  # step NAME SECONDS COMMAND...: run it, log to $OUT/NAME.log, note how it ended
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s" | tee -a "$summary"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| peft', peft.__version__)"
} >"$OUT/env.log" 2>&1

if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/peftbench-site \
    "$WHEELS"/*.whl >>"$OUT/env.log" 2>&1 || echo "wheel install failed (see env.log)" | tee -a "$summary"
  export PYTHONPATH="/tmp/peftbench-site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no wheels in $WHEELS: pydantic and datasets must already be installed" | tee -a "$summary"
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import peftbench, pydantic, datasets; print('peftbench', peftbench.__version__)" >>"$OUT/env.log" 2>&1 \
  || echo "peftbench does not import (see env.log)" | tee -a "$summary"

gpu_tests=$(grep -l "mark.gpu" tests/*.py | tr '\n' ' ')
step gpu_tests 200 "$PY" -m pytest -q -p no:cacheprovider -m gpu $gpu_tests
step throughput 180 "$PY" benchmarks/throughput.py --device cuda --cases llama1b --reps 3 --out "$OUT/throughput.json"
step qlora_vs_lora 100 "$PY" benchmarks/gpu/qlora_vs_lora.py --out "$OUT/qlora_vs_lora.json"
cat "$summary"
