"""Fixtures of the client suite: one server per engine for the whole session, the demo model's files, conversations
written once and sent to every engine, and the oracle's answers for them.

Engines (``server`` is parametrized over them; each is started once, on free loopback ports, and its processes are
killed at the end even when tests fail, and with the pytest process if that dies: PR_SET_PDEATHSIG):

- ``llama-cpp-python``: ``transformers-qwen3 serve`` (llama-cpp-python's server with our chat handler);
- ``llama-server-rpc``: llama.cpp's llama-server with the layers on two rpc-servers (``make -s llama-rpc`` builds
  them once; cached); opt-in for now: ``SERVE_ENGINES=llama-cpp-python,llama-server-rpc``;
- ``vllm``: ``transformers-qwen3 serve FOLDER --engine vllm`` on the demo model's Hub folder (vLLM's server with our
  plugin; ``make test-vllm`` runs the suite so); its Ctrl-C stop is checked at the session's end
  (tests/serving/engines.py, which also lists where engines legitimately differ);
- ``external``: any OpenAI-compatible server already running, e.g. vLLM with our plugin::

      SERVE_BASE_URL=http://127.0.0.1:8000/v1 SERVE_MODEL=qwen3-multimodal-demo SERVE_API_KEY=KEY \\
      SERVE_ORACLE=transformers pytest tests/serving

  (the server must serve the demo model's Hub folder under that name, with that API key).

The oracle is the in-process runtime's greedy answer on the same model: llama.cpp through
``runtime.llama_cpp.LlamaCppModel`` on the same GGUF (the demo's own path: our template through the tokenizer,
media decoded by mtmd), or transformers' ``generate`` (``SERVE_ORACLE=transformers``, for engines that run the
Hub folder).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.processes import wait_ready
from serving_helpers import API_KEY, MAX_TOKENS, N_CTX, LlamaCppOracle, Turn, hf_messages

REPO = Path(__file__).resolve().parents[2]


def _die_with_parent():
    """preexec_fn: SIGKILL this child when the process that started it dies (Linux), so no server outlives a
    crashed or killed test run; and its own session, so the whole group can be killed at teardown."""
    os.setsid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, env=env or os.environ.copy()
        )


# ---------------------------------------------------------------------------------------------------------------------
# The demo model
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory):
    """(Hub folder, text GGUF, mmproj, GGUF folder named like the model): the demo model, F16."""
    from transformers_qwen3.demo.model import cache_root, demo_checkpoint
    from transformers_qwen3.demo.run import gguf_files

    folder = demo_checkpoint()
    gguf_dir = cache_root() / "demo" / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    text, mmproj = gguf_files(folder, "f16", gguf_dir)
    served = tmp_path_factory.mktemp("served") / "qwen3-multimodal-demo"
    served.mkdir()
    (served / text.name).symlink_to(text)
    (served / mmproj.name).symlink_to(mmproj)
    return folder, text, mmproj, served


@pytest.fixture(scope="session")
def questions(tmp_path_factory):
    """Two held-out demo questions of each kind: (kind, media path, question text)."""
    from transformers_qwen3.demo.run import question_parts, write_questions

    data = tmp_path_factory.mktemp("questions")
    _, records = write_questions(data, n_per_kind=2)
    return [(kind, data / media, text) for kind, media, text in map(question_parts, records)]


# ---------------------------------------------------------------------------------------------------------------------
# Conversations: written once, as OpenAI messages for the servers and as the oracle's input
# ---------------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------------------------------------


class TransformersOracle:
    """Greedy answers of transformers (fp32) on the Hub folder, for engines that run it (vLLM)."""

    def __init__(self, folder: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoProcessor

        self.torch = torch
        self.processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        self.model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()

    def answer(self, turns: list[Turn], max_tokens: int = MAX_TOKENS) -> tuple[str, int]:
        from transformers_qwen3.remote.media_qwen3_multimodal import ROOTS_ENV

        os.environ[ROOTS_ENV] = "/"  # the oracle reads the test's own files
        inputs = self.processor.apply_chat_template(
            hf_messages(turns),
            add_generation_prompt=True,
            enable_thinking=False,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
        with self.torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :].tolist()
        eos = self.model.generation_config.eos_token_id
        eos = {eos} if isinstance(eos, int) else set(eos or [])
        new = [t for t in new if t not in eos]
        return self.processor.decode(new, skip_special_tokens=True), len(new)


@pytest.fixture(scope="session")
def oracle(demo_files):
    from engines import oracle_kind

    folder, text, mmproj, _ = demo_files
    kind = oracle_kind(engines())
    if kind == "transformers":
        yield TransformersOracle(folder)
        return
    o = LlamaCppOracle(text, mmproj)
    yield o
    o.model.close()


# ---------------------------------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Server:
    engine: str
    base_url: str
    model: str
    api_key: str

    def client(self, **kw):
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=300, **kw)


def engines() -> list[str]:
    if os.environ.get("SERVE_BASE_URL"):
        return ["external"]
    # llama-server-rpc is opt-in until its first run (docs/serving.md): SERVE_ENGINES=llama-cpp-python,llama-server-rpc
    return os.environ.get("SERVE_ENGINES", "llama-cpp-python").split(",")


def _stop_all(procs):
    from transformers_qwen3.serve.rpc import stop

    for p in reversed(procs):
        stop(p)


def _rpc_bin() -> Path:
    proc = subprocess.run(["make", "-s", "llama-rpc"], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`make llama-rpc` failed:\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1]) / "bin"


@pytest.fixture(scope="session", params=engines())
def server(request, demo_files, tmp_path_factory):
    from transformers_qwen3.serve.rpc import RPC_SERVER, free_port, llama_server_command, wait_for_port

    engine = request.param
    if engine == "external":
        yield Server(engine, os.environ["SERVE_BASE_URL"], os.environ["SERVE_MODEL"], os.environ.get("SERVE_API_KEY"))
        return
    _, text, mmproj, served = demo_files
    logs = tmp_path_factory.mktemp(f"logs-{engine}")
    procs = []
    try:
        port = free_port()
        if engine == "llama-cpp-python":
            cmd = [sys.executable, "-m", "transformers_qwen3.cli", "serve", str(served), "--port", str(port)]
            cmd += ["--api-key", API_KEY, "--ctx-size", str(N_CTX), "--threads", "2"]
            procs.append(start(cmd, logs / "serve.log"))
            wait_for_port("127.0.0.1", port, procs[-1], logs / "serve.log", timeout_s=300)
        elif engine == "llama-server-rpc":
            from transformers_qwen3.serve.chat_handler import chat_template_file
            from transformers_qwen3.serve.rpc import BIN_ENV

            bin_dir = _rpc_bin()
            env = os.environ | {BIN_ENV: str(bin_dir)}
            os.environ[BIN_ENV] = str(bin_dir)
            endpoints = []
            for i in range(2):
                rpc_port = free_port()
                cmd = [str(bin_dir / RPC_SERVER), "--host", "127.0.0.1", "--port", str(rpc_port), "--threads", "1"]
                procs.append(start(cmd, logs / f"rpc-{i}.log", env))
                wait_for_port("127.0.0.1", rpc_port, procs[-1], logs / f"rpc-{i}.log")
                endpoints.append(f"127.0.0.1:{rpc_port}")
            cmd = llama_server_command(
                text,
                mmproj,
                served.name,
                port=port,
                rpc=endpoints,
                api_key=API_KEY,
                n_ctx=N_CTX,
                threads=2,
                template=chat_template_file(),
            )
            procs.append(start(cmd, logs / "llama-server.log", env))
            wait_for_port("127.0.0.1", port, procs[-1], logs / "llama-server.log", timeout_s=300)
            wait_ready(f"http://127.0.0.1:{port}/health", procs[-1], logs / "llama-server.log")
        elif engine == "vllm":
            from engines import start_vllm, stop_vllm, wait_vllm

            folder = demo_files[0]
            procs.append(start_vllm(folder, port, API_KEY, N_CTX, logs / "serve.log", _die_with_parent))
            started = wait_vllm(procs[-1], port, folder.resolve().name, logs / "serve.log")
            print(f"serve --engine vllm ready in {started:.0f} s")
            yield Server(engine, f"http://127.0.0.1:{port}/v1", folder.resolve().name, API_KEY)
            stop_vllm(procs.pop(), port, logs / "serve.log")
            return
        else:
            raise ValueError(f"unknown engine {engine!r} (SERVE_ENGINES)")
        yield Server(engine, f"http://127.0.0.1:{port}/v1", served.name, API_KEY)
    finally:
        _stop_all(procs)
        for log in logs.glob("*.log"):  # shown with a failing test's output
            print(f"--- {log.name} (end)\n{log.read_text(errors='replace')[-2000:]}")
