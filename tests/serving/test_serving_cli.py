"""`transformers-qwen3 serve` as a user runs it: prints its URL, binds loopback only, answers, stops cleanly on Ctrl-C;
and a Hub-layout folder is converted once into the cache and reused."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from serving_helpers import API_KEY


def _interruptible():
    # as in a terminal: pytest-xdist workers ignore SIGINT and a child would inherit that
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.setsid()


def _wait_line(proc, needle: str, timeout_s: float = 300) -> str:
    deadline, seen = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"no {needle!r} from serve; it printed:\n{''.join(seen)}")


def test_serve_prints_its_url_binds_loopback_and_stops_on_ctrl_c(demo_files, tmp_path):
    from openai import OpenAI

    from transformers_qwen3.serve.rpc import free_port, stop

    _, _, _, served = demo_files
    port = free_port()
    cmd = [sys.executable, "-m", "transformers_qwen3.cli", "serve", str(served), "--port", str(port)]
    proc = subprocess.Popen(
        cmd + ["--api-key", API_KEY, "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_interruptible,
    )
    try:
        line = _wait_line(proc, "http://")
        assert f"http://127.0.0.1:{port}/v1" in line and served.name in line
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=5)
        assert [m.id for m in client.models.list().data] == [served.name]
        # loopback only: the port is not open on the machine's other addresses
        others = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
        for addr in others - {a for a in others if a.startswith("127.")}:
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((addr, port)) != 0, f"serve listens on {addr}:{port}"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, proc.stdout.read()
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "the port is still open after Ctrl-C"
    finally:
        stop(proc)


def test_a_hub_folder_is_converted_once_and_cached(demo_files, tmp_path):
    from transformers_qwen3.serve.model_files import converted, gguf_pair

    folder, text, mmproj, _ = demo_files
    first = converted(folder, "f16", cache=tmp_path, progress=False)
    pair = gguf_pair(first)
    # the same converter as the demo's cached GGUFs: the same bytes
    assert pair[0].read_bytes() == text.read_bytes() and pair[1].read_bytes() == mmproj.read_bytes()
    stamp = pair[0].stat().st_mtime_ns
    assert converted(folder, "f16", cache=tmp_path, progress=False) == first and pair[0].stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name], "a temporary folder was left behind"
