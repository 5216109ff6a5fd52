#!/usr/bin/env bash
# `make test-cuda-build`: compile, in a CUDA configuration of the patched llama.cpp, the translation
# units our patches touch and the CUDA quantization / matrix-multiplication units, as object files.
# Nothing is linked and nothing runs (no GPU here); a failed compile fails the target.
#
#   ggml_patches/cuda/test_build.sh [--print-key] [--list]
#
# Units: every .c/.cpp/.cu file that a *.patch under ggml_patches/ touches (src/ -> libllama's
# objects, tools/mtmd/ -> libmtmd's, ggml/src/ggml-cuda/ -> ggml-cuda's), plus the fixed CUDA list
# below. Through ggml_patches/build_tree.sh (cached by its key: upstream, patches, CMake arguments,
# targets, compiler versions), so a second run with nothing changed takes seconds.
# Each object is then checked to hold device code (an .nv_fatbin section) when it is a .cu unit.
#
# Time guard: TEST_CUDA_BUILD_TIMEOUT seconds (default 2700); past it the build is stopped and the
# target fails, saying so. The last line printed is a one-line summary.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
patches_dir="$(dirname "$here")"
timeout_s="${TEST_CUDA_BUILD_TIMEOUT:-2700}"

# The CUDA units that quantized inference goes through: the backend itself (op dispatch, cuBLAS
# matmul), activation quantization, the quantized mat-vec (decode) and mat-mat (prompt) kernels with
# the instances of our demo types (Q4_K_M's Q4_K, Q8_0), and dequantize/convert.
CUDA_UNITS=(
    ggml-cuda.cu
    quantize.cu
    mmvq.cu
    mmq.cu
    template-instances/mmq-instance-q4_k.cu
    template-instances/mmq-instance-q8_0.cu
    convert.cu
)
CUDA_OBJ_DIR=ggml/src/ggml-cuda/CMakeFiles/ggml-cuda.dir

summary() { echo "test-cuda-build: $*"; }

# libllama builds src/models/*.cpp as unity batches (UNITY_BUILD_BATCH_SIZE 16 in src/CMakeLists.txt, the
# files in file(GLOB)'s sorted order): a model file's object is the batch that holds it. The sorted list comes
# from the sdist plus the files the patches add.
model_sources() {
    # shellcheck source=../sdist.sh
    here="$patches_dir" source "$patches_dir/sdist.sh"
    here="$patches_dir" sdist_fetch "${PYTHON:-$(command -v python3)}" "${XDG_CACHE_HOME:-$HOME/.cache}/transformers-qwen3" >&2
    {
        tar -tzf "$sdist" | sed -n 's|^[^/]*/vendor/llama.cpp/\(src/models/[^/]*\.cpp\)$|\1|p'
        printf '%s\n' "${touched[@]}" | grep '^src/models/[^/]*\.cpp$' || true
    } | LC_ALL=C sort -u
}
say() { echo "test-cuda-build: $*" >&2; }
die() {
    echo "test-cuda-build: FAILED: $*"
    exit 1
}

# the object file (a Ninja target) of a source file of the llama.cpp tree
object_of() {
    case "$1" in
        src/models/*.cpp)
            [ -n "${models_sorted:-}" ] || models_sorted="$(model_sources)"
            local i
            i="$(grep -nx -F "$1" <<<"$models_sorted" | cut -d: -f1)"
            [ -n "$i" ] || return 1
            echo "src/CMakeFiles/llama.dir/Unity/unity_$(((i - 1) / 16))_cxx.cxx.o"
            ;;
        src/*.cpp) echo "src/CMakeFiles/llama.dir/${1#src/}.o" ;;
        common/*.cpp) echo "common/CMakeFiles/llama-common.dir/${1#common/}.o" ;;
        tools/mtmd/*.cpp) echo "tools/mtmd/CMakeFiles/mtmd.dir/${1#tools/mtmd/}.o" ;;
        ggml/src/ggml-cuda/*.cu) echo "$CUDA_OBJ_DIR/${1#ggml/src/ggml-cuda/}.o" ;;
        ggml/src/ggml-cpu/*.c | ggml/src/ggml-cpu/*.cpp) echo "ggml/src/CMakeFiles/ggml-cpu.dir/${1#ggml/src/}.o" ;;
        ggml/src/*.c | ggml/src/*.cpp) echo "ggml/src/CMakeFiles/ggml-base.dir/${1#ggml/src/}.o" ;;
        *) return 1 ;;
    esac
}

mapfile -t touched < <(find "$patches_dir" -name '*.patch' -type f -print0 | xargs -0 sed -n 's|^+++ b/||p' | sed 's/[[:space:]].*//' | LC_ALL=C sort -u)
targets=()
unknown=()
skipped=()
for f in "${touched[@]}"; do
    case "$f" in *.c | *.cpp | *.cu) ;; *) continue ;; esac
    # another CPU architecture's kernels (RISC-V, ARM, ...) are not part of an x86-64 build
    case "$f" in ggml/src/ggml-cpu/arch/x86/*) ;; ggml/src/ggml-cpu/arch/*) skipped+=("$f"); continue ;; esac
    if [ "${f#src/models/}" != "$f" ] && [ -z "${models_sorted:-}" ]; then models_sorted="$(model_sources)"; fi
    if o="$(object_of "$f")"; then targets+=("$o"); else unknown+=("$f"); fi
done
if [ ${#unknown[@]} -gt 0 ]; then
    summary "FAILED: no object-file rule for ${unknown[*]} (add one to object_of in $0)"
    exit 1
fi
for u in "${CUDA_UNITS[@]}"; do
    targets+=("$CUDA_OBJ_DIR/$u.o")
done
mapfile -t targets < <(printf '%s\n' "${targets[@]}" | awk '!seen[$0]++')

if [ "${1:-}" = --list ]; then
    printf '%s\n' "${targets[@]}"
    exit 0
fi

mapfile -t cuda_args < <(bash "$here/cuda_args.sh") || { summary "FAILED: no CUDA toolchain (see above)"; exit 1; }
[ ${#cuda_args[@]} -gt 0 ] || { summary "FAILED: no CUDA toolchain (see above)"; exit 1; }
args=()
for a in "${cuda_args[@]}"; do args+=(--cmake-arg "$a"); done
for t in "${targets[@]}"; do args+=(--target "$t"); done

if [ "${1:-}" = --print-key ]; then
    exec bash "$patches_dir/build_tree.sh" cuda-units "${args[@]}" --print-key
fi

echo "test-cuda-build: ${#targets[@]} units, time guard ${timeout_s} s:"
[ ${#skipped[@]} -eq 0 ] || echo "  (not in an x86-64 build, not compiled: ${skipped[*]})"
printf '  %s\n' "${targets[@]}"
start=$(date +%s)
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
timeout --foreground -k 30 "$timeout_s" bash "$patches_dir/build_tree.sh" cuda-units "${args[@]}" | tee "$out"
status=${PIPESTATUS[0]}
took=$(($(date +%s) - start))
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    summary "FAILED: stopped by the time guard after ${timeout_s} s (TEST_CUDA_BUILD_TIMEOUT); nothing cached"
    exit 1
fi
if [ "$status" != 0 ]; then
    summary "FAILED: a CUDA-configuration compile failed after ${took} s (log above)"
    exit 1
fi
build="$(tail -n1 "$out")"
missing=()
nodevice=()
for t in "${targets[@]}"; do
    if [ ! -s "$build/$t" ]; then
        missing+=("$t")
    elif [ "${t%.cu.o}" != "$t" ]; then
        # readelf's whole output first: `readelf | grep -q` fails under pipefail when grep stops reading early
        sections="$(readelf -S "$build/$t" 2>/dev/null || true)"
        grep -q '\.nv_fatbin' <<<"$sections" || nodevice+=("$t")
    fi
done
if [ ${#missing[@]} -gt 0 ] || [ ${#nodevice[@]} -gt 0 ]; then
    summary "FAILED: missing objects: ${missing[*]:-none}; .cu objects without device code: ${nodevice[*]:-none}"
    exit 1
fi
# the summary's architecture and nvcc release, from the arguments the build used
arch="$(printf '%s\n' "${cuda_args[@]}" | sed -n 's/^-DCMAKE_CUDA_ARCHITECTURES=/sm_/p')"
nvcc_bin="$(printf '%s\n' "${cuda_args[@]}" | sed -n 's/^-DCMAKE_CUDA_COMPILER=//p')"
nvcc_release="$("${nvcc_bin:-nvcc}" --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p' || true)"
summary "OK: ${#targets[@]} units compiled for CUDA (${arch:-sm_?}, nvcc ${nvcc_release:-?}) in ${took} s; build $build"
