# One command to set up and run the main job, one to set up and pass the tests.
# Each creates .venv, installs the CPU build of torch 2.13.0 first when no torch is there
# (otherwise pip would pull a multi-GB CUDA build), then the exact versions of
# requirements.lock, then the project itself (no dependency resolution at install time).
VENV ?= .venv
PY := $(VENV)/bin/python
STUDY ?= studies/quickstart.yaml
PYTEST_ARGS ?= --durations=20
EXTRAS := dev,bench

GPU_OUT ?= results/gpu

.PHONY: setup demo test lint lock test-gpu
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $@

demo: setup
	$(VENV)/bin/moe-harness run $(STUDY)
	$(VENV)/bin/moe-harness report $(STUDY)

test: setup
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check harness runners reports tests
	$(VENV)/bin/vulture

# Refresh requirements.lock: today's newest versions that pyproject.toml allows, resolved in a
# throw-away venv beside torch 2.13.0 (CPU); torch and the project itself are not in the lock.
lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q torch==2.13.0
	.lock-venv/bin/python -m pip install -q '.[$(EXTRAS)]'
	{ echo "# Exact versions for 'make setup' (Python 3.11, Linux x86_64), made by 'make lock'."; \
	  echo "# torch==2.13.0 (CPU) is installed before these; the project after, without deps."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable \
	    | grep -viE '^(torch|moe-harness|moe_harness)( |=|@)'; } > requirements.lock
	rm -rf .lock-venv build

# On a GPU machine: doctor, tests/gpu, the GPU benchmarks; results in $(GPU_OUT). Needs a
# Python with a CUDA build of torch and the project's dependencies (PY=... to pick another).
test-gpu:
	PY=$(PY) GPU_OUT=$(GPU_OUT) tests/gpu/run.sh
