"""Running code in a clean interpreter, and the repository root: shared by the tests that check what a Hub user
without our package sees. A module of its own, not the conftest: a test-suite subfolder's conftest.py (tests/serving,
tests/riscv) is also imported under the name ``conftest``, so ``from conftest import ...`` could find the wrong one."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


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


def wait_ready(url: str, proc, log: Path, timeout_s: float = 300) -> None:
    """Until llama-server's ``/health`` says ok (it listens at once and answers 503 while it loads the model);
    fails with the end of its log if the process exits first or the time runs out."""
    import json
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"llama-server exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if json.loads(r.read()).get("status") == "ok":
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"llama-server not ready in {timeout_s:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")
