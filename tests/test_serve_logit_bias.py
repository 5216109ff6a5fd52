"""The llama.cpp engine's ``logit_bias`` (serve/chat_handler.py): applied by llama.cpp's own logit-bias sampler, it
gives the greedy tokens of llama-cpp-python's Python logits processor (the oracle: llama-cpp-python's own
``create_completion(logit_bias=...)`` on the same evaluated prompt), also beside a Python processor (the server's
``min_tokens``), where llama-cpp-python's own path drops both; and a bad ``logit_bias`` is a 400."""

from __future__ import annotations

import pytest

END = {"151645": -100.0, "151643": -100.0}  # <|im_end|>, <|endoftext|>: never stop early
N = 24


@pytest.fixture(scope="module")
def handler():
    from transformers_qwen3.demo.model import cache_root, demo_checkpoint
    from transformers_qwen3.demo.run import gguf_files
    from transformers_qwen3.runtime.llama_cpp import LlamaCppModel
    from transformers_qwen3.serve.chat_handler import Qwen3ChatHandler

    gguf_dir = cache_root() / "demo" / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    text, mmproj = gguf_files(demo_checkpoint(), "f16", gguf_dir)
    with LlamaCppModel(text, mmproj, n_threads=1, n_ctx=1024) as model:
        model.llm.chat_handler = Qwen3ChatHandler(model)
        yield model.llm.chat_handler


MESSAGES = [{"role": "user", "content": [{"type": "text", "text": "What shape is it?"}]}]


def chat(h, **kw) -> tuple[str, int]:
    r = h(llama=h.model.llm, messages=MESSAGES, max_tokens=N, temperature=0, **kw)
    return r["choices"][0]["message"]["content"], r["usage"]["completion_tokens"]


def oracle(h) -> tuple[str, int]:
    """llama-cpp-python's own logit_bias path (its Python processor), on the prompt our handler evaluated."""
    from transformers_qwen3.serve.messages import read_messages

    ids = h.evaluate(read_messages(MESSAGES))
    h.logit_bias = None
    r = h.model.llm.create_completion(prompt=ids, max_tokens=N, temperature=0, repeat_penalty=1.0, logit_bias=END)
    return r["choices"][0]["text"], r["usage"]["completion_tokens"]


def test_native_logit_bias_equals_llama_cpp_python(handler):
    free = chat(handler)
    want = oracle(handler)
    assert want[1] == N > free[1], "the bias must change the answer (the demo model stops early without it)"
    assert chat(handler, logit_bias=END) == want
    assert chat(handler) == free, "a request's bias must not reach the next request"


def test_logit_bias_beside_a_python_processor(handler):
    import llama_cpp

    seen = []
    processors = llama_cpp.LogitsProcessorList([lambda ids, scores: seen.append(1) or scores])
    assert chat(handler, logit_bias=END, logits_processor=processors) == oracle(handler)
    assert len(seen) == N


@pytest.mark.parametrize(
    "bias", [[1, 2], {"x": 1}, {"-1": 1}, {"151936": 1}, {"5": "high"}, {"5": True}], ids=lambda b: str(b)[:12]
)
def test_bad_logit_bias_is_a_400(bias):
    from transformers_qwen3.serve.llama_cpp_server import check_logit_bias
    from transformers_qwen3.serve.messages import BadRequest

    with pytest.raises(BadRequest) as e:
        check_logit_bias(bias, 151936)
    assert e.value.status == 400 and "logit_bias" in str(e.value)
    check_logit_bias({"5": -1.5, "151935": 2}, 151936)  # good ones pass
