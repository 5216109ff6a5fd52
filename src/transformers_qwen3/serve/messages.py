"""An OpenAI chat request's messages → our chat template's messages + the media they carry, decoded, in order.

Used by every llama-cpp-python request before it reaches the model (the server's middleware) and by the chat
handler when it is called in-process. Media go through the project's untrusted-media loader
(``remote.media_qwen3_multimodal``: format allow-list, byte / pixel / duration caps per item and per request).

Where we differ from llama-cpp-python's ``MTMDChatHandler``:

- ``input_audio`` parts (base64 wav / mp3) are read, not only ``image_url``;
- ``image_url`` takes ``data:`` URLs; ``http(s)`` URLs only when the media policy allows the network
  (``QWEN3_MM_ALLOW_NETWORK=1``; off by default), never local paths or ``file:`` URLs (a client must not read the
  server's files);
- a part that cannot be used is a :class:`BadRequest` (HTTP 400) naming the message, the part and the reason,
  checked before the request reaches the model, so streaming requests get it as a 400 too.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..remote.media_qwen3_multimodal import MediaBudget, MediaError, MediaPolicy, load_audio, load_image, read_source

AUDIO_FORMATS = ("wav", "mp3")
# what our chat template renders of a part; anything else is refused before the template sees it
TEXT_PARTS, IMAGE_PARTS, AUDIO_PARTS = ("text",), ("image_url",), ("input_audio",)


class BadRequest(UserError, ValueError):
    """A request the server refuses: ``status`` is its HTTP code, ``code`` OpenAI's error code."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


@dataclass
class Conversation:
    """``messages`` as our chat template reads them (parts keep their OpenAI types) and ``media``: ("image", RGB
    PIL image) / ("audio", float32 mono samples at 16 kHz), in the order the template writes their blocks."""

    messages: list[dict]
    media: list[tuple[str, object]] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.media]


def server_policy() -> MediaPolicy:
    """The loader's default caps; no local files at all (``allowed_roots=()``); the network as the environment says."""
    return MediaPolicy(allowed_roots=())


def read_messages(messages, policy: MediaPolicy | None = None) -> Conversation:
    """Check and decode ``messages`` (OpenAI chat format); raises :class:`BadRequest`."""
    policy = policy or server_policy()
    budget = MediaBudget(policy)
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", param="messages")
    out, media = [], []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"{where} must be an object with a 'role'", param=where)
        content = message.get("content")
        if content is None or isinstance(content, str):
            out.append(dict(message))
            continue
        if not isinstance(content, list):
            raise BadRequest(f"{where}.content must be a string or a list of parts", param=f"{where}.content")
        parts = []
        for j, part in enumerate(content):
            parts.append(_read_part(part, f"{where}.content[{j}]", policy, budget, media))
        out.append({**message, "content": parts})
    return Conversation(out, media)


def _read_part(part, where: str, policy: MediaPolicy, budget: MediaBudget, media: list) -> dict:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in TEXT_PARTS:
        if not isinstance(part.get("text"), str):
            raise BadRequest(f"{where}: a text part needs a 'text' string", param=where)
        return part
    try:
        if kind in IMAGE_PARTS:
            media.append(("image", _image(part.get("image_url"), where, policy, budget)))
            return part
        if kind in AUDIO_PARTS:
            media.append(("audio", _audio(part.get("input_audio"), where, policy, budget)))
            return part
    except MediaError as e:
        raise BadRequest(f"{where}: {e}", param=where) from None
    raise BadRequest(
        f"{where}: unsupported content part type {kind!r} (this server reads 'text', 'image_url' and 'input_audio')",
        param=where,
    )


def _image(image_url, where: str, policy: MediaPolicy, budget: MediaBudget):
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str):
        raise BadRequest(f"{where}: an image_url part needs image_url.url (a data: URL)", param=where)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in ("data", "http", "https"):
        raise BadRequest(
            f"{where}: image_url must be a data: URL (or http(s) when the server allows the network), "
            "not a path or a file: URL",
            param=where,
        )
    if scheme != "data" and not policy.network_allowed():
        raise BadRequest(
            f"{where}: this server does not fetch URLs; send the image as a data: URL "
            "(the server's operator can allow the network with QWEN3_MM_ALLOW_NETWORK=1)",
            param=where,
        )
    data = read_source(url, policy, tag="image_url")
    return load_image(data, policy, tag="image_url", budget=budget)


def _audio(input_audio, where: str, policy: MediaPolicy, budget: MediaBudget) -> np.ndarray:
    if not isinstance(input_audio, dict) or not isinstance(input_audio.get("data"), str):
        raise BadRequest(f"{where}: an input_audio part needs input_audio.data (base64)", param=where)
    fmt = input_audio.get("format")
    if fmt not in AUDIO_FORMATS:
        raise BadRequest(f"{where}: input_audio.format must be one of {list(AUDIO_FORMATS)}, not {fmt!r}", param=where)
    payload = "".join(input_audio["data"].split())
    if len(payload) // 4 * 3 > policy.max_bytes:
        raise BadRequest(f"{where}: input_audio.data is larger than the {policy.max_bytes}-byte cap", param=where)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"{where}: input_audio.data is not valid base64 ({e})", param=where) from None
    samples = load_audio(data, policy, tag="input_audio", budget=budget)
    return np.ascontiguousarray(samples.numpy(), dtype=np.float32)
