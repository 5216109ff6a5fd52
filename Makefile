# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint venv clean

venv: $(STAMP)

# pip caches downloads in its usual place, so a second clone installs from cache.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $@

demo: venv
	$(PY) -m transformers_qwen3.demo

test: venv
	$(PY) -m pytest -q -m "not slow"

test-all: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check src convert tests bench
	$(VENV)/bin/ruff format --check src convert tests bench

clean:
	rm -rf $(VENV) build *.egg-info
