"""The RISC-V checks (`make test-riscv`): llama.cpp cross-built for riscv64 with the vector extension (RVV 1.0)
and run under qemu-user. Collected only when asked for by path (``pytest tests/riscv``): they need the two
cross builds (ggml_patches/riscv64/build.sh, ~1 h on two busy cores the first time, cached after) and qemu, so
the main suite (``pytest -m "not slow"`` over tests/) leaves this folder out instead of skipping its tests.

Fixtures: the two builds' bin/ folders (building them on first use), and the GGUF files the checks run (tiny-mm
through ``transformers-qwen3 convert``; the demo model through the demo's own converter cache)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from riscv_tools import build

HERE = Path(__file__).resolve().parent


def pytest_ignore_collect(collection_path, config):
    """Leave tests/riscv out unless a command-line path points into it."""
    if HERE not in (collection_path, *collection_path.parents):
        return None
    for arg in config.args:
        target = Path(arg.split("::")[0]).resolve()
        if target == HERE or HERE in target.parents:
            return None
    return True


@pytest.fixture(scope="session")
def rvv_bin() -> Path:
    return build("rvv")


@pytest.fixture(scope="session")
def scalar_bin() -> Path:
    return build("scalar")


def convert(src: Path, out: Path, outtype: str) -> tuple[Path, Path]:
    """(text GGUF, mmproj GGUF) of ``src`` written by ``transformers-qwen3 convert`` (the user's command)."""
    cmd = [sys.executable, "-m", "transformers_qwen3.cli", "convert", str(src), str(out), "--outtype", outtype]
    proc = subprocess.run([*cmd, "--no-progress", "--force"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    ggufs = sorted(out.glob(f"*-{outtype.upper()}.gguf"))
    text = [p for p in ggufs if not p.name.startswith("mmproj-")]
    mmproj = sorted(out.glob("mmproj-*.gguf"))
    assert len(text) == 1 and mmproj, f"convert wrote {sorted(p.name for p in out.iterdir())}"
    return text[0], mmproj[0]


@pytest.fixture(scope="session")
def tiny_mm(tmp_path_factory) -> Path:
    """The tiny multimodal checkpoint (``init --preset tiny-mm``: vision + audio towers, random weights)."""
    from helpers.convert_fixtures import checkpoint

    return checkpoint(tmp_path_factory.mktemp("riscv-checkpoints"), "mm")


@pytest.fixture(scope="session")
def tiny_mm_gguf(tiny_mm, tmp_path_factory):
    """outtype -> (text GGUF, mmproj GGUF), converted on first use."""
    done: dict[str, tuple[Path, Path]] = {}

    def get(outtype: str) -> tuple[Path, Path]:
        if outtype not in done:
            done[outtype] = convert(tiny_mm, tmp_path_factory.mktemp(f"tiny-mm-{outtype}"), outtype)
        return done[outtype]

    return get


@pytest.fixture(scope="session")
def demo_gguf():
    """outtype -> (text GGUF, mmproj GGUF) of the demo model, through the demo's converter cache (shared with
    `make demo`, which writes F16 and Q8_0 there)."""
    from transformers_qwen3.demo.model import cache_root, demo_checkpoint
    from transformers_qwen3.demo.run import gguf_files

    folder = demo_checkpoint()
    gguf_dir = cache_root() / "demo" / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    return lambda outtype: gguf_files(folder, outtype, gguf_dir)
