"""What ``calibrate`` runs through the model: the prompts of ``--data`` or the built-in set, as model inputs.

``--data`` is JSONL, one object per line: ``{"text": ...}``, or ``{"messages": [...]}`` in the processor's chat
format. A message's content may hold images and clips, ``{"type": "image", "image": "pics/cat.png"}`` /
``{"type": "audio", "audio": "clips/bird.wav"}``, with paths relative to the data file's folder: such a prompt goes
through the model's processor (chat template, towers' inputs; not cut to ``--max-tokens``, which would cut media
apart), and the media loader reads files below that folder only, never the network (``MediaPolicy``), with its
per-item and per-prompt caps. Text prompts, and messages without media (their contents joined, as before), are
tokenized and cut to ``--max-tokens``.

The built-in set (no ``--data``): varied English and French text, code and numbers, and, for a model with a vision
or audio tower, a few generated pictures (coloured rectangles on noise) and clips (tones, a chirp, noise) with a
question each, seeded, so that the towers' outputs and the decoder's media positions are calibrated too. They are
not the model's own data: calibrate on that when you have it (docs/compression.md measures the difference).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import UserError

# Text for any model: varied registers, code, numbers and two languages.
BUILTIN_TEXT = (
    "The quick brown fox jumps over the lazy dog. Meanwhile, the committee postponed its decision until spring.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "Photosynthesis converts light energy into chemical energy stored in glucose, releasing oxygen as a by-product.",
    "Q: What is 17 times 23? A: 17 times 23 is 391, because 17 * 20 = 340 and 17 * 3 = 51.",
    "Le chat dort sur le canapé pendant que la pluie tombe doucement sur les toits de la ville.",
    "Dear customer, your order #48213 has shipped and should arrive within three to five business days.",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong and Buzz Aldrin walked on its surface for hours.",
    "SELECT name, COUNT(*) FROM orders WHERE created_at > '2024-01-01' GROUP BY name ORDER BY 2 DESC;",
)
MEDIA_KINDS = ("image", "audio")
SAMPLE_RATE = 16000


class CalibrationDataError(UserError, ValueError):
    """A ``--data`` file that cannot be read, or media a model cannot take."""


def read_records(path: str | Path) -> list[dict]:
    """``--data``'s objects, each with "text" (a string) or "messages" (a list)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise CalibrationDataError(f"--data {path}: cannot read it ({e})") from e
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            ok = isinstance(record.get("text"), str) or isinstance(record.get("messages"), list)
        except (json.JSONDecodeError, AttributeError) as e:
            ok, record = False, str(e)
        if not ok:
            raise CalibrationDataError(
                f'--data {path}, line {number}: expected an object with "text" or "messages" ({record!r:.80})'
            )
        records.append(record)
    if not records:
        raise CalibrationDataError(f"--data {path}: no prompts in it")
    return records


def record_text(record: dict) -> str:
    """A text-only record's text: "text", or the messages' contents joined."""
    if "text" in record:
        return record["text"]
    return "\n".join(str(m.get("content")) for m in record["messages"] if isinstance(m, dict))


def has_media(record: dict) -> bool:
    return any(
        isinstance(part, dict) and part.get("type") in MEDIA_KINDS
        for m in record.get("messages", [])
        if isinstance(m, dict) and isinstance(m.get("content"), list)
        for part in m["content"]
    )


def builtin_records(vision: bool, audio: bool) -> list[dict]:
    """The built-in set: the text, then generated pictures / clips for the towers the model has."""
    from PIL import Image

    rng = np.random.default_rng(0)
    records = [{"text": t} for t in BUILTIN_TEXT]
    if vision:
        for size, colour in (((96, 64), (200, 40, 40)), ((64, 128), (30, 90, 220))):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            pixels[size[1] // 4 : 3 * size[1] // 4, size[0] // 4 : 3 * size[0] // 4] = colour
            records.append(_ask(("image", Image.fromarray(pixels)), "Describe the picture."))
    if audio:
        t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
        tone = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.02 * rng.standard_normal(t.size)
        chirp = 0.3 * np.sin(2 * np.pi * (200 + 1800 * t) * t)
        for clip in (tone, chirp):
            records.append(_ask(("audio", clip.astype(np.float32)), "What do you hear?"))
    return records


def _ask(media: tuple, question: str) -> dict:
    kind, value = media
    return {
        "messages": [{"role": "user", "content": [{"type": kind, kind: value}, {"type": "text", "text": question}]}]
    }


def model_inputs(folder: str | Path, records: list[dict], max_tokens: int, data_dir: Path | None) -> list[dict]:
    """One batch of model inputs per record (see the module docstring)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    processor = None
    batches = []
    for record in records:
        if not has_media(record):
            b = tokenizer(record_text(record), return_tensors="pt", truncation=True, max_length=max_tokens)
            batches.append({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]})
            continue
        if processor is None:
            processor = _processor(folder)
        batches.append(_media_inputs(processor, record, data_dir))
    return batches


def _processor(folder):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise CalibrationDataError(
            f"{folder}: the calibration data has images or clips, but this model has no processor for them ({e})"
        ) from e


def _media_inputs(processor, record: dict, data_dir: Path | None) -> dict:
    from ..remote.media_qwen3_multimodal import MediaError, MediaPolicy

    # files named in the data: below its folder only, no network (the data file may come from anywhere)
    policy = MediaPolicy(allow_network=False, allowed_roots=(str(data_dir),) if data_dir else ())
    messages = [_resolved(m, data_dir) for m in record["messages"]]
    try:
        out = processor.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_tensors="pt", media_policy=policy
        )
    except MediaError as e:
        raise CalibrationDataError(f"--data: {e}") from e
    return dict(out)


def _resolved(message: dict, data_dir: Path | None) -> dict:
    """``message`` with each media part's relative path made relative to the data file's folder."""
    if not isinstance(message.get("content"), list) or data_dir is None:
        return message
    parts = []
    for part in message["content"]:
        kind = part.get("type") if isinstance(part, dict) else None
        value = part.get(kind) if kind in MEDIA_KINDS else None
        if isinstance(value, str) and "://" not in value and not value.startswith("data:"):
            part = {**part, kind: str(data_dir / value)}
        parts.append(part)
    return {**message, "content": parts}
