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
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() {
    echo "ggml_patches/apply.sh: error: $*" >&2
    exit 1
}

[ $# -eq 1 ] || die "usage: apply.sh SRC_DIR (the extracted llama-cpp-python sdist or a llama.cpp tree)"
src="$1"
[ -d "$src" ] || die "SRC_DIR '$src' is not a directory"
if [ -d "$src/vendor/llama.cpp" ]; then
    src="$src/vendor/llama.cpp"
fi
[ -f "$src/tools/mtmd/mtmd.cpp" ] || die "'$src' does not look like a llama.cpp tree (no tools/mtmd/mtmd.cpp)"
command -v patch >/dev/null || die "the 'patch' program is required (apt-get install patch)"

shopt -s nullglob
patches=("$here"/[0-9][0-9][0-9][0-9]-*.patch)
shopt -u nullglob
[ ${#patches[@]} -gt 0 ] || die "no NNNN-*.patch files in $here"

series=""
for p in "${patches[@]}"; do
    series+="$(basename "$p") $(sha256sum "$p" | cut -d' ' -f1)"$'\n'
done

marker="$src/.ggml_patches_applied"
if [ -f "$marker" ]; then
    if [ "$(cat "$marker")" = "${series%$'\n'}" ]; then
        echo "ggml_patches: series already applied to $src, nothing to do"
        exit 0
    fi
    die "$src already has another patch series applied (see $marker); start from a fresh extraction"
fi

for p in "${patches[@]}"; do
    name="$(basename "$p")"
    if ! out="$(patch -p1 --forward --fuzz=0 --batch --dry-run -d "$src" -i "$p" 2>&1)"; then
        echo "$out" >&2
        die "patch $name does not apply cleanly to $src (conflict, fuzz or already applied); nothing of it was written"
    fi
    if ! out="$(patch -p1 --forward --fuzz=0 --batch --no-backup-if-mismatch -d "$src" -i "$p" 2>&1)"; then
        echo "$out" >&2
        die "patch $name failed while applying to $src"
    fi
    echo "ggml_patches: applied $name"
done

printf '%s' "${series%$'\n'}" >"$marker"
echo "ggml_patches: ${#patches[@]} patches applied to $src"
