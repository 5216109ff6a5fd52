#!/usr/bin/env bash
# Cross-build llama.cpp's programs for riscv64 from the patched tree (ggml_patches/build_tree.sh, cached
# by key), in one of two flavours:
#   rvv     GGML_RVV=ON: ggml's CPU backend with -march=rv64gcv_zfh_zvfh_zicbop_zihintpause (RVV 1.0)
#   scalar  the reference: no V in -march, and -U__riscv_v_intrinsic, because clang defines that macro
#           even without V and ggml would then compile its vector code paths anyway
#
#   ggml_patches/riscv64/build.sh rvv|scalar [PYTHON]
#
# The last line of stdout is the build folder; the programs are in its bin/, linked statically (run them
# with qemu-riscv64 -cpu rv64,Zfh=true,v=true,vlen=128,vext_spec=v1.0 BIN/...; qemu 7.2 needs Zfh=true). PYTHON runs pip for setup.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() {
    echo "ggml_patches/riscv64/build.sh: error: $*" >&2
    exit 1
}
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: build.sh rvv|scalar [PYTHON]"
flavour="$1"
py="${2:-python3}"

# what the checks run (tests/riscv): kernels, KL divergence, final logits, image/audio prompts, text; the
# scalar reference only writes the base logits of the KL-divergence check (one ~200-step build less)
# no OpenMP: clang's libomp is not in the sysroot; ggml's own thread pool is used instead
COMMON=(-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_CCACHE=OFF)
case "$flavour" in
    rvv)
        FLAGS=(-DGGML_RVV=ON -DGGML_RV_ZFH=ON -DGGML_RV_ZVFH=ON)
        TARGETS=(test-quantize-fns llama-perplexity llama-debug llama-mtmd-cli llama-simple)
        ;;
    scalar)
        TARGETS=(llama-perplexity)
        FLAGS=(-DGGML_RVV=OFF -DGGML_RV_ZVFH=OFF
            "-DCMAKE_C_FLAGS=-U__riscv_v_intrinsic" "-DCMAKE_CXX_FLAGS=-U__riscv_v_intrinsic")
        ;;
    *) die "unknown flavour '$flavour' (rvv or scalar)" ;;
esac

bash "$here/setup.sh" "$py" >&2
args=()
for a in "${COMMON[@]}" "${FLAGS[@]}"; do args+=(--cmake-arg "$a"); done
for t in "${TARGETS[@]}"; do args+=(--target "$t"); done
PYTHON="$py" exec bash "$here/../build_tree.sh" "riscv64-$flavour" --toolchain "$here/toolchain.cmake" "${args[@]}"
