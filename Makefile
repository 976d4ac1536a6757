# Two commands for a fresh machine: `make run` (install, train, export, serve) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The dataset: $CIFAR10_DATA if set, else the shared copy beside the project when present, else ./data.
CIFAR10_DATA ?= $(if $(wildcard ../shared/datasets/cifar10/train),../shared/datasets/cifar10,./data)
export CIFAR10_DATA
CKPT_DIR ?= checkpoints
ARTIFACTS ?= artifacts
PORT ?= 3000

.PHONY: install run train export serve lint test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The main job: train (ARGS passes training flags, e.g. ARGS="--recipe fast"), export, then serve.
run: train export serve

train: install
	$(PY) -m training --checkpoint-dir $(CKPT_DIR) $(ARGS)

export: install
	$(PY) -m export --checkpoint $(CKPT_DIR)/best.pt --out $(ARTIFACTS) --bentoml

serve: install
	$(VENV)/bin/bentoml serve --port $(PORT)

lint: install
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q --durations=15 $(TEST_ARGS)

bench: install
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/train_devices.py --epochs 2
	$(PY) benchmarks/inference.py --artifacts $(ARTIFACTS) --checkpoint $(CKPT_DIR)/best.pt
	$(PY) benchmarks/serve_load.py

clean:
	rm -rf $(VENV) $(CKPT_DIR) $(ARTIFACTS) .pytest_cache
