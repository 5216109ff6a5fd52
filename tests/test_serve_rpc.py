"""llama.cpp RPC scale-out (issue #12, item 4), checked against llama.cpp itself.

The same ``llama-server`` binary serves the same model twice: in one process, and with every layer on two
``ggml-rpc-server`` processes over loopback (``--rpc host:port,host:port -ngl 999``). Greedy answers to text, image,
audio and image+audio requests must be equal token for token (and their log-probabilities within 1e-3), on the demo
model (F16) and on the random tiny-mm model; llama-server's log must show the layers' weights on both RPC devices
(else the comparison would prove nothing). A third check ties llama-server to the project's runtime: on the demo
model, the single-process llama-server gives the in-process runtime's greedy answers (``LlamaCppModel``, the patched
llama-cpp-python wheel of the same tree).

The programs are built from the patched tree by ``make llama-rpc`` (ggml_patches/rpc.mk, cached). ``make test-rpc``
builds them and runs this file with ``TRANSFORMERS_QWEN3_LLAMA_BIN`` set and ``TRANSFORMERS_QWEN3_RPC_REQUIRED=1``
(then a missing program is a failure, not a skip). Under ``make test`` the tests skip unless the variable names a
folder holding both programs.
"""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers.processes import wait_ready

from transformers_qwen3.serve.rpc import BIN_ENV, RPC_SERVER

REQUIRED_ENV = "TRANSFORMERS_QWEN3_RPC_REQUIRED"
MAX_TOKENS = 12
N_CTX = 4096
API_KEY = "rpc-test-key"


@pytest.fixture(scope="module")
def bin_dir() -> Path:
    folder = os.environ.get(BIN_ENV)
    missing = [n for n in (RPC_SERVER, "llama-server") if not (folder and (Path(folder) / n).is_file())]
    if missing:
        why = f"llama.cpp's {', '.join(missing)} not in ${BIN_ENV}={folder or '(unset)'}: run `make test-rpc`"
        if os.environ.get(REQUIRED_ENV) == "1":
            pytest.fail(why)
        pytest.skip(why)
    return Path(folder)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """(image path, image question, audio path, audio question): held-out demo questions."""
    from transformers_qwen3.demo.run import question_parts, write_questions

    data = tmp_path_factory.mktemp("questions")
    _, records = write_questions(data, n_per_kind=1)
    parts = {kind: (data / path, text) for kind, path, text in map(question_parts, records)}
    return parts["image"] + parts["audio"]


@pytest.fixture(scope="module")
def demo_gguf():
    from transformers_qwen3.demo.model import cache_root, demo_checkpoint
    from transformers_qwen3.demo.run import gguf_files

    gguf_dir = cache_root() / "demo" / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    return gguf_files(demo_checkpoint(), "f16", gguf_dir)


@pytest.fixture(scope="module")
def tiny_mm_gguf(tmp_path_factory):
    """The random tiny-mm model (vision + audio towers), F16."""
    from transformers_qwen3.checkpoint.build import init_checkpoint
    from transformers_qwen3.checkpoint.tokenizer import build_qwen3_tokenizer
    from transformers_qwen3.demo.run import gguf_files

    root = tmp_path_factory.mktemp("tiny-mm")
    folder = init_checkpoint(root / "tiny-mm", "tiny-mm", seed=0, tokenizer=build_qwen3_tokenizer(), force=True)
    return gguf_files(folder, "f16", root / "gguf")


def requests(media) -> dict[str, list[dict]]:
    image, image_q, audio, audio_q = media
    image_part = {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()},
    }
    audio_part = {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(audio.read_bytes()).decode(), "format": "wav"},
    }
    return {
        "text": [{"type": "text", "text": "Name three colours."}],
        "image": [image_part, {"type": "text", "text": image_q}],
        "audio": [audio_part, {"type": "text", "text": audio_q}],
        "image+audio": [image_part, audio_part, {"type": "text", "text": "Describe the picture and the sound."}],
    }


class LlamaServers:
    """llama-server on ``gguf`` + ``mmproj`` in one process ("single") and/or with its layers on two rpc-servers
    ("split"), all on loopback; their processes die with this one."""

    def __init__(self, bin_dir: Path, gguf: Path, mmproj: Path, logs: Path, kinds=("single", "split")):
        from transformers_qwen3.serve.chat_handler import chat_template_file
        from transformers_qwen3.serve.rpc import free_port, llama_server_command, spawn, start_rpc_server

        self.logs, self.procs, self.endpoints, self.urls = logs, [], [], {}
        env = os.environ | {BIN_ENV: str(bin_dir)}
        try:
            if "split" in kinds:
                for i in range(2):
                    proc, endpoint = start_rpc_server(logs / f"rpc-{i}.log", env=env)
                    self.procs.append(proc)
                    self.endpoints.append(endpoint)
            for kind in kinds:
                port = free_port()
                cmd = llama_server_command(
                    gguf, mmproj, "model", port=port, rpc=self.endpoints if kind == "split" else [],
                    api_key=API_KEY, n_ctx=N_CTX, threads=1, template=chat_template_file(),
                )  # fmt: skip
                # where the weights went (load_tensors' buffer lines, "offloaded N/N layers"): printed only from
                # verbosity 4 on (the default, 3, left them out of the log: measured)
                cmd += ["-lv", "4"]
                log = logs / f"llama-server-{kind}.log"
                self.procs.append(spawn(cmd, log, env))
                wait_ready(f"http://127.0.0.1:{port}/health", self.procs[-1], log)
                self.urls[kind] = f"http://127.0.0.1:{port}"
        except BaseException:
            self.close()
            raise

    def ask(self, kind: str, content: list[dict]) -> dict:
        body = {
            "model": "model",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "logprobs": True,
            "chat_template_kwargs": {"enable_thinking": False},
        }
        req = urllib.request.Request(
            self.urls[kind] + "/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                reply = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise AssertionError(f"llama-server ({kind}) answered {e.code}: {e.read()[:2000]!r}") from None
        choice = reply["choices"][0]
        return {
            "text": choice["message"]["content"],
            "finish": choice["finish_reason"],
            "n": reply["usage"]["completion_tokens"],
            "n_prompt": reply["usage"]["prompt_tokens"],
            "tokens": [t["token"] for t in choice["logprobs"]["content"]],
            "logprobs": [t["logprob"] for t in choice["logprobs"]["content"]],
        }

    def close(self):
        from transformers_qwen3.serve.rpc import stop

        for p in reversed(self.procs):
            stop(p)


@pytest.fixture(scope="module", params=["demo", "tiny-mm"])
def servers(request, bin_dir, tmp_path_factory):
    gguf, mmproj = request.getfixturevalue("demo_gguf" if request.param == "demo" else "tiny_mm_gguf")
    logs = tmp_path_factory.mktemp(f"logs-{request.param}")
    s = LlamaServers(bin_dir, gguf, mmproj, logs)
    s.model = request.param
    yield s
    s.close()
    for log in sorted(logs.glob("*.log")):  # shown with a failing test's output
        print(f"--- {log.name} (end)\n{log.read_text(errors='replace')[-1500:]}")


def rpc_buffers(log_text: str) -> dict[str, float]:
    """``{endpoint: MiB}`` of the model weights llama.cpp placed on each RPC device (its load_tensors lines, e.g.
    ``load_tensors:  RPC0[127.0.0.1:50052] model buffer size =    43.21 MiB``)."""
    found = {}
    for m in re.finditer(r"RPC\d*\[([0-9.:]+)\]\s+model buffer size\s*=\s*([0-9.]+) MiB", log_text):
        found[m.group(1)] = found.get(m.group(1), 0.0) + float(m.group(2))
    return found


def test_layers_are_on_both_rpc_devices(servers, media):
    servers.ask("split", requests(media)["text"])  # the model is in use, not only loaded
    log = (servers.logs / "llama-server-split.log").read_text(errors="replace")
    buffers = rpc_buffers(log)
    assert set(buffers) == set(servers.endpoints) and all(v > 0 for v in buffers.values()), (
        f"the weights are not on both RPC devices {servers.endpoints}: {buffers}\n{log[-3000:]}"
    )
    m = re.search(r"offloaded (\d+)/(\d+) layers", log)
    assert m and m.group(1) == m.group(2), f"not every layer was offloaded: {m and m.group(0)}"
    single = (servers.logs / "llama-server-single.log").read_text(errors="replace")
    assert not rpc_buffers(single), "the single-process server must not use RPC devices"


@pytest.mark.parametrize("kind", ["text", "image", "audio", "image+audio"])
def test_split_equals_single_process(servers, media, kind):
    content = requests(media)[kind]
    single, split = servers.ask("single", content), servers.ask("split", content)
    assert single["n_prompt"] == split["n_prompt"]
    assert split["tokens"] == single["tokens"], f"{servers.model} {kind}: split {split} != single {single}"
    assert split["text"] == single["text"] and split["n"] == single["n"] > 0
    diff = max(abs(a - b) for a, b in zip(split["logprobs"], single["logprobs"], strict=True))
    assert diff < 1e-3, f"{servers.model} {kind}: log-probabilities differ by {diff}"


@pytest.mark.parametrize("kind", ["text", "image", "audio"])
def test_llama_server_equals_the_in_process_runtime(bin_dir, demo_gguf, media, kind, tmp_path):
    """llama-server (one process; our template through llama.cpp's jinja, media through its mtmd) gives the
    in-process runtime's greedy answer on the demo model."""
    from transformers_qwen3.checkpoint.tokenizer import build_qwen3_tokenizer
    from transformers_qwen3.runtime.llama_cpp import LlamaCppModel

    gguf, mmproj = demo_gguf
    servers = LlamaServers(bin_dir, gguf, mmproj, tmp_path, kinds=("single",))
    try:
        got = servers.ask("single", requests(media)[kind])
    finally:
        servers.close()
    image, image_q, audio, audio_q = media
    question, path = {"text": ("Name three colours.", None), "image": (image_q, image), "audio": (audio_q, audio)}[
        kind
    ]
    content = ([{"type": kind}] if path else []) + [{"type": "text", "text": question}]
    prompt = build_qwen3_tokenizer().apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, enable_thinking=False, tokenize=False
    )
    with LlamaCppModel(gguf, mmproj, n_ctx=N_CTX, n_threads=1) as model:
        prompt = model.media_prompt(prompt, [kind] if path else [])
        tokens, n_prompt, _ = model.answer(prompt, [model.file_bitmap(path)] if path else [], MAX_TOKENS)
        want = model.detokenize(tokens)
    # llama-server counts the end-of-turn token it sampled (an empty last token, finish "stop"); the runtime's
    # answer() stops before it
    eog = got["finish"] == "stop" and got["tokens"][-1:] == [""]
    assert (got["text"], got["n"] - eog) == (want, len(tokens)), f"llama-server {got} != in-process {want!r}"
    assert got["n_prompt"] == n_prompt
