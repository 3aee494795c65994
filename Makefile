# Two commands on a fresh machine: `make demo` runs the service and a short training demo;
# `make test` runs the test suite. Both create .venv at the repo root if it is missing; `make test`
# also builds .venv-tinker, the official Tinker client that tests/tinker/ runs against the server.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# The official client, from PyPI, in a venv of its own: it must never be installed into the server's
# venv, and tinker-cookbook pins transformers<=5.5.4, below what the server needs.
TINKER_VENV := .venv-tinker
TINKER_PY := $(TINKER_VENV)/bin/python
TINKER_STAMP := $(TINKER_VENV)/.installed
TINKER_PACKAGES := "tinker==0.38.0" "tinker-cookbook[math-rl]==0.5.8"

# A GPU machine's runner environment: the same packages with a CUDA build of torch (never used by CI)
GPU_VENV := .venv-gpu
GPU_PY := $(GPU_VENV)/bin/python
CUDA_TORCH_INDEX ?= https://download.pytorch.org/whl/cu128

.PHONY: demo demo-rlhf test test-fast check bench bench-gpu serve clean-venv tinker-venv gpu-venv

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml sdk_python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first, pinned, so nothing below can pull a CUDA build. PyTorch's CPU index offers
	# 2.13.0+cpu, which outranks PyPI's CUDA 2.13.0; where that index is unreachable, local wheels serve.
	$(PY) -m pip install -q --retries 1 --extra-index-url $(TORCH_INDEX) torch==2.13.0
	$(PY) -c "import sys, torch; sys.exit(torch.version.cuda and 'refusing a CUDA build of torch: ' + torch.__version__)"
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	# the engine (repo root) and the SDK, editable: importable everywhere without sys.path edits
	$(PY) -m pip install -q --no-deps -e . -e sdk_python
	touch $(STAMP)

$(TINKER_STAMP): Makefile
	test -x $(TINKER_PY) || $(PYTHON) -m venv $(TINKER_VENV)
	$(TINKER_PY) -m pip install -q --upgrade pip
	# CPU torch first, as for .venv: the cookbook would otherwise pull a CUDA build
	$(TINKER_PY) -m pip install -q --retries 1 --extra-index-url $(TORCH_INDEX) torch==2.13.0
	$(TINKER_PY) -c "import sys, torch; sys.exit(torch.version.cuda and 'refusing a CUDA build of torch: ' + torch.__version__)"
	$(TINKER_PY) -m pip install -q $(TINKER_PACKAGES)
	touch $(TINKER_STAMP)

tinker-venv: $(TINKER_STAMP)

# `make gpu-venv` on a GPU machine, then `.venv-gpu/bin/python manage.py runner --device cuda:0` (one per GPU)
gpu-venv:
	test -x $(GPU_PY) || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_PY) -m pip install -q --upgrade pip
	$(GPU_PY) -m pip install -q --index-url $(CUDA_TORCH_INDEX) --extra-index-url https://pypi.org/simple torch==2.13.0
	$(GPU_PY) -c "import sys, torch; sys.exit(None if torch.cuda.is_available() else 'no CUDA device visible to torch ' + torch.__version__)"
	$(GPU_PY) -m pip install -q -r requirements.txt
	$(GPU_PY) -m pip install -q --no-deps -e . -e sdk_python

demo: $(STAMP)
	$(PY) manage.py demo

demo-rlhf: $(STAMP)
	$(PY) manage.py demo --recipe rlhf

test: $(STAMP) $(TINKER_STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# What CI runs before the suite: lint, format, types, and the import rules of ARCHITECTURE.md.
check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy gpu_runner sdk_python/lorasmith platform cookbook
	$(PY) -m pytest -q -p no:cacheprovider tests/test_import_layers.py

test-fast: $(STAMP) $(TINKER_STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/engine_bench.py
	$(PY) bench/real_shapes_bench.py

# on a GPU machine, after `make gpu-venv`: agreement with the CPU engine, then MFU (bench/device_check.sh)
bench-gpu:
	PATH=$(GPU_VENV)/bin:$$PATH bash bench/device_check.sh

serve: $(STAMP)
	$(PY) manage.py serve --host 127.0.0.1 --port 8000

clean-venv:
	rm -rf $(VENV) $(TINKER_VENV)
