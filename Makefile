# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all test-floor-ceiling test-floor-if-different lint venv clean

include ci/floor.mk
# the patched llama-cpp-python (ggml_patches/), built once per patch set and CPU, cached as a wheel
include ggml_patches/build.mk
# The ceiling is the one transformers version pyproject pins as its upper bound (what `make test` installs).
TRANSFORMERS_CEILING := $(shell sed -n 's/.*"transformers>=[^,]*,<=\([0-9.]*\)".*/\1/p' pyproject.toml)

venv: $(STAMP)

# pip caches downloads in its usual place, so a second clone installs from cache.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $@

demo: venv llama-cpp
	$(PY) -m transformers_qwen3.demo

test: venv llama-cpp
	$(PY) -m pytest -q -m "not slow"

# CI runs the parity tests on the floor and the ceiling; when they are the same release `make test` covers both.
test-floor-ceiling: test test-floor-if-different

test-floor-if-different:
	@if [ "$(TRANSFORMERS_FLOOR)" != "$(TRANSFORMERS_CEILING)" ]; then $(MAKE) test-floor; \
	else echo "transformers floor = ceiling = $(TRANSFORMERS_CEILING): the parity tests above ran on both"; fi

test-all: venv llama-cpp
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check src convert tests bench
	$(VENV)/bin/ruff format --check src convert tests bench

clean:
	rm -rf $(VENV) $(FLOOR_VENV) build *.egg-info
