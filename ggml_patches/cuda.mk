# Included by the top-level Makefile (-include): `make test-cuda-build` compiles, in a CUDA
# configuration (nvcc, sm_90, no GPU needed), the llama.cpp units our patches touch and the CUDA
# quantization/matmul units, cached by key; the last line it prints is a one-line summary.
# Time guard: TEST_CUDA_BUILD_TIMEOUT (seconds, default 2700). See docs/backends.md.
CUDA_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

.PHONY: test-cuda-build llama-cpp-cuda
test-cuda-build:
	bash $(CUDA_MK_DIR)/cuda/test_build.sh

# the CUDA wheel, built with a throwaway venv (the project's .venv keeps its CPU build); prints its path
llama-cpp-cuda:
	bash $(CUDA_MK_DIR)/build.sh cuda
