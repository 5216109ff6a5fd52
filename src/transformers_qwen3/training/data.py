"""Chat JSONL for fine-tuning: records read and checked, encoded into ids and assistant-only labels, and batched.

Data: one JSON object per line with ``"messages"`` in chat format (``role`` + ``content``, a string or a list of
parts). Media parts (``{"type": "image", "image": "images/a.png"}``, ``audio``, ``video``, ``image_url``,
``input_audio``) name files relative to the JSONL's folder. An optional ``"tools"`` list (JSON schemas) goes to the
chat template, which lists it in the system turn; other keys of a record (e.g. ``"meta"``) are ignored.

Labels: the assistant-token mask of transformers' ``apply_chat_template(..., return_assistant_tokens_mask=True)``,
read from the ``{% generation %}`` blocks of our chat template: every assistant turn after its
``<|im_start|>assistant\\n`` header, through its closing ``<|im_end|>`` (so the model learns to stop), including
Qwen3's empty ``<think>\\n\\n</think>\\n\\n`` block on the final turn. Every other token is -100. transformers marks
each token that overlaps the span, so content that starts with newlines (BPE merges them with the header's
``\\n`` into one token) has that token labelled too.

Media records: our processor's ``apply_chat_template`` expands each placeholder into the media's tokens but does not
return the assistant mask (it renders through the tokenizer, see :func:`_spread_mask`); the mask of the same chat
rendered unexpanded is carried over to the expanded ids with ``difflib`` (media tokens are never labelled: an
assistant turn holds no media, which :func:`parse_record` checks).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..remote.tokens_qwen3_multimodal import ENDOFTEXT_ID

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant", "tool")
# content-part type -> media kind (as the processor and chat template name them)
MEDIA_PARTS = {"image": "image", "image_url": "image", "video": "video", "audio": "audio", "input_audio": "audio"}
TEXT_PARTS = ("text",)
_SCHEME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*:")
PAD_FALLBACK = ENDOFTEXT_ID  # <|endoftext|>, Qwen3's pad token
MEDIA_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
AUDIO_KEYS = ("input_features", "feature_attention_mask")


class DataError(UserError, ValueError):
    """A training record that cannot be used; the message names the file and line."""


# --------------------------------------------------------------------------------------------------------------------
# Reading chat JSONL
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatRecord:
    where: str  # "path:line" for error messages
    messages: list
    media: tuple[str, ...]  # kinds of the media parts, in order
    files: tuple[Path, ...]  # local media files the record names (resolved)
    tools: list | None = None  # the record's "tools": JSON schemas the template lists in the system turn


def _resolve_source(source, root: Path, where: str, files: list):
    """A local relative path becomes absolute (relative to the JSONL's folder) and must exist; URLs, data URIs and
    in-memory media pass through."""
    if not isinstance(source, str) or _SCHEME_RE.match(source):
        return source
    path = Path(source).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise DataError(
            f"{where}: media file {source!r} not found (looked at {path}); paths are relative to the "
            f"JSONL file's folder."
        )
    files.append(path.resolve())
    return str(path.resolve())


def _resolve_part(part: dict, root: Path, where: str, files: list) -> dict:
    part = dict(part)
    kind = part["type"]
    if kind == "image_url":
        url = part.get("image_url")
        if isinstance(url, dict):
            part["image_url"] = {**url, "url": _resolve_source(url.get("url"), root, where, files)}
        else:
            part["image_url"] = _resolve_source(url, root, where, files)
        return part
    if kind == "input_audio":
        return part  # base64 data inline
    for key in (kind, "url", "path"):
        if part.get(key) is not None:
            part[key] = _resolve_source(part[key], root, where, files)
            return part
    raise DataError(
        f"{where}: a {kind!r} part needs its source under {kind!r}, 'url' or 'path' "
        f'(e.g. {{"type": "{kind}", "{kind}": "{kind}s/a.{"png" if kind == "image" else "wav"}"}}).'
    )


def _parse_content(content, i: int, role: str, root: Path, where: str, kinds: list, files: list) -> list:
    """A list content's parts: strings become text parts, media sources are resolved (see :func:`_resolve_part`)."""
    parts = []
    for part in content:
        if isinstance(part, str):
            parts.append({"type": "text", "text": part})
            continue
        if not isinstance(part, dict) or part.get("type") not in (*MEDIA_PARTS, *TEXT_PARTS):
            raise DataError(
                f"{where}: message {i} has a content part that is not one of "
                f"{', '.join((*TEXT_PARTS, *MEDIA_PARTS))} (got {part!r:.80})."
            )
        if part["type"] in MEDIA_PARTS:
            if role == "assistant":  # the model writes text: there is nothing to learn from a media answer
                raise DataError(
                    f"{where}: message {i} (assistant) has a {part['type']!r} part; media go in user turns, "
                    f"assistant turns hold text only."
                )
            kinds.append(MEDIA_PARTS[part["type"]])
            part = _resolve_part(part, root, where, files)
        parts.append(part)
    return parts


def parse_record(obj, root: Path, where: str) -> ChatRecord:
    example = '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list) or not obj["messages"]:
        raise DataError(f'{where}: expected an object with a non-empty "messages" list, like {example}.')
    messages, kinds, files = [], [], []
    for i, message in enumerate(obj["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise DataError(f"{where}: message {i} needs a 'role' from {', '.join(ROLES)}.")
        content = message.get("content")
        if isinstance(content, list):
            message = {**message, "content": _parse_content(content, i, message["role"], root, where, kinds, files)}
        elif content is not None and not isinstance(content, str):
            raise DataError(f"{where}: message {i}'s content must be a string or a list of parts.")
        messages.append(message)
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the record has no assistant message, so there is nothing to learn from it.")
    tools = obj.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise DataError(
            f'{where}: "tools" must be a list of JSON schemas like {{"type": "function", "function": ...}}.'
        )
    return ChatRecord(where, messages, tuple(kinds), tuple(files), tools)


def read_chat_jsonl(path) -> list[ChatRecord]:
    """Parse and validate every line now (bad records fail before any training starts)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file (expected chat-format JSONL, one record per line).")
    root = path.resolve().parent
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8.") from err
    records = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{n}: not valid JSON ({err.msg} at column {err.colno}).") from err
        records.append(parse_record(obj, root, f"{path}:{n}"))
    if not records:
        raise DataError(f"{path} holds no records.")
    return records


# --------------------------------------------------------------------------------------------------------------------
# Encoding: ids + assistant-only labels
# --------------------------------------------------------------------------------------------------------------------


def _spread_mask(ids: list[int], mask: list[int], expanded: list[int], where: str) -> list[int]:
    """``mask`` (over the unexpanded ``ids``) carried over to ``expanded``, the same chat with every media
    placeholder expanded: the aligned stretches keep their mask, the media tokens get none.

    Why: our processor's apply_chat_template renders through the tokenizer and does not return transformers'
    ``assistant_masks`` (ProcessorMixin shifts the template's spans by the processor's ``text_replacement_offsets``;
    ours returns none). Once it does, this function goes.
    """
    out = [0] * len(expanded)
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, ids, expanded, autojunk=False).get_opcodes():
        if tag == "equal":
            out[j1:j2] = mask[i1:i2]
    labelled = [t for t, m in zip(ids, mask, strict=True) if m]
    if labelled != [t for t, m in zip(expanded, out, strict=True) if m]:
        # a bug, not the data's fault: parse_record keeps media out of assistant turns
        raise RuntimeError(f"{where}: the assistant tokens did not survive the media expansion")
    return out


class ChatEncoder:
    """Chat record -> ``input_ids``, ``labels`` (assistant tokens only) and, for media records, the processor's
    media tensors (``pixel_values`` / ``image_grid_thw``, ``input_features`` / ``feature_attention_mask`` ...)."""

    def __init__(self, tokenizer, processor=None, max_length: int = 4096, media_policy=None):
        self.tokenizer = tokenizer
        self.processor = processor
        self.max_length = max_length
        self.media_policy = media_policy

    def __call__(self, record: ChatRecord) -> dict:
        import torch

        # media_tags=False: an inline <image>SRC</image> in message text is text here; only parts load media
        out = self.tokenizer.apply_chat_template(
            record.messages,
            tools=record.tools,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            tokenizer_kwargs={"media_tags": False},
        )
        ids, mask, features = out["input_ids"], out["assistant_masks"], {}
        if record.media:
            expanded, features = self._expand(record)
            mask, ids = _spread_mask(ids, mask, expanded, record.where), expanded
        if len(ids) > self.max_length:
            raise DataError(
                f"{record.where}: the record is {len(ids)} tokens long, over --max-length "
                f"{self.max_length}; shorten it or raise --max-length (records are never truncated: "
                f"that could cut an answer or a media placeholder apart)."
            )
        labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), **features}

    def _expand(self, record: ChatRecord) -> tuple[list[int], dict]:
        """The record through the processor: ids with every placeholder expanded, and the media tensors."""
        if self.processor is None:
            raise DataError(
                f"{record.where}: the record has {'/'.join(sorted(set(record.media)))} parts but "
                f"the model has no processor for them (a text-only model?)."
            )
        from ..remote.media_qwen3_multimodal import MediaError

        try:
            out = self.processor.apply_chat_template(
                record.messages,
                tools=record.tools,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                media_policy=self.media_policy,
            )
        except MediaError as err:  # a bad media part or inline tag, placeholder counts: the record's fault
            raise DataError(f"{record.where}: {' '.join(str(err).split())}") from err
        return out["input_ids"][0].tolist(), {k: v for k, v in out.items() if k in MEDIA_KEYS + AUDIO_KEYS}


class ChatDataset:
    """Map-style dataset. Every record is encoded once up front, by the same encoder the data loader uses, so a bad
    record fails before training starts (its media loaded and its inline tags parsed by the processor itself, its
    length checked); text-only encodings are kept, media records are encoded again when the data loader asks for
    them (images and audio are not held in memory)."""

    def __init__(self, records: list[ChatRecord], encoder: ChatEncoder):
        self.records = records
        self.encoder = encoder
        self.cache = {}
        for i, record in enumerate(records):
            encoded = encoder(record)
            if not record.media:
                self.cache[i] = encoded

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        cached = self.cache.get(index)
        return cached if cached is not None else self.encoder(self.records[index])


@dataclass
class ChatCollator:
    """Pads ids (pad id) / labels (-100) / attention mask (0) on the tokenizer's ``padding_side``, and concatenates
    media tensors in example order (the model fills placeholders in order). Audio features are padded on the right
    to the longest clip, with their ``feature_attention_mask``."""

    pad_id: int = PAD_FALLBACK
    padding_side: str = "right"

    def __call__(self, examples: list[dict]) -> dict:
        import torch
        from torch.nn.utils.rnn import pad_sequence

        def pad(key, value, side=self.padding_side):
            return pad_sequence([e[key] for e in examples], batch_first=True, padding_value=value, padding_side=side)

        ones = [torch.ones_like(e["input_ids"]) for e in examples]
        batch = {
            "input_ids": pad("input_ids", self.pad_id),
            "attention_mask": pad_sequence(ones, batch_first=True, padding_value=0, padding_side=self.padding_side),
            "labels": pad("labels", IGNORE_INDEX),
        }
        for key in MEDIA_KEYS:
            parts = [e[key] for e in examples if key in e]
            if parts:
                batch[key] = torch.cat(parts)
        # one row per clip ([mel, frames]); pad_sequence pads the first dimension, so frames go first and back
        clips = [clip.mT for e in examples if "input_features" in e for clip in e["input_features"]]
        if clips:
            masks = [m for e in examples if "feature_attention_mask" in e for m in e["feature_attention_mask"]]
            batch["input_features"] = pad_sequence(clips, batch_first=True).mT
            batch["feature_attention_mask"] = pad_sequence(masks, batch_first=True)
        return batch


def media_policy_for(records: list[ChatRecord]):
    """The media loader may read the files the JSONL names (the user's own data), nothing else."""
    folders = sorted({str(p.parent) for r in records for p in r.files})
    if not folders:
        return None
    from ..remote.media_qwen3_multimodal import MediaPolicy

    return MediaPolicy(allowed_roots=tuple(folders))


__all__ = [
    "IGNORE_INDEX",
    "ChatCollator",
    "ChatDataset",
    "ChatEncoder",
    "ChatRecord",
    "DataError",
    "media_policy_for",
    "parse_record",
    "read_chat_jsonl",
]
