"""Where the client suite's engines legitimately differ, and the vLLM engine's start and stop.

Every entry says which engine, what it does instead, and where that behaviour is documented; nothing here relaxes a
check without that. The ``vllm`` engine is ``transformers-qwen3 serve MODEL --engine vllm`` on the demo model's Hub
folder (``make test-vllm`` runs the suite so: ``SERVE_ENGINES=vllm``); ``external`` is a server someone started, so
its engine is named by ``SERVE_ENGINE`` (``vllm`` for vLLM's server) for the same expectations.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def kind(engine: str) -> str:
    """The engine family whose documented behaviour applies (an external server says which with SERVE_ENGINE)."""
    return os.environ.get("SERVE_ENGINE", "") if engine == "external" else engine


def oracle_kind(engines: list[str]) -> str:
    """Engines that run the Hub folder (vLLM, an external server) are checked against transformers' greedy answers;
    llama.cpp engines against the in-process llama.cpp runtime on the same GGUF."""
    if os.environ.get("SERVE_ORACLE"):
        return os.environ["SERVE_ORACLE"]
    return "transformers" if any(e in ("vllm", "external") for e in engines) else "llama.cpp"


def sampling_temperature(engine: str) -> float:
    """A temperature far above 1 for the 'temperature reaches the sampler' check.

    vLLM refuses temperature > 2 with a 400 (vllm/sampling_params.py, ``_verify_args``: the OpenAI API's documented
    range is [0, 2]); 2.0 is its largest, and the check (answers differ across seeds) is the same."""
    return 2.0 if kind(engine) == "vllm" else 5.0


# (engine kind, bad-request case) -> the word the error message must contain instead of the suite's default
ERROR_WORD = {
    # vLLM's --api-key middleware answers every wrong key with 401 {"error": "Unauthorized"}
    # (vllm/entrypoints/serve/middleware/authenticate.py); the status (checked as for every engine) is the signal
    ("vllm", "wrong API key"): "unauthorized",
}


def error_word(engine: str, case: str, default: str | None) -> str | None:
    return ERROR_WORD.get((kind(engine), case), default)


def error_message(text: str) -> str:
    """The message of an error body: OpenAI's {"error": {"message": ...}}, vLLM's auth {"error": "..."}, FastAPI's
    {"detail": ...}, or the text itself."""
    try:
        body = json.loads(text)
    except ValueError:
        return text
    if not isinstance(body, dict):
        return text
    error = body.get("error", body.get("detail", text))
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error)


# ---------------------------------------------------------------------------------------------------------------------
# The vLLM engine: `serve --engine vllm`, started once per session, stopped with Ctrl-C (checked)
# ---------------------------------------------------------------------------------------------------------------------


def start_vllm(folder: Path, port: int, api_key: str, n_ctx: int, log: Path, preexec_fn) -> subprocess.Popen:
    """``transformers-qwen3 serve FOLDER --engine vllm`` as a user types it, SIGINT left as in a terminal."""
    cmd = [sys.executable, "-m", "transformers_qwen3.cli", "serve", str(folder), "--engine", "vllm"]
    cmd += ["--port", str(port), "--api-key", api_key, "--ctx-size", str(n_ctx)]
    # the models here are tiny: vLLM's CPU KV cache defaults to several GiB
    env = os.environ | {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}

    def preexec():
        preexec_fn()
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # pytest-xdist workers ignore SIGINT; a terminal does not

    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec, env=env)


def wait_vllm(proc: subprocess.Popen, port: int, name: str, log: Path, timeout_s: float = 2400) -> float:
    """Seconds until vLLM answers; checks what serve printed (URL, model name) and that it binds loopback only."""
    from transformers_qwen3.serve.vllm_engine import wait_ready

    url = f"http://127.0.0.1:{port}/v1"
    seconds = wait_ready(url, proc, log, timeout_s)
    printed = log.read_text(errors="replace")
    assert f"OpenAI API: {url}  (model name: {name};" in printed, printed[-3000:]
    others = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    for addr in {a for a in others if not a.startswith("127.")}:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((addr, port)) != 0, f"serve --engine vllm listens on {addr}:{port}"
    return seconds


def stop_vllm(proc: subprocess.Popen, port: int, log: Path, timeout_s: float = 120) -> None:
    """Ctrl-C (SIGINT to serve): serve passes it to vLLM once and exits 0 when vLLM has shut down; the port closes.
    Raises (an error of the session's last test) if not; the process group is killed in any case."""
    try:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) != 0:
                    break
            time.sleep(0.5)
        with socket.socket() as s:
            still_open = s.connect_ex(("127.0.0.1", port)) == 0
        tail = log.read_text(errors="replace")[-3000:]
        assert rc == 0, f"serve --engine vllm did not stop cleanly on Ctrl-C (status {rc}):\n{tail}"
        assert not still_open, f"port {port} still open after Ctrl-C:\n{tail}"
        assert "stopped serving" in tail, tail
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
