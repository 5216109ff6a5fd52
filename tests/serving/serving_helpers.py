"""What the client suite's conftest and tests share: the conversations' neutral form and the suite's settings."""

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
