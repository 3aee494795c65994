# Two commands on a fresh machine: `make demo` runs the service and a short training demo;
# `make test` runs the test suite. Both create .venv at the repo root if it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: demo test test-fast check bench serve clean-venv

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

demo: $(STAMP)
	$(PY) manage.py demo

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# What CI runs before the suite: lint, format, types, and the import rules of ARCHITECTURE.md.
check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy gpu_runner sdk_python/lorasmith platform
	$(PY) -m pytest -q -p no:cacheprovider tests/test_import_layers.py

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/engine_bench.py

serve: $(STAMP)
	$(PY) manage.py serve --host 127.0.0.1 --port 8000

clean-venv:
	rm -rf $(VENV)
