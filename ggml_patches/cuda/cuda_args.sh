#!/usr/bin/env bash
# Print the CMake arguments of a CUDA build of the patched llama.cpp, one per line, for this machine:
#
#   ggml_patches/cuda/cuda_args.sh [PYTHON]
#
# used by `build.sh cuda` (the wheel), `make test-cuda-build` (object files) and scripts/gpu_check.sh.
#
#   -DGGML_CUDA=ON
#   -DCMAKE_CUDA_COMPILER=<nvcc>          nvcc from $CUDACXX, PATH, /usr/local/cuda/bin, or the
#                                         `nvidia-cuda-nvcc` wheel in PYTHON's site-packages
#   -DCMAKE_CUDA_ARCHITECTURES=90         $CUDA_ARCHITECTURES (default 90, the H100/H200): one
#                                         architecture is several times faster to build than the list
#   -DGGML_CUDA_FA=OFF                    $GGML_CUDA_FA (default OFF): the flash-attention kernels are
#                                         most of the build time (measured on 2 cores: 45-55 min with,
#                                         13-17 min without); llama.cpp then attends without them
#   -DGGML_CUDA_NO_VMM=ON                 only where no libcuda.so.1 is installed (a machine without
#                                         the NVIDIA driver can compile, but not link against the
#                                         driver API that the VMM pool uses)
#   -DCMAKE_CUDA_FLAGS=-I<dir>            only where the toolkit has no cuBLAS headers: they come
#   -DCMAKE_LIBRARY_PATH=<dir>            from the `nvidia-cublas` wheel, installed once with
#                                         `pip install --no-deps --target` into the cache (below)
#                                         unless PYTHON already has it
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/transformers-qwen3/cuda/nvidia-cublas-<version>/
# Environment: CUBLAS_VERSION (default 13.1.1.3, the CUDA 13 cuBLAS), CUDA_ARCHITECTURES, GGML_CUDA_FA.
set -euo pipefail

CUBLAS_VERSION="${CUBLAS_VERSION:-13.1.1.3}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() {
    echo "ggml_patches/cuda/cuda_args.sh: error: $*" >&2
    exit 1
}
say() { echo "ggml_patches/cuda: $*" >&2; }

py="${1:-}"
if [ -z "$py" ]; then
    if [ -x "$here/../../.venv/bin/python" ]; then py="$here/../../.venv/bin/python"; else py="$(command -v python3 || true)"; fi
fi

site_nvidia() { # the folder of PYTHON's `nvidia` namespace package (the NVIDIA wheels), or nothing
    [ -n "$py" ] || return 0
    "$py" -c 'import nvidia, sys; print(next(iter(nvidia.__path__)))' 2>/dev/null || true
}

# --- nvcc ----------------------------------------------------------------------------------------
nvcc="${CUDACXX:-}"
[ -n "$nvcc" ] || nvcc="$(command -v nvcc || true)"
[ -n "$nvcc" ] || { [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc; } || true
if [ -z "$nvcc" ]; then
    nv="$(site_nvidia)"
    for c in "$nv"/cu13/bin/nvcc "$nv"/cuda_nvcc/bin/nvcc; do
        [ -x "$c" ] && nvcc="$c" && break
    done
fi
[ -n "$nvcc" ] || die "no nvcc: install the CUDA toolkit (or \`pip install nvidia-cuda-nvcc\`) and put nvcc on PATH, or set CUDACXX"
# a wrapper script (exec /usr/local/cuda-13.0/bin/nvcc "$@") hides the toolkit's folder from CMake
real="$(sed -n 's/^exec \([^ ]*nvcc\) .*/\1/p' "$nvcc" 2>/dev/null | head -n1 || true)"
[ -n "$real" ] && [ -x "$real" ] && nvcc="$real"
nvcc="$(readlink -f "$nvcc")"
toolkit="$(dirname "$(dirname "$nvcc")")"

echo "-DGGML_CUDA=ON"
echo "-DCMAKE_CUDA_COMPILER=$nvcc"
echo "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES:-90}"
echo "-DGGML_CUDA_FA=${GGML_CUDA_FA:-OFF}"
if ! { ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; } && ! ls "$toolkit"/lib64/libcuda.so* >/dev/null 2>&1; then
    say "no libcuda.so.1 (no NVIDIA driver): building with GGML_CUDA_NO_VMM=ON"
    echo "-DGGML_CUDA_NO_VMM=ON"
fi

# --- cuBLAS --------------------------------------------------------------------------------------
if ls "$toolkit"/include/cublas_v2.h "$toolkit"/targets/*/include/cublas_v2.h >/dev/null 2>&1; then
    exit 0
fi
cublas=""
nv="$(site_nvidia)"
for d in "$nv"/cu13 "$nv"/cublas; do
    [ -f "$d/include/cublas_v2.h" ] && cublas="$d" && break
done
if [ -z "$cublas" ]; then
    cache="${XDG_CACHE_HOME:-$HOME/.cache}/transformers-qwen3/cuda/nvidia-cublas-$CUBLAS_VERSION"
    if [ ! -f "$cache/.complete" ]; then
        [ -n "$py" ] || die "no cuBLAS headers in $toolkit and no python to install nvidia-cublas with"
        say "installing cuBLAS headers and libraries: pip install --no-deps --target $cache nvidia-cublas==$CUBLAS_VERSION"
        rm -rf "$cache.tmp"
        "$py" -m pip install --quiet --no-deps --target "$cache.tmp" "nvidia-cublas==$CUBLAS_VERSION" >&2 ||
            die "pip install nvidia-cublas==$CUBLAS_VERSION failed"
        rm -rf "$cache"
        mv "$cache.tmp" "$cache"
        touch "$cache/.complete"
    fi
    cublas="$(find "$cache/nvidia" -mindepth 1 -maxdepth 1 -type d | head -n1)"
fi
[ -f "$cublas/include/cublas_v2.h" ] || die "no cublas_v2.h under $cublas"
# the wheel ships libcublas.so.13 only; CMake's find_library looks for libcublas.so
links="${XDG_CACHE_HOME:-$HOME/.cache}/transformers-qwen3/cuda/links-$(echo "$cublas" | sha256sum | cut -c1-12)"
mkdir -p "$links"
for lib in cublas cublasLt; do
    so="$(find "$cublas/lib" -maxdepth 1 -name "lib$lib.so.*" | sort | head -n1)"
    [ -n "$so" ] || die "no lib$lib.so.* in $cublas/lib"
    ln -sfn "$so" "$links/lib$lib.so"
done
echo "-DCMAKE_CUDA_FLAGS=-I$cublas/include"
echo "-DCMAKE_LIBRARY_PATH=$links"
