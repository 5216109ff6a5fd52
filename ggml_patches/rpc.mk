# Included by the top-level Makefile: `make llama-rpc` builds (or reuses) llama.cpp's RPC server and llama-server
# from the patched tree with -DGGML_RPC=ON (its own cache key in build_tree.sh) and prints the build folder as the
# last line of stdout (progress goes to stderr); the programs are in its bin/. The serving tests (tests/serving/)
# run `make -s llama-rpc` to find them.
LLAMA_RPC_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
LLAMA_RPC_ARGS := cpu-rpc --cmake-arg -DGGML_RPC=ON --target ggml-rpc-server --target llama-server

.PHONY: llama-rpc
llama-rpc:
	@bash $(LLAMA_RPC_DIR)/build_tree.sh $(LLAMA_RPC_ARGS) | tee /dev/stderr | tail -n1
