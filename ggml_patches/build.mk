# Included by the top-level Makefile: `make llama-cpp` builds (or reuses) the patched
# llama-cpp-python wheel and installs it into the project's venv. See ggml_patches/README.md.
GGML_PATCHES_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
# the venv's python: the including Makefile's $(PY) when it has one
LLAMA_CPP_PYTHON ?= $(or $(PY),.venv/bin/python)

.PHONY: llama-cpp
llama-cpp: venv
	bash $(GGML_PATCHES_DIR)/build_wheel.sh $(LLAMA_CPP_PYTHON)
