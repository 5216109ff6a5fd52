# Included by the top-level Makefile: `make test-riscv` cross-builds the patched llama.cpp for riscv64 with the
# vector extension (and a scalar reference), then runs the checks in tests/riscv/ under qemu-user.
# See ggml_patches/README.md (RISC-V) and docs/backends.md ("RISC-V (RVV) under qemu").
RISCV64_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))/riscv64
RISCV64_PY ?= $(or $(PY),.venv/bin/python)

.PHONY: test-riscv riscv64-builds

# the toolchain (Debian packages + ziglang, once), then the two trees (cached by key: a second run builds nothing)
riscv64-builds: venv
	bash $(RISCV64_DIR)/setup.sh $(RISCV64_PY)
	bash $(RISCV64_DIR)/build.sh rvv $(RISCV64_PY)
	bash $(RISCV64_DIR)/build.sh scalar $(RISCV64_PY)

# llama-cpp: the x86 side of the parity checks runs the patched llama-cpp-python. -rP: each check's measured figures
# (KLD, logit distances, answers); --durations: the time of each; the last line is pytest's one-line summary
test-riscv: riscv64-builds llama-cpp
	$(RISCV64_PY) -m pytest -q -n 0 -p no:cacheprovider -rP --durations=40 tests/riscv
