# One command to set up and run the main job, one to set up and pass the tests.
# Each creates .venv, installs the CPU build of torch 2.13.0 first when no torch is there
# (otherwise pip would pull a multi-GB CUDA build), then the project.
VENV ?= .venv
PY := $(VENV)/bin/python
STUDY ?= studies/quickstart.yaml
PYTEST_ARGS ?=

GPU_OUT ?= results/gpu

.PHONY: setup demo test lint test-gpu
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $@

demo: setup
	$(VENV)/bin/moe-harness run $(STUDY)
	$(VENV)/bin/moe-harness report $(STUDY)

test: setup
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check harness runners reports tests

# On a GPU machine: doctor, tests/gpu, the GPU benchmarks; results in $(GPU_OUT). Needs a
# Python with a CUDA build of torch and the project's dependencies (PY=... to pick another).
test-gpu:
	PY=$(PY) GPU_OUT=$(GPU_OUT) tests/gpu/run.sh
