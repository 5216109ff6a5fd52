# CMake toolchain: cross-compile for riscv64 Linux (glibc) with zig's clang and lld (wrappers in this
# folder, installed by setup.sh) against Debian's riscv64 cross sysroot. Programs are linked
# statically, so qemu-riscv64 runs them without -L. The vector flags (-march=rv64gcv_...) are not set
# here: ggml adds them to its CPU backend from GGML_RVV / GGML_RV_* (see riscv64.mk for both builds).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR riscv64)

set(CMAKE_C_COMPILER "${CMAKE_CURRENT_LIST_DIR}/cc")
set(CMAKE_CXX_COMPILER "${CMAKE_CURRENT_LIST_DIR}/c++")
set(CMAKE_C_COMPILER_TARGET riscv64-linux-gnu)
set(CMAKE_CXX_COMPILER_TARGET riscv64-linux-gnu)
# --gcc-toolchain=/usr: clang finds Debian's cross layout (/usr/lib/gcc-cross/riscv64-linux-gnu/12 for
# crtbegin.o and libgcc, /usr/riscv64-linux-gnu for glibc and libstdc++)
set(CMAKE_C_COMPILER_EXTERNAL_TOOLCHAIN /usr)
set(CMAKE_CXX_COMPILER_EXTERNAL_TOOLCHAIN /usr)
set(CMAKE_AR "${CMAKE_CURRENT_LIST_DIR}/ar" CACHE FILEPATH "llvm-ar from zig")
set(CMAKE_RANLIB "${CMAKE_CURRENT_LIST_DIR}/ranlib" CACHE FILEPATH "llvm-ranlib from zig")
set(CMAKE_EXE_LINKER_FLAGS_INIT "-static --ld-path=${CMAKE_CURRENT_LIST_DIR}/ld.lld")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "--ld-path=${CMAKE_CURRENT_LIST_DIR}/ld.lld")
set(CMAKE_MODULE_LINKER_FLAGS_INIT "--ld-path=${CMAKE_CURRENT_LIST_DIR}/ld.lld")

set(CMAKE_FIND_ROOT_PATH /usr/riscv64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
