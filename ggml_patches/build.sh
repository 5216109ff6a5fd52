#!/usr/bin/env bash
# One build entry per target: the patched llama-cpp-python wheel (cpu, cuda, metal) or the RISC-V
# builds (riscv64), from the same patch series, each cached by its own key.
#
#   ggml_patches/build.sh cpu     [VENV_PYTHON]   build_wheel.sh with the user's CMAKE_ARGS; installs
#                                                 into VENV_PYTHON (default .venv/bin/python)
#   ggml_patches/build.sh cuda    [VENV_PYTHON]   + the CUDA arguments of ggml_patches/cuda/cuda_args.sh
#                                                 (nvcc, one architecture, FA off, cuBLAS headers)
#   ggml_patches/build.sh metal   [VENV_PYTHON]   + -DGGML_METAL=ON; macOS only (see docs/backends.md)
#   ggml_patches/build.sh riscv64 {rvv,scalar} [PYTHON]
#                                                 ggml_patches/riscv64/build.sh: llama.cpp's programs
#                                                 cross-built for riscv64 (vector or scalar reference)
#   ggml_patches/build.sh TARGET --print-key      the wheel's cache key
#
# cuda and metal without VENV_PYTHON build the wheel with a throwaway venv under the cache (so a CUDA
# build never replaces the CPU build of the project's .venv) and print the cached wheel's path last.
# Other options (--rebuild) go to build_wheel.sh. The key covers upstream, the patches, the CPU,
# CMAKE_ARGS (which holds the target's arguments) and the recipe, so each target has its own wheel.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() {
    echo "ggml_patches/build.sh: error: $*" >&2
    exit 1
}
usage="usage: build.sh {cpu,riscv64,cuda,metal} [VENV_PYTHON] [--rebuild|--print-key] (see --help)"

case "${1:-}" in
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    "") die "$usage" ;;
esac
target="$1"
shift

if [ "$target" = riscv64 ]; then
    # the RISC-V cross builds live beside this script, in riscv64/ (the wheel is built natively on a board:
    # `build.sh cpu` there, see docs/backends.md)
    [ -f "$here/riscv64/build.sh" ] || die "ggml_patches/riscv64/build.sh is missing (the RISC-V scripts)"
    exec bash "$here/riscv64/build.sh" "$@"
fi

opts=()
py=""
for arg in "$@"; do
    case "$arg" in
        -*) opts+=("$arg") ;;
        *)
            [ -z "$py" ] || die "only one VENV_PYTHON may be given"
            py="$arg"
            ;;
    esac
done
print_key=0
for o in "${opts[@]+"${opts[@]}"}"; do [ "$o" = --print-key ] && print_key=1; done

user_args="${CMAKE_ARGS:-}"
case "$target" in
    cpu)
        [ -n "$py" ] || py="$here/../.venv/bin/python"
        ;;
    cuda)
        cuda_args="$(bash "$here/cuda/cuda_args.sh" ${py:+"$py"} | tr '\n' ' ')" || die "no CUDA toolchain (see above)"
        export CMAKE_ARGS="${cuda_args% }${user_args:+ $user_args}"
        ;;
    metal)
        if [ "$(uname -s)" != Darwin ] && [ "$print_key" = 0 ]; then
            die "Metal builds need macOS with Xcode's command-line tools (the Metal shader compiler); nothing on $(uname -s) can compile Metal. On a Mac: ggml_patches/build.sh metal .venv/bin/python"
        fi
        export CMAKE_ARGS="-DGGML_METAL=ON${user_args:+ $user_args}"
        ;;
    *) die "unknown target '$target'; $usage" ;;
esac

if [ "$print_key" = 1 ]; then
    exec bash "$here/build_wheel.sh" --print-key
fi

if [ -z "$py" ]; then
    # a throwaway venv: build_wheel.sh builds, caches and installs there, and the wheel stays cached
    venv="${XDG_CACHE_HOME:-$HOME/.cache}/transformers-qwen3/build-venvs/$target"
    if [ ! -x "$venv/bin/python" ]; then
        echo "ggml_patches: creating the build venv $venv"
        python3 -m venv "$venv"
    fi
    py="$venv/bin/python"
fi
bash "$here/build_wheel.sh" "${opts[@]+"${opts[@]}"}" "$py"
key="$(bash "$here/build_wheel.sh" --print-key)"
wheel="$(find "${XDG_CACHE_HOME:-$HOME/.cache}/transformers-qwen3/wheels/$key" -maxdepth 1 -name '*.whl' 2>/dev/null | head -n1)"
[ -z "$wheel" ] || echo "$wheel"
