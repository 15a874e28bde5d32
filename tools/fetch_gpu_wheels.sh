#!/usr/bin/env bash
# Wheels the bare GPU machine lacks (it has torch, transformers, peft, accelerate, numpy, pandas,
# pyarrow, scikit-learn, sacrebleu, rich, typer, pyyaml, matplotlib; no network), into .whl/
# (ignored by git). Versions are the ones constraints.txt pins. benchmarks/gpu/check.sh installs them.
#   bash tools/fetch_gpu_wheels.sh            # then carry .whl to the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.whl
rm -rf "$DEST" && mkdir -p "$DEST"
pin() { grep -i "^$1==" constraints.txt | head -1; }
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
WANT=()
for name in pydantic pydantic_core annotated-types typing-inspection datasets dill multiprocess nltk prodigyopt gguf; do
  WANT+=("$(pin "$name")")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${WANT[@]}" "bitsandbytes>=0.45"
# rouge-score ships no wheel: build its pure-Python one here.
python3 -m pip wheel -q --no-deps -w "$DEST" "$(pin rouge_score)"
du -sh "$DEST" && ls "$DEST"
