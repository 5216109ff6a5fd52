# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all test-floor-ceiling test-floor-if-different lint venv clean

# The exact versions `make test` installs; pyproject.toml declares only ranges (docs/compatibility.md).
CONSTRAINTS := ci/constraints.txt
include ci/floor.mk
# the patched llama-cpp-python (ggml_patches/), built once per patch set and CPU, cached as a wheel
include ggml_patches/build.mk
# llama.cpp's rpc-server and llama-server with -DGGML_RPC=ON (`make llama-rpc`), for the serving tests
include ggml_patches/rpc.mk
# `make test-cuda-build` (the CUDA units compiled, not run), `make llama-cpp-cuda`, `make gpu-tree` (docs/backends.md)
include ggml_patches/cuda.mk
# `make test-riscv`: the riscv64 (RVV) cross builds and their checks under qemu
include ggml_patches/riscv64.mk
# the vLLM plugin's tests in their own cached venv (.venv-vllm): `make test-vllm` (docs/vllm.md)
include ci/vllm.mk
# The transformers release the whole suite runs on: the newest one in pyproject's range that passed.
TRANSFORMERS_TESTED := $(shell sed -n 's/^transformers==\([0-9.]*\).*/\1/p' $(CONSTRAINTS))

venv: $(STAMP)

# pip caches downloads in its usual place, so a second clone installs from cache.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c $(CONSTRAINTS) -e ".[dev]"
	touch $@

demo: venv llama-cpp
	$(PY) -m transformers_qwen3.cli demo run

# pytest-xdist: one worker per core; --dist loadfile keeps each test file on one worker, so a file's module fixtures
# (tiny checkpoints, converted GGUFs) are built once. `make test PYTEST_WORKERS=0` runs in one process.
PYTEST_WORKERS ?= auto
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --dist loadfile

test: venv llama-cpp
	$(PY) -m pytest -q -m "not slow" $(PYTEST_PARALLEL)

# CI runs the parity tests on the floor and on the tested release; when they are the same `make test` covers both.
test-floor-ceiling: test test-floor-if-different

test-floor-if-different:
	@if [ "$(TRANSFORMERS_FLOOR)" != "$(TRANSFORMERS_TESTED)" ]; then $(MAKE) test-floor; \
	else echo "transformers floor = tested release = $(TRANSFORMERS_TESTED): the parity tests above ran on both"; fi

test-all: venv llama-cpp
	$(PY) -m pytest -q $(PYTEST_PARALLEL)

lint: venv
	$(VENV)/bin/ruff check src convert tests bench
	$(VENV)/bin/ruff format --check src convert tests bench

clean:
	rm -rf $(VENV) $(FLOOR_VENV) build *.egg-info
