#!/usr/bin/env bash
# Install what the riscv64 cross build and its checks need, once; a second run only checks.
#   - Debian packages: the riscv64 cross sysroot (glibc and libstdc++ headers and static libraries) and
#     qemu-user (qemu-riscv64 runs the programs); apt-get, as root
#   - ziglang==$ZIGLANG_VERSION from PyPI (a clang with RISC-V vector intrinsics and lld; Debian 12's
#     riscv64 gcc 12 has no riscv_vector.h), with `pip install --target` into the cache (env.sh)
#
#   ggml_patches/riscv64/setup.sh [PYTHON]     PYTHON runs pip (default: python3)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
py="${1:-python3}"

die() {
    echo "ggml_patches/riscv64/setup.sh: error: $*" >&2
    exit 1
}

debs=(libc6-dev-riscv64-cross libstdc++-12-dev-riscv64-cross qemu-user)
missing=()
for d in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q 'install ok installed' || missing+=("$d")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing Debian packages ${missing[*]}; install them as root: apt-get install -y ${missing[*]}"
    echo "ggml_patches: installing ${missing[*]} (apt-get)"
    log="$(mktemp "${TMPDIR:-/tmp}/riscv64-apt.XXXXXX")"
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"; } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "apt-get install ${missing[*]} failed (log: $log)"
    fi
    rm -f "$log"
fi

if [ ! -x "$ZIG" ]; then
    echo "ggml_patches: installing ziglang==$ZIGLANG_VERSION into $ZIGLANG_DIR (pip)"
    mkdir -p "$(dirname "$ZIGLANG_DIR")"
    tmp="$(mktemp -d "$(dirname "$ZIGLANG_DIR")/.ziglang.XXXXXX")"
    if ! "$py" -m pip install --quiet --no-deps --target "$tmp" "ziglang==$ZIGLANG_VERSION" >"$tmp.log" 2>&1; then
        cat "$tmp.log" >&2
        rm -rf "$tmp" "$tmp.log"
        die "pip install ziglang==$ZIGLANG_VERSION failed (see above)"
    fi
    rm -f "$tmp.log"
    rm -rf "$ZIGLANG_DIR"
    mv "$tmp" "$ZIGLANG_DIR"
fi
[ -f "$ZIGLANG_DIR/ziglang/lib/include/riscv_vector.h" ] || die "$ZIGLANG_DIR has no lib/include/riscv_vector.h"
command -v qemu-riscv64 >/dev/null || die "qemu-riscv64 is not on PATH after installing qemu-user"
