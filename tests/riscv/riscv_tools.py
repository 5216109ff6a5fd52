"""Running the riscv64 builds under qemu-user, for the checks in this folder.

``qemu-riscv64 -cpu rv64,Zfh=true,v=true,vlen=N,vext_spec=v1.0`` emulates a RISC-V CPU with the ratified vector
extension (RVV 1.0) and vector registers of N bits; ggml's RVV kernels pick their code path from the VLEN they read at run
time, so the checks run at 128 and 256. The programs are linked statically (ggml_patches/riscv64/toolchain.cmake),
so qemu needs no sysroot (-L)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "ggml_patches" / "riscv64" / "build.sh"
# llama-mtmd-cli formats -p with the GGUF's chat template; this one passes our already formatted prompt (our chat
# template's text with mtmd's media marker, as the x86 driver feeds mtmd) through unchanged
PASS_THROUGH_TEMPLATE = "{{ messages[0]['content'] }}"
# what the x86 side (llama-cpp-python's Llama, runtime/llama_cpp.py) runs with: no flash attention. llama.cpp's tools
# default to -fa auto, which is on for the CPU: the tiny qwen3's F32 logits then differ from x86 and from transformers
# by 4e-4 relative instead of 3e-7 (measured)
X86_SETTINGS = ("-fa", "off")


def build(flavour: str) -> Path:
    """The bin/ folder of ``build.sh flavour`` (rvv or scalar): built once, then reused from the cache."""
    proc = subprocess.run(["bash", str(BUILD_SH), flavour, sys.executable], capture_output=True, text=True)
    assert proc.returncode == 0, f"{BUILD_SH} {flavour} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    bin_dir = Path(proc.stdout.strip().splitlines()[-1]) / "bin"
    assert bin_dir.is_dir(), f"{BUILD_SH} {flavour} printed {bin_dir}, which is not a folder"
    return bin_dir


def cpu(vlen: int | None) -> str:
    """qemu's -cpu value: RVV 1.0 with ``vlen``-bit vector registers, or (None) the same CPU without V.
    Zfh (scalar half precision, ggml's GGML_RV_ZFH default, in both builds) is off in qemu 7.2's rv64 unless asked."""
    return "rv64,Zfh=true" if vlen is None else f"rv64,Zfh=true,v=true,vlen={vlen},vext_spec=v1.0"


def start(bin_dir: Path, program: str, *args, vlen: int | None = 128) -> subprocess.Popen:
    """``program`` from ``bin_dir`` started under qemu-riscv64 (stdout and stderr piped as text); :func:`finish` it."""
    cmd = ["qemu-riscv64", "-cpu", cpu(vlen), str(bin_dir / program), *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")


def finish(proc: subprocess.Popen, timeout: int) -> subprocess.CompletedProcess:
    """Wait for a :func:`start`-ed program (killed past ``timeout`` seconds: TimeoutExpired, the check fails)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(bin_dir: Path, program: str, *args, vlen: int | None = 128, timeout: int = 600) -> subprocess.CompletedProcess:
    """``program`` from ``bin_dir`` under qemu-riscv64, stopped past ``timeout`` seconds (each call here takes
    seconds to ~2 min on two idle cores: docs/backends.md)."""
    return finish(start(bin_dir, program, *args, vlen=vlen), timeout)


def explain(proc: subprocess.CompletedProcess, tail: int = 3000) -> str:
    """The command, its exit status and the end of its output, for an assertion message."""
    cmd = " ".join(map(str, proc.args))
    return f"{cmd}\nexit {proc.returncode}\n--- stdout\n{proc.stdout[-tail:]}\n--- stderr\n{proc.stderr[-tail:]}"


def cpu_features(output: str) -> dict[str, str]:
    """The CPU backend's features from llama.cpp's system-info line
    (``system_info: n_threads = 2 ... | CPU : RISCV_V = 1 | RVV_VLEN = 16 | ...``); {} when there is none."""
    line = next((ln for ln in output.splitlines() if "system_info:" in ln and "CPU :" in ln), "")
    return dict(re.findall(r"(\w+) = (\w+)", line.split("CPU :", 1)[1])) if line else {}


def mtmd_answer(bin_dir: Path, gguf: Path, mmproj: Path, prompt: str, media: Path, n_predict: int) -> str:
    """llama-mtmd-cli's greedy answer (its stdout) to ``prompt`` (one media marker) with the image or audio file."""
    proc = run(
        bin_dir, "llama-mtmd-cli", "-m", gguf, "--mmproj", mmproj, "--image", media, "-p", prompt, "--jinja",
        "--chat-template", PASS_THROUGH_TEMPLATE, "-n", n_predict, "--temp", 0, "-t", 2, "-c", 512, *X86_SETTINGS,
    )  # fmt: skip
    assert proc.returncode == 0, explain(proc)
    # llama-mtmd-cli frames the generated text with "\n" before and "\n\n" after (measured); the text between is
    # compared whole, whitespace included (the tiny model's answers are often newlines)
    assert proc.stdout.startswith("\n") and proc.stdout.endswith("\n\n"), explain(proc)
    return proc.stdout[1:-2]


def final_logits(
    bin_dir: Path, gguf: Path, out_dir: Path, prompt: str, *args, vlen: int | None = 128
) -> tuple[np.ndarray, list[int]]:
    """(logits at the prompt's last position, the prompt's token ids) from ``llama-debug --save-logits`` (F32 KV cache,
    as the x86 driver's ``prompt_logits``); ``args`` are more llama.cpp arguments (``--ffn-width 64``)."""
    proc = run(
        bin_dir, "llama-debug", "-m", gguf, "-p", prompt, "-t", 2, "-c", 128, "-ctk", "f32", "-ctv", "f32", *X86_SETTINGS,
        "--save-logits", "--logits-output-dir", out_dir, *args, vlen=vlen,
    )  # fmt: skip
    assert proc.returncode == 0, explain(proc)
    stem = Path(out_dir) / f"llamacpp-{gguf.stem}"
    # llama-debug logs a failed save and still exits 0
    assert Path(f"{stem}.bin").is_file(), explain(proc)
    logits = np.fromfile(f"{stem}.bin", dtype=np.float32)
    tokens = np.fromfile(f"{stem}-tokens.bin", dtype=np.int32).tolist()
    return logits, tokens
