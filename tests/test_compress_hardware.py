"""The hardware probe (`transformers-qwen3 hw`): ISA flags from /proc/cpuinfo text of three architectures, the RAM
figures against the kernel's own count (sysconf), and the `auto` budget rule."""

import json
import os
import subprocess
import sys

import pytest

from transformers_qwen3.compress.hardware import Device, Hardware, isa_flags, probe

X86 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma f16c avx512f avx512bw avx512_vnni\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp sve i8mm\n"
RISCV = "processor\t: 0\nisa\t\t: rv64imafdcv_zicbom_zicboz\n"
RISCV_NO_V = "processor\t: 0\nisa\t\t: rv64imafdc_zicsr\n"


@pytest.mark.parametrize(
    "cpuinfo,machine,expected",
    [
        (X86, "x86_64", ["AVX", "AVX2", "FMA", "F16C", "AVX-512F", "AVX-512BW", "AVX-512-VNNI"]),
        (ARM, "aarch64", ["NEON", "NEON-DOTPROD", "I8MM", "SVE"]),
        (RISCV, "riscv64", ["RVV"]),
        (RISCV_NO_V, "riscv64", []),
        ("", "arm64", ["NEON"]),  # macOS: no /proc/cpuinfo, every AArch64 CPU has NEON
    ],
)
def test_isa_flags(cpuinfo, machine, expected):
    assert isa_flags(cpuinfo, machine) == expected


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="Linux only: /proc/meminfo")
def test_ram_matches_the_kernel():
    hw = probe()
    # sysconf's physical pages and /proc/meminfo's MemTotal are the same kernel counter (totalram_pages)
    assert hw.ram_total_bytes == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < hw.ram_available_bytes <= hw.ram_total_bytes


def test_auto_budget_rule():
    gib = 1 << 30
    cpu_only = Hardware("x86_64", 8, [], 32 * gib, 16 * gib)
    budget, why = cpu_only.budget("gguf")
    assert budget == 12 * gib and "16.00 GiB available" in why
    small = Hardware("x86_64", 2, [], 2 * gib, 2 * gib)
    assert small.budget("gguf")[0] == 1 * gib  # the 1 GiB minimum reserve
    gpu = Hardware("x86_64", 8, [], 32 * gib, 16 * gib, [Device("cuda", "GPU A", 24 * gib, 20 * gib)])
    assert gpu.budget("torch")[0] == 15 * gib and "GPU A" in gpu.budget("torch")[1]
    assert gpu.budget("gguf")[0] == 12 * gib  # llama.cpp on the CPU: RAM
    unknown = Hardware("sparc", 1, [], None, None)
    assert unknown.budget("gguf")[0] is None and "--budget" in unknown.budget("gguf")[1]


def test_hw_verb():
    out = subprocess.run(
        [sys.executable, "-m", "transformers_qwen3.cli", "hw", "--json"], capture_output=True, text=True, check=True
    ).stdout
    data = json.loads(out)
    assert data["cpu_count"] == os.cpu_count()
    assert set(data["budget"]) == {"gguf", "torch"}
    table = subprocess.run(
        [sys.executable, "-m", "transformers_qwen3.cli", "hw"], capture_output=True, text=True, check=True
    ).stdout
    assert "budget     auto for --runtime gguf" in table
