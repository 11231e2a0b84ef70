# second-order: reproducible second-order optimization experiments (JAX/Flax/Optax).
#   make setup       create .venv and install the project (CPU JAX; JAX_VARIANT=cuda12 for NVIDIA GPUs)
#   make test        set up if needed, then run the whole test suite
#   make train ARGS="optimizer=hessian_free"    one run (any Hydra overrides)
#   make reproduce   every experiment of the paper, then figures and tables into results/
#   make figures     regenerate figures and tables without training (RUNS=runs/paper OUT=results)
#   make study       the study (tuned methods, time to target, profiles) into results/study/ (STUDY=full)
#   make bench       timing benchmark into results/bench/
#   make lint        ruff (lint + format check) and mypy over src/, scripts/, tests/, benchmarks/

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The JAX variant of .venv: the one installed last (make setup JAX_VARIANT=cuda12 once, and later
# targets keep it instead of reinstalling for the CPU), else cpu.
INSTALLED_VARIANT := $(patsubst $(VENV)/.installed-%,%,$(firstword $(wildcard $(VENV)/.installed-*)))
JAX_VARIANT ?= $(or $(INSTALLED_VARIANT),cpu)
STAMP := $(VENV)/.installed-$(JAX_VARIANT)
PYTEST_ARGS ?=
# Test files run in parallel worker processes (pytest-xdist), each file in one worker so that
# its module fixtures run once; PYTEST_WORKERS=0 runs everything in this process.
PYTEST_WORKERS ?= 2
PYTEST_PARALLEL := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)
ARGS ?=

.PHONY: setup test test-fast lint format train reproduce figures study bench clean
FULL ?=

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[suite,dev,tfds]"
	if [ "$(JAX_VARIANT)" != "cpu" ]; then $(BIN)/python -m pip install --quiet "jax[$(JAX_VARIANT)]"; fi
	rm -f $(VENV)/.installed-*
	touch $@

test: setup
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

LINT_PATHS := src scripts tests benchmarks

lint: setup
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy $(LINT_PATHS)

format: setup
	$(BIN)/ruff check --fix $(LINT_PATHS)
	$(BIN)/ruff format $(LINT_PATHS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_PARALLEL) $(PYTEST_ARGS)

train: setup
	$(BIN)/python scripts/train.py $(ARGS)

reproduce: setup
	$(BIN)/python scripts/reproduce.py $(if $(FULL),--full,) $(ARGS)

figures: setup
	$(BIN)/python scripts/make_figures.py $(or $(RUNS),runs/paper) --out $(or $(OUT),results)

study: setup
	$(BIN)/python scripts/study.py --study $(or $(STUDY),cpu) $(ARGS)

bench: setup
	$(BIN)/python -m benchmarks $(ARGS)

clean:
	rm -rf runs multirun outputs .pytest_cache
