"""What the client suite's conftest and tests share: the conversations' neutral form, the suite's settings and the
in-process llama.cpp oracle."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

API_KEY = "serving-suite-key"
N_CTX = 4096
MAX_TOKENS = 8


@dataclass
class Turn:
    role: str
    parts: list  # ("text", str) | ("image", Path) | ("audio", Path)


def openai_messages(turns: list[Turn]) -> list[dict]:
    out = []
    for turn in turns:
        if turn.role == "assistant":
            out.append({"role": "assistant", "content": turn.parts[0][1]})
            continue
        content = []
        for kind, value in turn.parts:
            if kind == "text":
                content.append({"type": "text", "text": value})
            elif kind == "image":
                url = "data:image/png;base64," + base64.b64encode(Path(value).read_bytes()).decode()
                content.append({"type": "image_url", "image_url": {"url": url}})
            else:
                data = base64.b64encode(Path(value).read_bytes()).decode()
                content.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
        out.append({"role": turn.role, "content": content})
    return out


def hf_messages(turns: list[Turn]) -> list[dict]:
    out = []
    for turn in turns:
        if turn.role == "assistant":
            out.append({"role": "assistant", "content": [{"type": "text", "text": turn.parts[0][1]}]})
            continue
        content = [{"type": k, k: str(v)} if k != "text" else {"type": "text", "text": v} for k, v in turn.parts]
        out.append({"role": turn.role, "content": content})
    return out


class LlamaCppOracle:
    """Greedy answers of the in-process llama.cpp runtime (LlamaCppModel), as the demo computes them."""

    def __init__(self, text: Path, mmproj: Path):
        from transformers_qwen3.checkpoint.tokenizer import build_qwen3_tokenizer
        from transformers_qwen3.runtime.llama_cpp import LlamaCppModel

        self.tokenizer = build_qwen3_tokenizer()
        self.model = LlamaCppModel(text, mmproj, n_ctx=N_CTX)

    def answer(self, turns: list[Turn], max_tokens: int = MAX_TOKENS) -> tuple[str, int]:
        messages = hf_messages(turns)
        prompt = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, enable_thinking=False, tokenize=False
        )
        media = [(k, v) for t in turns if t.role != "assistant" for k, v in t.parts if k != "text"]
        prompt = self.model.media_prompt(prompt, [k for k, _ in media])
        if media:
            bitmaps = [self.model.file_bitmap(Path(v)) for _, v in media]
            tokens, _, _ = self.model.answer(prompt, bitmaps, max_tokens)
        else:  # text only: the same driver, the prompt through mtmd with no media
            tokens, _, _ = self.model.answer(prompt, [], max_tokens)
        return self.model.detokenize(tokens), len(tokens)
