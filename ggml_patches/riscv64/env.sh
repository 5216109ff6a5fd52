# Sourced by the scripts in this folder: where the pinned ziglang (the clang we cross-compile with) lives.
# ziglang is a PyPI package holding a zig binary, which embeds clang/lld, and the clang resource
# headers (riscv_vector.h) in its lib/ folder; setup.sh installs it here with `pip install --target`.
ZIGLANG_VERSION=0.17.0
ZIGLANG_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/transformers-qwen3/ziglang-$ZIGLANG_VERSION"
ZIG="$ZIGLANG_DIR/ziglang/zig"
# Debian's riscv64 cross sysroot (libc6-dev-riscv64-cross, libstdc++-12-dev-riscv64-cross)
RISCV64_SYSROOT=/usr/riscv64-linux-gnu
