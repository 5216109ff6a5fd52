# Included by the top-level Makefile.
#
# `make llama-rpc` builds (or reuses) llama.cpp's RPC server (target ggml-rpc-server, tools/rpc) and llama-server
# (tools/server) from the patched tree with -DGGML_RPC=ON (its own cache key in build_tree.sh) and prints the build
# folder as the last line of stdout (progress goes to stderr); the programs are in its bin/.
#
# `make test-rpc` builds them (cached) and runs tests/test_serve_rpc.py: the demo model and the tiny-mm model split
# over two rpc-servers on loopback answer as the same llama-server in one process (text, image, audio, image+audio),
# with the layers on both RPC devices. It exits non-zero on any failure or skip, and its last line is a one-line
# summary ("test-rpc: OK ..." / "test-rpc: FAILED ..."), for .ci/run.
LLAMA_RPC_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
LLAMA_RPC_ARGS := cpu-rpc --cmake-arg -DGGML_RPC=ON --target ggml-rpc-server --target llama-server
LLAMA_RPC_TESTS := tests/test_serve_rpc.py

.PHONY: llama-rpc test-rpc
llama-rpc:
	@bash $(LLAMA_RPC_DIR)/build_tree.sh $(LLAMA_RPC_ARGS) | tee /dev/stderr | tail -n1

test-rpc: SHELL := /bin/bash
test-rpc: .SHELLFLAGS := -o pipefail -c
test-rpc: llama-cpp
	@start=$$(date +%s); log=$$(mktemp); \
	if ! folder=$$(bash $(LLAMA_RPC_DIR)/build_tree.sh $(LLAMA_RPC_ARGS) 2>&1 | tee $$log | tail -n1) \
	    || [ ! -x "$$folder/bin/llama-server" ]; then \
	    tail -n 30 $$log; rm -f $$log; \
	    echo "test-rpc: FAILED: the llama.cpp RPC build (make llama-rpc) after $$(( $$(date +%s) - start )) s"; exit 1; \
	fi; \
	built=$$(( $$(date +%s) - start )); grep -q 'cached build' $$log && how=cached || how="built in $${built} s"; \
	rm -f $$log; out=$$(mktemp); \
	TRANSFORMERS_QWEN3_LLAMA_BIN="$$folder/bin" TRANSFORMERS_QWEN3_RPC_REQUIRED=1 \
	    $(PY) -m pytest -q -n 0 -p no:cacheprovider -rs --durations=5 $(LLAMA_RPC_TESTS) 2>&1 | tee $$out; rc=$$?; \
	result=$$(grep -E '^(=+ )?[0-9]+ (passed|failed|error)' $$out | tail -n1 | sed 's/=//g; s/^ *//; s/ *$$//'); \
	rm -f $$out; total=$$(( $$(date +%s) - start )); \
	if [ $$rc = 0 ] && ! grep -q skipped <<<"$$result"; then \
	    echo "test-rpc: OK: $$result (programs $$how; $$total s in all)"; \
	else \
	    echo "test-rpc: FAILED: $${result:-pytest exit $$rc} (programs $$how; $$total s in all)"; exit 1; \
	fi
