#!/usr/bin/env bash
# Build llama.cpp's own programs (tools, tests, servers, or single object files) from the vendored
# llama.cpp of the llama-cpp-python sdist with our patch series applied, cached by key.
#
#   ggml_patches/build_tree.sh NAME [--toolchain FILE] [--cmake-arg -DX=Y]... [--target T]...
#   ggml_patches/build_tree.sh NAME ... --print-key     print the cache key and exit
#
#   NAME            a label for the build (cpu, riscv64-rvv, cuda-units, ...); part of the key
#   --toolchain F   a CMake toolchain file (cross builds)
#   --cmake-arg A   one CMake argument, after our defaults (so it can override them); repeatable
#   --target T      a Ninja target: a program (llama-quantize), a library, or an object file
#                   (ggml/src/ggml-cuda/CMakeFiles/ggml-cuda.dir/quantize.cu.o); repeatable;
#                   none = everything
#
# On success the last line of stdout is the cached build folder; programs are in its bin/:
#     bin="$(ggml_patches/build_tree.sh cpu --target llama-quantize | tail -n1)/bin"
# Progress goes to stdout as "[n/N] ..." lines; the full log is kept as <folder>/../build.log.
#
# Environment: PYTHON (runs `pip download` for the sdist; default: the repo's .venv/bin/python, else
# python3), CC / CXX / CUDACXX (compilers, as CMake reads them), CMAKE_BUILD_PARALLEL_LEVEL (Ninja
# jobs, default: all cores), XDG_CACHE_HOME. ccache, when on PATH, caches the compiler's work.
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/transformers-qwen3/
#   sdist/<sdist file>        shared with build_wheel.sh
#   trees/<key>/build/        the CMake build folder (bin/, object files); the patched source is not kept
#   trees/<key>/build.log     the full configure + build log
#   trees/<key>/key.txt       what the key was computed from
# <key> = sha256 of BUILD_RECIPE, UPSTREAM, every *.patch under ggml_patches/ (recursively, sorted by
# path), NAME, the CMake arguments, the targets, the toolchain file's content, and the `--version`
# of the C, C++ (and, for CUDA builds, CUDA) compilers (plus their text when they are wrapper
# scripts). A build happens in trees/.tmp.* and is renamed into place when it succeeded; a lock per
# key makes parallel callers of the same build wait for the first one. Shared libraries (if asked
# for) find each other through $ORIGIN, so the rename is safe.
set -euo pipefail

# Bump when the way trees are built changes (the default CMake options below, the layout, ...).
BUILD_RECIPE=1

# Our CMake options, before the caller's. llama.cpp as the top project builds its tests, tools,
# examples and server by default; Ninja then builds only the targets asked for. No libcurl: nothing
# here downloads models, and the cross sysroots have none. Static libraries: each program is one file
# (no LD_LIBRARY_PATH under qemu, nothing to relocate).
DEFAULT_CMAKE_ARGS=(
    -G Ninja
    -DCMAKE_BUILD_TYPE=Release
    -DLLAMA_CURL=OFF
    -DLLAMA_OPENSSL=OFF
    -DBUILD_SHARED_LIBS=OFF
    -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON
)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

say() { echo "ggml_patches: $*"; }
die() {
    echo "ggml_patches/build_tree.sh: error: $*" >&2
    exit 1
}

name=""
toolchain=""
print_key=0
cmake_args=()
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --toolchain)
            [ $# -ge 2 ] || die "--toolchain needs a file"
            toolchain="$2"
            shift 2
            ;;
        --cmake-arg)
            [ $# -ge 2 ] || die "--cmake-arg needs a value (e.g. --cmake-arg -DGGML_RVV=ON)"
            cmake_args+=("$2")
            shift 2
            ;;
        --target)
            [ $# -ge 2 ] || die "--target needs a value (e.g. --target llama-quantize)"
            targets+=("$2")
            shift 2
            ;;
        --print-key)
            print_key=1
            shift
            ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
            exit 0
            ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *)
            [ -z "$name" ] || die "only one NAME may be given (got '$name' and '$1')"
            name="$1"
            shift
            ;;
    esac
done
[ -n "$name" ] || die "usage: build_tree.sh NAME [--toolchain FILE] [--cmake-arg -DX=Y]... [--target T]... (see --help)"
case "$name" in
    *[!A-Za-z0-9._-]*) die "NAME '$name' may hold only letters, digits, '.', '_' and '-'" ;;
esac
if [ -n "$toolchain" ]; then
    [ -f "$toolchain" ] || die "toolchain file '$toolchain' does not exist"
    toolchain="$(cd "$(dirname "$toolchain")" && pwd)/$(basename "$toolchain")"
fi
command -v cmake >/dev/null || die "cmake is required (apt-get install cmake)"
command -v ninja >/dev/null || die "ninja is required (apt-get install ninja-build)"

# upstream_value, sdist_fetch, sdist_extract (shared with build_wheel.sh)
source "$here/sdist.sh"

mapfile -t patches < <(cd "$here" && find . -name '*.patch' -type f | LC_ALL=C sort)
[ ${#patches[@]} -gt 0 ] || die "no *.patch files under $here"

# The compiler CMake will use for language $1 (C, CXX, CUDA): a -DCMAKE_<L>_COMPILER= argument, else
# a set(CMAKE_<L>_COMPILER ...) in the toolchain file (${CMAKE_CURRENT_LIST_DIR} resolved), else the
# environment variable CMake reads, else its usual default.
compiler_for() {
    local lang="$1" env_var="$2" fallback="$3" a c=""
    for a in "${cmake_args[@]+"${cmake_args[@]}"}"; do
        case "$a" in -DCMAKE_${lang}_COMPILER=* | -DCMAKE_${lang}_COMPILER:*=*) c="${a#*=}" ;; esac
    done
    if [ -z "$c" ] && [ -n "$toolchain" ]; then
        c="$(sed -n "s/^[[:space:]]*set(CMAKE_${lang}_COMPILER[[:space:]]\{1,\}\"\{0,1\}\([^\")]*\)\"\{0,1\}.*/\1/p" "$toolchain" | tail -n1)"
        c="${c//\$\{CMAKE_CURRENT_LIST_DIR\}/$(dirname "$toolchain")}"
    fi
    [ -n "$c" ] || c="${!env_var:-$fallback}"
    echo "$c"
}
compiler_versions() {
    local lang c
    local -a langs=(C:CC:cc CXX:CXX:c++)
    if printf '%s\n' "${cmake_args[@]+"${cmake_args[@]}"}" | grep -qi 'CUDA'; then
        langs+=(CUDA:CUDACXX:nvcc)
    fi
    for lang in "${langs[@]}"; do
        IFS=: read -r l env_var fallback <<<"$lang"
        c="$(compiler_for "$l" "$env_var" "$fallback")"
        echo "== compiler $l: $c"
        "$c" --version 2>&1 | head -n 5 || echo "(no --version from '$c')"
        # a wrapper script (riscv64/cc): its flags are part of the compiler
        if [ -f "$c" ] && [ "$(head -c 2 "$c")" = '#!' ]; then cat "$c"; fi
    done
}

key_text() {
    echo "BUILD_RECIPE=$BUILD_RECIPE"
    echo "== UPSTREAM"
    cat "$here/UPSTREAM"
    for p in "${patches[@]}"; do
        echo "== patch ${p#./}"
        cat "$here/$p"
    done
    echo "== NAME=$name"
    echo "== DEFAULT_CMAKE_ARGS=${DEFAULT_CMAKE_ARGS[*]}"
    echo "== CMAKE_ARGS"
    printf '%s\n' "${cmake_args[@]+"${cmake_args[@]}"}"
    echo "== TARGETS"
    printf '%s\n' "${targets[@]+"${targets[@]}"}"
    echo "== TOOLCHAIN ${toolchain:+$(basename "$toolchain")}"
    [ -z "$toolchain" ] || cat "$toolchain"
    compiler_versions
}
key_file="$(mktemp "${TMPDIR:-/tmp}/build_tree_key.XXXXXX")"
trap 'rm -f "$key_file"' EXIT
# a killed build still runs the EXIT trap (removes its temporary folder)
trap 'exit 143' TERM
trap 'exit 130' INT
key_text >"$key_file"
key="$(sha256sum "$key_file" | cut -d' ' -f1)"
if [ "$print_key" = 1 ]; then
    echo "$key"
    exit 0
fi

cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/transformers-qwen3"
trees="$cache_root/trees"
dest="$trees/$key"
mkdir -p "$trees"
if [ ! -d "$dest/build" ]; then
    # one build per key at a time: a second caller waits here, then finds the published folder
    exec 9>"$trees/$key.lock"
    if ! flock -n 9; then
        say "$name: another build of the same key is running; waiting for it ($trees/$key.lock)"
        flock 9
    fi
fi
if [ -d "$dest/build" ]; then
    say "$name: cached build $dest/build"
    echo "$dest/build"
    exit 0
fi

py="${PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x "$here/../.venv/bin/python" ]; then py="$here/../.venv/bin/python"; else py=python3; fi
fi
sdist_fetch "$py" "$cache_root"

work="$(mktemp -d "$trees/.tmp.XXXXXX")"
trap 'rm -f "$key_file"; rm -rf "$work"' EXIT
sdist_extract "$work"
bash "$here/apply.sh" "$sdist_src"
src="$sdist_src/vendor/llama.cpp"
build="$work/build"
log="$work/build.log"
cp "$key_file" "$work/key.txt"

configure=("${DEFAULT_CMAKE_ARGS[@]}")
[ -z "$toolchain" ] || configure+=("-DCMAKE_TOOLCHAIN_FILE=$toolchain")
if command -v ccache >/dev/null; then
    configure+=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    export CCACHE_BASEDIR="$work" CCACHE_NOHASHDIR=1
fi
configure+=("${cmake_args[@]+"${cmake_args[@]}"}")
jobs="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"

say "$name: building ${targets[*]:-all targets} ($jobs jobs; key $key)"
say "$name: cmake args: ${configure[*]}"
say "$name: full log: $log (kept as $dest/build.log)"
start=$(date +%s)
# line by line as they come (awk reading a pipe may wait for a whole block first)
progress() {
    local line
    while IFS= read -r line; do
        line="${line#"${line%%[![:space:]]*}"}"
        case "$line" in
            '['[0-9]*/[0-9]*'] '* | '-- Configuring done'* | 'CMake Error'* | 'FAILED: '*) echo "${line:0:110}" ;;
        esac
    done
}
set +e
{
    echo "== configure"
    nice -n 10 cmake -S "$src" -B "$build" "${configure[@]}" && {
        echo "== build"
        nice -n 10 ninja -C "$build" -j "$jobs" "${targets[@]+"${targets[@]}"}"
    }
} 2>&1 | tee "$log" | progress
status=${PIPESTATUS[0]}
set -e
if [ "$status" != 0 ]; then
    tail -n 40 "$log" >&2
    kept="$trees/failed-$name.log"
    cp "$log" "$kept"
    die "$name: the build failed (exit $status); full log: $kept"
fi

# the patched source is not kept (a fresh extraction rebuilds it in seconds)
rm -rf "$sdist_src"
chmod 755 "$work"
mv "$work" "$dest"
say "$name: built in $(($(date +%s) - start)) s"
echo "$dest/build"
