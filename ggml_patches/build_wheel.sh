#!/usr/bin/env bash
# Build llama-cpp-python from its PyPI sdist with our patch series applied to the vendored
# llama.cpp, cache the wheel, and install it into a virtual environment.
#
#   ggml_patches/build_wheel.sh VENV_PYTHON            build (or reuse) and install
#   ggml_patches/build_wheel.sh --print-key            print the cache key and exit
#   ggml_patches/build_wheel.sh --rebuild VENV_PYTHON  ignore a cached wheel
#
# Environment: CMAKE_ARGS (passed to the build, e.g. "-DGGML_CUDA=on"; part of the cache key),
# XDG_CACHE_HOME (cache root, default ~/.cache), CMAKE_BUILD_PARALLEL_LEVEL (default: all cores).
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/transformers-qwen3/
#   sdist/<sdist file>          the downloaded sdist, checked against UPSTREAM's sha256
#   wheels/<key>/<wheel>        the built wheel; <key> = sha256 of UPSTREAM, every patch file, the
#                               CPU's flags line (the build uses -march=native), CMAKE_ARGS, and
#                               this script's BUILD_RECIPE number
#   wheels/<key>/build.log      the full build log
# The installed package carries the key in llama_cpp/_ggml_patches.py (generated) and in its
# version, <upstream version>+transformersqwen3.<key[:12]>; when the installed key equals the
# wanted one the script only says so, which keeps repeated `make test` runs instant.
set -euo pipefail

# Bump when the way the wheel is built changes (the generated module, the version label, ...).
BUILD_RECIPE=1

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

say() { echo "ggml_patches: $*"; }
die() {
    echo "ggml_patches/build_wheel.sh: error: $*" >&2
    exit 1
}

print_key=0
rebuild=0
py=""
for arg in "$@"; do
    case "$arg" in
        --print-key) print_key=1 ;;
        --rebuild) rebuild=1 ;;
        -h | --help)
            sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*) die "unknown option '$arg' (see --help)" ;;
        *)
            [ -z "$py" ] || die "only one VENV_PYTHON may be given"
            py="$arg"
            ;;
    esac
done

upstream_value() {
    local v
    v="$(sed -n "s/^$1=//p" "$here/UPSTREAM")"
    [ -n "$v" ] || die "$here/UPSTREAM has no $1= line"
    echo "$v"
}
version="$(upstream_value LLAMA_CPP_PYTHON_VERSION)"
sdist_name="$(upstream_value LLAMA_CPP_PYTHON_SDIST)"
sdist_sha256="$(upstream_value LLAMA_CPP_PYTHON_SDIST_SHA256)"
llama_commit="$(upstream_value LLAMA_CPP_COMMIT)"

shopt -s nullglob
patches=("$here"/[0-9][0-9][0-9][0-9]-*.patch)
shopt -u nullglob
[ ${#patches[@]} -gt 0 ] || die "no NNNN-*.patch files in $here"

# The first line describing the CPU's instruction set: x86 'flags', ARM 'Features', RISC-V 'isa';
# on macOS the sysctl feature lists.
cpu_flags() {
    if [ -r /proc/cpuinfo ]; then
        grep -m1 -E '^(flags|Features|isa)[[:space:]]*:' /proc/cpuinfo || true
    elif command -v sysctl >/dev/null; then
        sysctl -n machdep.cpu.brand_string machdep.cpu.features machdep.cpu.leaf7_features 2>/dev/null || true
    fi
}

compute_key() {
    {
        echo "BUILD_RECIPE=$BUILD_RECIPE"
        echo "== UPSTREAM"
        cat "$here/UPSTREAM"
        for p in "${patches[@]}"; do
            echo "== $(basename "$p")"
            cat "$p"
        done
        echo "== CPU $(uname -s) $(uname -m)"
        cpu_flags
        echo "== CMAKE_ARGS=${CMAKE_ARGS:-}"
    } | sha256sum | cut -d' ' -f1
}
key="$(compute_key)"
if [ "$print_key" = 1 ]; then
    echo "$key"
    exit 0
fi

[ -n "$py" ] || die "usage: build_wheel.sh VENV_PYTHON (e.g. .venv/bin/python); see --help"
[ -x "$py" ] || die "'$py' is not an executable Python; create the venv first (e.g. python3 -m venv .venv)"

local_version="$version+transformersqwen3.${key:0:12}"

# The generated module inside the installed package is the marker of what is installed.
installed_key() {
    "$py" -I -c '
import pathlib, re, sysconfig
p = pathlib.Path(sysconfig.get_paths()["purelib"]) / "llama_cpp" / "_ggml_patches.py"
m = re.search(r"^KEY = \"([0-9a-f]+)\"$", p.read_text(), re.M) if p.is_file() else None
print(m.group(1) if m else "")
'
}
if [ "$rebuild" = 0 ] && [ "$(installed_key)" = "$key" ]; then
    say "patched llama-cpp-python $local_version already installed in $py (key $key)"
    exit 0
fi

cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/transformers-qwen3"
mkdir -p "$cache_root/sdist" "$cache_root/wheels"
# one build at a time per cache (parallel `make test` runs wait here)
exec 9>"$cache_root/.build.lock"
if command -v flock >/dev/null; then
    flock 9
fi

wheel_dir="$cache_root/wheels/$key"
wheel=""
if [ "$rebuild" = 0 ] && [ -d "$wheel_dir" ]; then
    wheel="$(find "$wheel_dir" -maxdepth 1 -name '*.whl' | head -n1)"
fi

if [ -n "$wheel" ]; then
    say "using cached wheel $wheel"
else
    # --- sdist ---------------------------------------------------------------------------------
    sdist="$cache_root/sdist/$sdist_name"
    if [ ! -f "$sdist" ]; then
        say "downloading llama-cpp-python==$version sdist from PyPI"
        dl="$(mktemp -d "$cache_root/sdist/.download.XXXXXX")"
        "$py" -m pip download --no-binary :all: --no-deps -d "$dl" "llama-cpp-python==$version" >"$dl/pip.log" 2>&1 ||
            { cat "$dl/pip.log" >&2; rm -rf "$dl"; die "pip download of llama-cpp-python==$version failed (see above)"; }
        [ -f "$dl/$sdist_name" ] || { ls "$dl" >&2; rm -rf "$dl"; die "pip download did not produce $sdist_name"; }
        mv "$dl/$sdist_name" "$sdist"
        rm -rf "$dl"
    fi
    got_sha256="$(sha256sum "$sdist" | cut -d' ' -f1)"
    if [ "$got_sha256" != "$sdist_sha256" ]; then
        die "$sdist has sha256 $got_sha256, UPSTREAM records $sdist_sha256; delete the file to download it again, or update UPSTREAM and the patches together"
    fi

    # --- extract, patch, label ---------------------------------------------------------------
    work="$(mktemp -d "${TMPDIR:-/tmp}/llama-cpp-python-build.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    say "extracting $sdist_name"
    tar -xzf "$sdist" -C "$work"
    src="$work/${sdist_name%.tar.gz}"
    [ -d "$src/vendor/llama.cpp" ] || die "$sdist_name has no vendor/llama.cpp"
    bash "$here/apply.sh" "$src"

    init="$src/llama_cpp/__init__.py"
    grep -q "^__version__ = \"$version\"\$" "$init" || die "$init does not hold __version__ = \"$version\""
    sed -i.orig "s/^__version__ = \"$version\"\$/__version__ = \"$local_version\"/" "$init"
    rm -f "$init.orig"
    {
        echo '"""What this llama-cpp-python build is: generated by transformers-qwen3'"'"'s'
        echo 'ggml_patches/build_wheel.sh, do not edit."""'
        echo
        echo "KEY = \"$key\""
        echo "UPSTREAM_VERSION = \"$version\""
        echo "LLAMA_CPP_COMMIT = \"$llama_commit\""
        echo "PATCHES = ("
        for p in "${patches[@]}"; do
            echo "    \"$(basename "$p")\","
        done
        echo ")"
        echo "CMAKE_ARGS = \"${CMAKE_ARGS:-}\""
    } >"$src/llama_cpp/_ggml_patches.py"

    # --- build ---------------------------------------------------------------------------------
    mkdir -p "$work/wheel"
    log="$work/build.log"
    export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
    say "building $local_version (CMAKE_ARGS='${CMAKE_ARGS:-}', $CMAKE_BUILD_PARALLEL_LEVEL jobs; 15-50 min on 2 busy cores)"
    say "full log: $log (kept as $wheel_dir/build.log)"
    start=$(date +%s)
    set +e
    nice -n 10 "$py" -m pip wheel --no-deps -v -w "$work/wheel" "$src" 2>&1 |
        tee "$log" |
        awk '{ sub(/^[ \t]+/, "") } /^\[[0-9]+\/[0-9]+\] |^-- Configuring done|^\*\*\* / { print substr($0, 1, 110); fflush() }'
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" != 0 ]; then
        tail -n 40 "$log" >&2
        die "the build failed (exit $status); full log: $log"
    fi
    built="$(find "$work/wheel" -maxdepth 1 -name 'llama_cpp_python-*.whl' | head -n1)"
    [ -n "$built" ] || die "pip wheel produced no llama_cpp_python wheel (log: $log)"

    tmp_dir="$(mktemp -d "$cache_root/wheels/.tmp.XXXXXX")"
    chmod 755 "$tmp_dir"
    mv "$built" "$tmp_dir/"
    cp "$log" "$tmp_dir/build.log"
    rm -rf "$wheel_dir"
    mv "$tmp_dir" "$wheel_dir"
    wheel="$wheel_dir/$(basename "$built")"
    say "built $wheel in $(($(date +%s) - start)) s"
fi

# --- install -------------------------------------------------------------------------------------
say "installing $(basename "$wheel") into $py"
"$py" -m pip install --quiet --force-reinstall --no-deps "$wheel"
# the runtime dependencies that are missing (e.g. diskcache); numpy etc. stay as they are
"$py" -m pip install --quiet "$wheel"
[ "$(installed_key)" = "$key" ] || die "installed llama-cpp-python does not report key $key after installing $wheel"
say "patched llama-cpp-python $local_version installed (key $key)"
