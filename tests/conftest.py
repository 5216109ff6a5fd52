"""Shared fixtures. Tests pin torch to one thread: two threads on a busy 2-core machine made small matmuls ~1000x
slower, and results must not depend on the thread count.

transformers copies a trust_remote_code folder's .py files into ``$HF_MODULES_CACHE`` (default
~/.cache/huggingface/modules) with a plain, non-atomic ``shutil.copyfile`` and imports them from there. Two pytest
processes loading same-named folders (pytest-xdist workers, or two people's runs) could import a half-written file, so
each test process, and the subprocesses it starts, gets its own folder, removed at exit. Set before transformers is
imported: it reads the variable once, at import."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

_MODULES_CACHE = tempfile.mkdtemp(prefix="transformers-qwen3-tests-hf-modules-")
os.environ["HF_MODULES_CACHE"] = _MODULES_CACHE
atexit.register(shutil.rmtree, _MODULES_CACHE, ignore_errors=True)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    from transformers_qwen3.checkpoint.tokenizer import build_qwen3_tokenizer

    return build_qwen3_tokenizer()


def run_clean_python(code: str, cwd: Path, timeout: int = 300) -> str:
    """Run ``code`` in a fresh interpreter where ``transformers_qwen3`` cannot be imported (a Hub user's machine)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    # -I: isolated mode, ignores PYTHONPATH and the user site; -S would also drop site-packages, which we need.
    check = (
        "import importlib.util, sys; assert importlib.util.find_spec('transformers_qwen3') is None or sys.exit(3)\n"
    )
    # An editable install puts our src on sys.path through a .pth hook; drop any entry that exposes the package.
    prelude = (
        "import sys\n"
        "sys.path[:] = [p for p in sys.path if 'transformers_qwen3' not in p and not p.endswith('/src')]\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in str(getattr(f, '__module__', '')).lower()]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", prelude + check + code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"clean subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc.stdout
