"""The hardware probe (``transformers-qwen3 hw``): memory, accelerators and CPU instruction sets, and the byte budget
``plan --budget auto`` would use, with the reason.

Standard library and torch only: RAM from /proc/meminfo (Linux) or ``os.sysconf`` (total only elsewhere), CUDA
devices and their free memory from ``torch.cuda.mem_get_info``, MPS from ``torch.backends.mps``, ISA flags from
/proc/cpuinfo (x86 ``flags``, Arm ``Features``; RISC-V ``isa``) or ``platform.machine()``.
"""

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The flags llama.cpp's CPU backend picks kernels by, as /proc/cpuinfo spells them (x86 lower case, Arm "asimd").
ISA_FLAGS = {
    "avx": "AVX",
    "avx2": "AVX2",
    "fma": "FMA",
    "f16c": "F16C",
    "avx512f": "AVX-512F",
    "avx512bw": "AVX-512BW",
    "avx512_vnni": "AVX-512-VNNI",
    "avx512_bf16": "AVX-512-BF16",
    "avx_vnni": "AVX-VNNI",
    "amx_int8": "AMX-INT8",
    "asimd": "NEON",
    "asimddp": "NEON-DOTPROD",
    "i8mm": "I8MM",
    "sve": "SVE",
    "sve2": "SVE2",
}
# What the budget leaves to everything else: the OS, the Python process, activations. A quarter of the free memory
# (at least 1 GiB on the CPU, 0.5 GiB on a GPU) is a conservative rule, not a measurement; `plan --budget` overrides.
RESERVE_FRACTION = 0.25
CPU_RESERVE_MIN = 1 << 30
GPU_RESERVE_MIN = 1 << 29


@dataclass
class Device:
    kind: str  # "cpu", "cuda", "mps"
    name: str
    total_bytes: int | None
    free_bytes: int | None


@dataclass
class Hardware:
    machine: str
    cpu_count: int
    isa: list[str]
    ram_total_bytes: int | None
    ram_available_bytes: int | None
    devices: list[Device] = field(default_factory=list)

    def budget(self, runtime: str = "gguf") -> tuple[int | None, str]:
        """(bytes ``plan --budget auto`` uses, why). The largest accelerator's free memory for torch on a GPU;
        otherwise the available RAM (llama.cpp on the CPU, or torch on the CPU). Each minus the reserve."""
        gpus = [d for d in self.devices if d.kind != "cpu" and d.free_bytes]
        if runtime == "torch" and gpus:
            best = max(gpus, key=lambda d: d.free_bytes)
            reserve = max(int(best.free_bytes * RESERVE_FRACTION), GPU_RESERVE_MIN)
            why = f"{best.kind} device '{best.name}': {gib(best.free_bytes)} free, minus {gib(reserve)} reserve"
            return max(best.free_bytes - reserve, 0), why
        if self.ram_available_bytes is None:
            return None, "available RAM unknown on this platform: give --budget in bytes (e.g. 4.2GB)"
        reserve = max(int(self.ram_available_bytes * RESERVE_FRACTION), CPU_RESERVE_MIN)
        why = f"RAM: {gib(self.ram_available_bytes)} available, minus {gib(reserve)} reserve"
        return max(self.ram_available_bytes - reserve, 0), why


def gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / (1 << 30):.2f} GiB"


def _meminfo(path: Path = Path("/proc/meminfo")) -> dict[str, int]:
    """/proc/meminfo as bytes per key (its values are in kB)."""
    out = {}
    try:
        for line in path.read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return out


def _ram() -> tuple[int | None, int | None]:
    info = _meminfo()
    if "MemTotal" in info:
        return info["MemTotal"], info.get("MemAvailable", info.get("MemFree"))
    try:  # macOS and other POSIX systems: the total only
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), None
    except (ValueError, OSError, AttributeError):
        return None, None


def isa_flags(cpuinfo: str | None = None, machine: str | None = None) -> list[str]:
    """The instruction-set extensions of ISA_FLAGS this CPU reports, plus RVV from a RISC-V ``isa`` line."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    machine = machine or platform.machine()
    found = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            found |= set(value.split())
        elif key == "isa":  # RISC-V: rv64imafdcv_... ; the vector extension is the 'v' in the single-letter part
            base = value.strip().split("_")[0]
            if base.startswith(("rv64", "rv32")) and "v" in base[4:]:
                found.add("rvv")
    names = [name for flag, name in ISA_FLAGS.items() if flag in found]
    if "rvv" in found:
        names.append("RVV")
    if not names and machine in ("arm64", "aarch64"):
        names.append("NEON")  # every AArch64 CPU has it; macOS has no /proc/cpuinfo
    return names


def _devices() -> list[Device]:
    import torch

    devices = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            devices.append(Device("cuda", torch.cuda.get_device_name(index), total, free))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        # MPS shares the system RAM; torch reports the driver's recommended ceiling, not a free figure
        ceiling = torch.mps.recommended_max_memory() if hasattr(torch.mps, "recommended_max_memory") else None
        devices.append(Device("mps", "Apple GPU (unified memory)", ceiling, None))
    return devices


def probe() -> Hardware:
    total, available = _ram()
    machine = platform.machine()
    return Hardware(machine, os.cpu_count() or 1, isa_flags(machine=machine), total, available, _devices())


def report(hw: Hardware) -> str:
    lines = [
        f"CPU        {hw.machine}, {hw.cpu_count} cores; ISA: {', '.join(hw.isa) or 'none detected'}",
        f"RAM        {gib(hw.ram_total_bytes)} total, {gib(hw.ram_available_bytes)} available",
    ]
    for d in hw.devices:
        lines.append(f"{d.kind:<10} {d.name}: {gib(d.total_bytes)} total, {gib(d.free_bytes)} free")
    if not hw.devices:
        lines.append("GPU        none (no CUDA device, no MPS)")
    for runtime in ("gguf", "torch"):
        budget, why = hw.budget(runtime)
        lines.append(f"budget     auto for --runtime {runtime}: {gib(budget)} ({why})")
    return "\n".join(lines)


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print the probe as JSON instead of a table")


def run(args) -> int:
    hw = probe()
    if args.json:
        data = asdict(hw)
        data["budget"] = {r: dict(zip(("bytes", "why"), hw.budget(r), strict=True)) for r in ("gguf", "torch")}
        print(json.dumps(data, indent=2))
    else:
        print(report(hw))
    return 0
