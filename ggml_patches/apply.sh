#!/usr/bin/env bash
# Apply the numbered patch series in this folder (0001-*.patch, 0002-*.patch, ...) to a llama.cpp
# source tree, in order, with `patch -p1 --forward --fuzz=0`.
#
#   ggml_patches/apply.sh SRC_DIR
#
# SRC_DIR is either the extracted llama-cpp-python sdist (the patches then go into its
# vendor/llama.cpp) or a llama.cpp tree itself. We use `patch`, not `git apply`: in the sdist
# vendor/llama.cpp/.git is a submodule pointer (gitdir: ../../.git/modules/...), which breaks
# `git apply` as soon as the folder is moved out of the sdist; `patch` ignores it.
#
# Each patch is first tried with --dry-run, so a patch that does not apply cleanly (conflict,
# fuzz, already applied) writes nothing; the script then names the patch, shows patch's output and
# exits non-zero. Patches before it stay applied (the tree is a throwaway build copy).
# On success a marker SRC/.ggml_patches_applied lists the series; a second run with the same series
# does nothing, with another series it fails.
#
# python/NNNN-*.patch, a second series, changes llama-cpp-python's own Python files (the bindings of
# the C functions the first series adds, and their Llama(...) keywords). It applies to the sdist root
# with the same rules and its own marker, SDIST/.ggml_patches_python_applied; given a llama.cpp tree
# (no sdist around it) the script applies the first series only and says so.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() {
    echo "ggml_patches/apply.sh: error: $*" >&2
    exit 1
}

[ $# -eq 1 ] || die "usage: apply.sh SRC_DIR (the extracted llama-cpp-python sdist or a llama.cpp tree)"
src="$1"
[ -d "$src" ] || die "SRC_DIR '$src' is not a directory"
sdist=""
if [ -d "$src/vendor/llama.cpp" ]; then
    sdist="$src"
    src="$src/vendor/llama.cpp"
fi
[ -f "$src/tools/mtmd/mtmd.cpp" ] || die "'$src' does not look like a llama.cpp tree (no tools/mtmd/mtmd.cpp)"
command -v patch >/dev/null || die "the 'patch' program is required (apt-get install patch)"

# apply_series DIR MARKER PATCH...: dry-run then apply each patch in order; the marker lists the series
apply_series() {
    local dir="$1" marker="$2"
    shift 2
    local series="" p name out
    for p in "$@"; do
        series+="$(basename "$p") $(sha256sum "$p" | cut -d' ' -f1)"$'\n'
    done
    if [ -f "$marker" ]; then
        if [ "$(cat "$marker")" = "${series%$'\n'}" ]; then
            echo "ggml_patches: series already applied to $dir, nothing to do"
            return 0
        fi
        die "$dir already has another patch series applied (see $marker); start from a fresh extraction"
    fi
    for p in "$@"; do
        name="$(basename "$p")"
        if ! out="$(patch -p1 --forward --fuzz=0 --batch --dry-run -d "$dir" -i "$p" 2>&1)"; then
            echo "$out" >&2
            die "patch $name does not apply cleanly to $dir (conflict, fuzz or already applied); nothing of it was written"
        fi
        if ! out="$(patch -p1 --forward --fuzz=0 --batch --no-backup-if-mismatch -d "$dir" -i "$p" 2>&1)"; then
            echo "$out" >&2
            die "patch $name failed while applying to $dir"
        fi
        echo "ggml_patches: applied $name"
    done
    printf '%s' "${series%$'\n'}" >"$marker"
    echo "ggml_patches: $# patches applied to $dir"
}

shopt -s nullglob
patches=("$here"/[0-9][0-9][0-9][0-9]-*.patch)
python_patches=("$here"/python/[0-9][0-9][0-9][0-9]-*.patch)
shopt -u nullglob
[ ${#patches[@]} -gt 0 ] || die "no NNNN-*.patch files in $here"

apply_series "$src" "$src/.ggml_patches_applied" "${patches[@]}"

if [ ${#python_patches[@]} -gt 0 ]; then
    if [ -n "$sdist" ]; then
        apply_series "$sdist" "$sdist/.ggml_patches_python_applied" "${python_patches[@]}"
    else
        echo "ggml_patches: $src is a llama.cpp tree, not an sdist: python/*.patch (llama-cpp-python's files) not applied"
    fi
fi
