# High Peaks ML Platform. `make run` and `make test` are each the only command
# a fresh clone needs: they create .venv from the pinned constraints when it is
# missing (or when pyproject.toml / constraints.txt changed).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv run test lint typecheck proto proto-check pytest deploy-check bench lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --constraint constraints.txt --editable '.[dev,boost]'
	touch $(STAMP)

venv: $(STAMP) ## create .venv and install the project with its dev tools

run: $(STAMP) ## run the server on 127.0.0.1:50051 with ./var and the iris demo model
	$(BIN)/highpeaks-ml serve --demo

test: $(STAMP) lint proto-check pytest ## lint, check generated stubs, run the whole test suite

lint: $(STAMP) ## ruff (lint + format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

typecheck: $(STAMP) ## mypy on the package
	$(BIN)/mypy

proto: $(STAMP) ## regenerate the stubs from protos/
	$(PY) scripts/gen_protos.py

proto-check: $(STAMP) ## fail when the committed stubs differ from a fresh generation
	$(PY) scripts/gen_protos.py --check

pytest: $(STAMP) ## run pytest only
	sh scripts/ensure_chromium.sh
	$(BIN)/pytest $(PYTEST_ARGS)

deploy-check: $(STAMP) ## render + validate the k8s overlays offline, lint Dockerfile/YAML/workflow
	$(BIN)/pytest tests/unit/test_deploy.py -q

bench: $(STAMP) ## serving benchmark on loopback (prints ratios against baselines)
	$(PY) scripts/bench_serving.py

lock: ## re-pin constraints.txt from a fresh resolution of pyproject.toml (+ the image's CUDA wheels)
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install --quiet --upgrade pip
	.lockenv/bin/pip install --quiet '.[dev,boost]'
	.lockenv/bin/pip freeze --exclude-editable --exclude highpeaks-ml | sort > constraints.txt
	.lockenv/bin/python scripts/pin_cuda_libs.py
	rm -rf .lockenv

clean: ## remove the venv, caches and ./var
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var build *.egg-info
