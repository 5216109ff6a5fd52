"""llama.cpp RPC scale-out: ``rpc-server`` processes holding parts of the model, and llama.cpp's own
``llama-server`` spreading the layers over them (``--rpc host:port,host:port``).

Both programs are built from the patched llama.cpp tree (``make llama-rpc``, ggml_patches/rpc.mk, through
``ggml_patches/build_tree.sh`` with ``-DGGML_RPC=ON``: its own cache key). llama-cpp-python 0.3.36 exposes only
``llama_supports_rpc``, so the split model is served by ``llama-server``, with our chat template and the mmproj:
the same OpenAI API as the llama-cpp-python engine.

Security: the RPC protocol has no authentication and no encryption, and an rpc-server executes whatever graph it
is sent. Bind rpc-servers to 127.0.0.1 or to a private network that only the llama-server host can reach.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from ..errors import MissingDependencyError, UserError

BIN_ENV = "TRANSFORMERS_QWEN3_LLAMA_BIN"  # a folder holding ggml-rpc-server and llama-server
RPC_SERVER = "ggml-rpc-server"  # llama.cpp's tools/rpc target (called rpc-server in its README)
BUILD = "make llama-rpc (ggml_patches/rpc.mk)"


class EngineError(UserError, RuntimeError):
    """A server process that did not come up; the message has the end of its log."""


def binary(name: str, env: dict | None = None) -> Path:
    """``name`` (ggml-rpc-server, llama-server) from ``$TRANSFORMERS_QWEN3_LLAMA_BIN`` (of ``env``, default the
    process's environment), else from PATH."""
    folder = (os.environ if env is None else env).get(BIN_ENV)
    path = Path(folder) / name if folder else (Path(found) if (found := shutil.which(name)) else None)
    if path is None or not path.is_file():
        where = f"${BIN_ENV}={folder}" if folder else "PATH"
        raise MissingDependencyError(f"llama.cpp's {name} (not found in {where})", BUILD, "RPC scale-out")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EngineError(f"{Path(proc.args[0]).name} exited ({proc.returncode}); its log ends:\n{_tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise EngineError(f"{Path(proc.args[0]).name} did not listen on {host}:{port} in {timeout_s:.0f} s:\n{_tail(log)}")


def _tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log.is_file() else "(no log)"


def amx_unusable() -> bool:
    """True on an x86-64 CPU that lists AMX but whose kernel does not enable AMX tile data (XTILEDATA, bit 18 of
    ``arch_prctl(ARCH_GET_XCOMP_SUPP)``): there ggml's AMX matmul crashes on Q4_0/Q8_0/K-quant weights (measured on
    this project's CI machine). The wheel is built without the AMX kernels on such a host (ggml_patches/build_wheel.sh);
    the RPC programs are built with them, so they are started with ``GGML_CPU_NO_AMX=1`` (ggml_patches/0005)."""
    import ctypes
    import platform

    if platform.machine() != "x86_64":
        return False
    try:
        if not re.search(r"\bamx_tile\b", Path("/proc/cpuinfo").read_text()):
            return False
        bits = ctypes.c_ulong(0)
        # syscall 158 = arch_prctl on x86_64; 0x1022 = ARCH_GET_XCOMP_SUPP
        ok = ctypes.CDLL(None, use_errno=True).syscall(158, 0x1022, ctypes.byref(bits)) == 0
    except OSError:
        return False
    return ok and not bits.value & (1 << 18)


def _die_with_parent() -> None:
    """preexec_fn: a session of its own (so :func:`stop` can end the whole group), and SIGKILL when the process that
    started it dies (Linux ``PR_SET_PDEATHSIG``), so that no server outlives a killed test run or benchmark."""
    import ctypes
    import signal

    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:  # not glibc: the session alone
        pass


def spawn(cmd: list[str], log: Path, env: dict | None = None, die_with_parent: bool = True) -> subprocess.Popen:
    """Start ``cmd`` with its output in ``log``, in its own session; ``GGML_CPU_NO_AMX=1`` where AMX is listed but
    unusable (:func:`amx_unusable`) unless the environment sets it."""
    env = dict(os.environ if env is None else env)
    if "GGML_CPU_NO_AMX" not in env and amx_unusable():
        env["GGML_CPU_NO_AMX"] = "1"
    with open(log, "wb") as out:
        if die_with_parent:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def start_rpc_server(
    log: Path, host: str = "127.0.0.1", port: int | None = None, threads: int = 1, env: dict | None = None
):
    """One ``rpc-server`` (CPU backend) on ``host:port``; returns (process, "host:port")."""
    port = port or free_port(host)
    cmd = [str(binary(RPC_SERVER, env)), "--host", host, "--port", str(port), "--threads", str(threads)]
    proc = spawn(cmd, log, env)
    try:
        wait_for_port(host, port, proc, log)
    except BaseException:
        stop(proc)
        raise
    return proc, f"{host}:{port}"


def llama_server_command(
    gguf: Path,
    mmproj: Path | None,
    name: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    rpc: list[str] = (),
    api_key: str | None = None,
    n_ctx: int = 4096,
    threads: int | None = None,
    template: Path | None = None,
) -> list[str]:
    """llama.cpp's ``llama-server`` for our GGUF pair: our chat template (``--jinja``), the mmproj, greedy-capable
    sampling from the request, every layer offloaded to the RPC devices when ``rpc`` names some."""
    cmd = [str(binary("llama-server")), "-m", str(gguf), "--alias", name, "--host", host, "--port", str(port)]
    cmd += ["-c", str(n_ctx), "-b", str(n_ctx), "-ub", str(n_ctx), "--parallel", "1", "--no-webui"]
    if mmproj is not None:
        cmd += ["--mmproj", str(mmproj), "--no-mmproj-offload"]
    if template is not None:
        cmd += ["--jinja", "--chat-template-file", str(template)]
    if rpc:
        cmd += ["--rpc", ",".join(rpc), "-ngl", "999"]
    if threads:
        cmd += ["-t", str(threads)]
    if api_key:
        cmd += ["--api-key", api_key]
    return cmd


def stop(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL: the process group we started (``start_new_session``), and nothing else."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
    except ProcessLookupError:
        pass
