# Two commands for a fresh machine: `make run` (install + train) and `make test` (install + tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The dataset: $CIFAR10_DATA if set, else the shared copy beside the project when present, else ./data.
CIFAR10_DATA ?= $(if $(wildcard ../shared/datasets/cifar10/train),../shared/datasets/cifar10,./data)
export CIFAR10_DATA

.PHONY: install run test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# ARGS passes flags through, e.g. make run ARGS="--recipe fast"
run: install
	$(PY) -m training $(ARGS)

test: install
	$(PY) -m pytest -q $(ARGS)

bench: install
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) checkpoints artifacts .pytest_cache
