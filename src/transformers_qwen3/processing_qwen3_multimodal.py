"""Tokenizer, media loader and processor for Qwen3-Multimodal.

Hub file: imports only stdlib, torch and transformers, and siblings with `from .x import y`. Pillow and
soundfile are imported inside ``try`` blocks where they are needed (transformers' remote-code import check skips
those, so a text-only user never needs them; a missing package gives a clear error).

`Qwen3MultimodalTokenizer` is transformers' `Qwen2Tokenizer` (byte-level BPE, NFC, Qwen's pre-tokenizer regex,
ByteLevel decoder) under our own name, so that `AutoTokenizer` with `trust_remote_code=True` returns our class and
it can read inline media tags. On text without media tags it is the Qwen3 tokenizer, token for token;
`transformers_qwen3.tokenizer.build_qwen3_tokenizer` builds it from Qwen's BPE ranks.

Media (everything below the tokenizer):

- One loader (:func:`load_image`, :func:`load_video`, :func:`load_audio`, all through :func:`read_source`) serves the
  tokenizer's inline tags, the processor, the chat template and the Pipeline. Sources named in text are untrusted:
  network off unless enabled, local files only below allowed roots, byte / pixel / duration caps per item and in
  total per prompt (checked from headers before anything is decoded), and every failure is one :class:`MediaError`
  naming the tag and the reason, never echoing a file's contents. See :class:`MediaPolicy`. Placeholder tokens
  typed into message text are refused (:func:`refuse_media_specials`).
- Images: transformers' ``Qwen2VLImageProcessorPil`` configured as Qwen3-VL (patch 16, merge 2, temporal patch 2,
  mean/std 0.5) with llama.cpp mtmd's Qwen3-VL limits (8 to 4096 merged tokens per image). Audio: transformers'
  ``WhisperFeatureExtractor`` (128 mel bins, 16 kHz); token counts from Qwen3-Omni's
  ``_get_feat_extract_output_lengths``. We write no resizing or mel code.
- Video without torchvision: frames (PIL images, arrays, or a multi-frame file Pillow reads: animated GIF / WebP /
  PNG, multi-page TIFF) go through the same image processor; only the grouping of frame pairs into temporal patches
  is ours (a reshape, in Qwen3-VL's patch order). Each frame pair is preceded by its timestamp text
  (``<0.2 seconds>``) exactly as Qwen3-VL's processor writes it.

Where we differ from the native processors:

- Qwen3-VL's video processor needs torchvision, and budgets pixels over the whole clip; ours resizes each frame with
  the image processor under a per-frame budget (``video_min_pixels`` / ``video_max_pixels``), so per-frame token
  counts can differ from native on the same clip. The patch layout and timestamp text are the same.
- Audio files are resampled to 16 kHz by linear interpolation (no anti-alias filter) and downmixed to mono.
- Sources are never handed to transformers' ``load_image`` / ``load_audio`` (they fetch any URL, follow any
  redirect, have no size caps and open any path).
- Images past the image processor's 200:1 aspect-ratio limit, and audio with non-finite samples or samples beyond
  ±16, are refused with a MediaError before processing (transformers raises a plain ValueError for the first and
  computes NaN features for the second).
"""

import base64
import binascii
import http.client
import io
import math
import os
import re
import stat
import sys
import time
import types
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field

import torch
from transformers import Qwen2Tokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import _get_feat_extract_output_lengths
from transformers.models.whisper.feature_extraction_whisper import WhisperFeatureExtractor
from transformers.processing_utils import ProcessorMixin


class Qwen3MultimodalTokenizer(Qwen2Tokenizer):
    """The Qwen3 tokenizer plus Qwen3-Omni's audio/TTS tokens (ids 151643-151675, `len()` 151676).

    No `__init__` of its own on purpose: `from_pretrained` then loads the backend straight from tokenizer.json
    instead of rebuilding BPE from vocab/merges (transformers 5 only does that for classes without an own
    `__init__` or loaded with `trust_remote_code`), and the saved `ignore_merges` flag survives the round trip.

    Inline media: ``tok("What is this? <image>photo.jpg</image>", return_tensors="pt")`` loads the image through
    the media loader, expands the tag to Qwen3-VL's placeholder tokens and returns ``pixel_values`` /
    ``image_grid_thw`` (``<audio>`` → ``input_features`` / ``feature_attention_mask``; ``<video>`` →
    ``pixel_values_videos`` / ``video_grid_thw``) beside the ids, ready for ``model.generate(**inputs)``. The
    image/audio settings come from the processor config saved in the tokenizer's folder (or the defaults). The
    loader policy is ``tok.media_policy`` (a :class:`MediaPolicy`; default: from the environment), or per call
    ``media_policy=``. ``media_tags=False`` (per call, or the attribute ``tok.media_tags``, saved in
    tokenizer_config.json) tokenizes tags as plain text.

    Media placeholders (``<|image_pad|>``, ``<|vision_start|>`` ...) typed into chat message text or into text with
    inline tags are refused with a :class:`MediaError` (see :func:`refuse_media_specials`). Text without tags keeps
    Qwen3's behaviour: there the placeholders are special tokens, as in a prompt a chat template rendered.
    """

    media_policy = None  # None: MediaPolicy() from the environment at call time

    @property
    def media_tags(self) -> bool:
        """Whether inline tags load media (the default) or stay plain text. Kept in ``init_kwargs`` so that
        ``save_pretrained`` writes it to tokenizer_config.json (a saved ``false`` only ever turns loading off)."""
        return self.__dict__.get("init_kwargs", {}).get("media_tags", True) is not False

    @media_tags.setter
    def media_tags(self, value: bool):
        self.init_kwargs["media_tags"] = bool(value)

    def _encode_plus(self, text, text_pair=None, **kwargs):
        # The one path behind `__call__`, `encode` and `apply_chat_template(tokenize=True)`. Text without media tags
        # goes straight to the parent, so its ids are exactly Qwen3's.
        policy = kwargs.pop("media_policy", None)
        media_tags = kwargs.pop("media_tags", None)
        if media_tags is None:
            media_tags = self.media_tags
        if media_tags and text_pair is None and not kwargs.get("is_split_into_words") and has_media_tags(text):
            return self._encode_with_media(text, policy, **kwargs)
        return super()._encode_plus(text, text_pair, **kwargs)

    def apply_chat_template(self, conversation, *args, **kwargs):
        # transformers' sanitize_control_tokens=True encodes typed control tokens as text itself: nothing to refuse
        if not kwargs.get("sanitize_control_tokens"):
            refuse_specials_in_chat(conversation)
        return super().apply_chat_template(conversation, *args, **kwargs)

    def _encode_with_media(self, text, policy, **kwargs):
        batched = not isinstance(text, str)
        for one in [text] if not batched else text:
            if isinstance(one, str):  # the tokenizer has no media to put behind a typed placeholder
                refuse_media_specials(one, "text with inline media tags, which the tokenizer reads")
        encoder = self.media_encoder()
        texts, features = encoder.expand(list(text) if batched else [text], policy=policy or self.media_policy)
        return_tensors = kwargs.get("return_tensors")
        encoding = super()._encode_plus(texts if batched else texts[0], None, **kwargs)
        ids = encoding["input_ids"]
        encoder.check_token_counts(ids if batched or return_tensors else [ids], texts)
        encoding.update(features)  # torch tensors; converted below when other tensors were asked for
        if return_tensors:
            encoding.convert_to_tensors(return_tensors)
        return encoding

    def media_encoder(self) -> "MediaEncoder":
        """The image/audio/video settings of this tokenizer's folder (processor config), or the defaults."""
        encoder = self.__dict__.get("_media_encoder")
        if encoder is None:
            encoder = MediaEncoder.from_folder(self.name_or_path)
            self.__dict__["_media_encoder"] = encoder
        return encoder


# ====================================================================================================================
# Media loader: every source named in text goes through here
# ====================================================================================================================

NETWORK_ENV = "QWEN3_MM_ALLOW_NETWORK"
ROOTS_ENV = "QWEN3_MM_ALLOWED_ROOTS"
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")  # never EPS & co. (Ghostscript), never exotic decoders


class MediaError(ValueError):
    """A media source could not be used. ``tag`` names where it came from, ``reason`` says why.

    There is one such class per process, whichever copy of this file made it (see :func:`_one_class_per_process`),
    so an ``except`` naming the installed package's ``MediaError`` also catches a model folder's remote-code copy's.
    """

    def __init__(self, tag: str, source, reason: str):
        self.tag, self.source, self.reason = tag, source, reason
        shown = self._shown(source)
        super().__init__(f"{tag} {shown}: {reason}" if shown else f"{tag}: {reason}")

    @staticmethod
    def _shown(source) -> str:
        if source is None:
            return ""
        if not isinstance(source, str):
            return f"<{type(source).__name__}>"
        if source[:5].lower() == "data:":  # a data: URI is the file itself: name its type, never echo its payload
            return repr(f"{source.partition(',')[0][:40]},… ({len(source)} chars)")
        if len(source) > 80:
            source = source[:60] + "…" + source[-10:]
        return repr(source)


_MEDIA_ERROR_REGISTRY = "_qwen3_multimodal_media_error"  # rename if MediaError's constructor ever changes


def _one_class_per_process(cls: type) -> type:
    """The first MediaError class made in this process, whichever copy of this file made it.

    Remote code imports this file again per model folder (``transformers_modules.<folder>.processing_...``) beside
    the installed ``transformers_qwen3`` copy, and ``except`` matches real subclasses only (it ignores a
    metaclass's ``__subclasscheck__``). So every copy must raise the very same class: the first registers it under a
    stable name in ``sys.modules`` (no import of our package needed) and later copies take it from there.
    """
    registry = sys.modules.get(_MEDIA_ERROR_REGISTRY)
    if registry is None:
        registry = types.ModuleType(_MEDIA_ERROR_REGISTRY, "The one MediaError class of this process.")
        registry.MediaError = cls
        registry = sys.modules.setdefault(_MEDIA_ERROR_REGISTRY, registry)  # atomic: two racing copies agree
    return registry.MediaError


MediaError = _one_class_per_process(MediaError)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class MediaPolicy:
    """What the loader may read. Never taken from a config file: only from arguments or the environment.

    allow_network: fetch http(s) URLs (default: env ``QWEN3_MM_ALLOW_NETWORK=1``, else off).
    allowed_roots: local files must resolve (symlinks followed) below one of these folders (default: env
        ``QWEN3_MM_ALLOWED_ROOTS``, ``os.pathsep``-separated, else the current working directory at load time).
    max_bytes: largest file / download / data URI accepted.  timeout_s: total time for one download.
    max_image_pixels: largest decoded image (width × height); Pillow's own decompression-bomb guard stays on too.
    max_audio_seconds: longest audio clip.  max_video_frames: most frames read from one video file.

    Totals for all the sources of one prompt (each text of a batch has its own), checked from file headers before
    anything is decoded, because small files can claim large sizes (an 8 KB 1-bit PNG decodes to 8000x8000 RGB):
    max_items: sources named.  max_total_bytes: bytes read.  max_total_pixels: image pixels plus the pixels of the
    video frames decoded.  max_total_audio_seconds: audio duration. Media passed already decoded (PIL images,
    arrays) are the caller's and count towards none of these.
    """

    allow_network: bool | None = None
    allowed_roots: tuple | None = None
    max_bytes: int = 64 * 2**20
    timeout_s: float = 20.0
    max_redirects: int = 3
    max_image_pixels: int = 64_000_000
    max_audio_seconds: float = 600.0
    max_video_frames: int = 1024
    max_video_pixels: int = 2_000_000_000  # summed over the frames read from one video file
    max_items: int = 64
    max_total_bytes: int = 256 * 2**20
    max_total_pixels: int = 256_000_000  # ~768 MB as RGB: 4 images at the per-image cap, 2 clips of 64 HD frames
    max_total_audio_seconds: float = 1200.0

    def network_allowed(self) -> bool:
        return _env_flag(NETWORK_ENV) if self.allow_network is None else bool(self.allow_network)

    def roots(self) -> list[str]:
        roots = self.allowed_roots
        if roots is None:
            env = os.environ.get(ROOTS_ENV, "")
            roots = [r for r in env.split(os.pathsep) if r] or [os.getcwd()]
        elif isinstance(roots, (str, os.PathLike)):
            roots = [roots]
        return [os.path.realpath(os.fspath(r)) for r in roots]


def _policy(policy) -> MediaPolicy:
    return MediaPolicy() if policy is None else policy


class MediaBudget:
    """What the sources of one prompt have cost so far, against the policy's totals (``max_items``,
    ``max_total_bytes``, ``max_total_pixels``, ``max_total_audio_seconds``)."""

    LIMITS = {  # what is counted -> (policy field, unit)
        "items": ("max_items", "media sources"),
        "bytes": ("max_total_bytes", "bytes"),
        "pixels": ("max_total_pixels", "pixels"),
        "seconds": ("max_total_audio_seconds", "seconds of audio"),
    }

    def __init__(self, policy: MediaPolicy):
        self.policy = policy
        self.spent = dict.fromkeys(self.LIMITS, 0)

    def charge(self, tag: str, source, what: str, amount) -> None:
        field_name, unit = self.LIMITS[what]
        limit, total = getattr(self.policy, field_name), self.spent[what] + amount
        if total > limit:
            shown = f"{total:.1f}" if isinstance(total, float) else str(total)
            raise MediaError(
                tag,
                source,
                f"the media of this prompt come to {shown} {unit}, over the {limit} allowed for one prompt; "
                f"raise MediaPolicy.{field_name} to allow more",
            )
        self.spent[what] = total


_QUOTED_RE = re.compile(r"""b?'[^']*'|b?"[^"]*\"""")


def _detail(e: Exception) -> str:
    """``Type: message`` of a decoder's or fetcher's exception, fit for a MediaError: quoted fragments dropped
    (decoders quote the bytes they choke on, e.g. Pillow's "broken PNG file (chunk b'....')", and a message must
    never echo a file's contents) and cut to 120 characters."""
    return f"{type(e).__name__}: {_QUOTED_RE.sub('…', str(e))[:120]}"


_SCHEME_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*):")


def read_source(source, policy: MediaPolicy | None = None, tag: str = "<media>") -> bytes:
    """The bytes named by ``source``: a local path, ``file://`` URL, ``data:`` URI or http(s) URL."""
    policy = _policy(policy)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise MediaError(tag, source, f"a source must be a path or URL string, not {type(source).__name__}")
    try:
        return _read_source(source, policy, tag)
    except MediaError:
        raise
    except (OSError, ValueError, UnicodeError) as e:  # e.g. a malformed URL that urllib refuses to split
        raise MediaError(tag, source, f"bad source ({_detail(e)})") from None


def _read_source(source: str, policy: MediaPolicy, tag: str) -> bytes:
    src = source.strip()
    if not src:
        raise MediaError(tag, source, "empty source")
    if "\x00" in src:
        raise MediaError(tag, source, "source contains a NUL character")
    match = _SCHEME_RE.match(src)
    scheme = match.group(1).lower() if match else ""
    if scheme == "data":
        return _read_data_uri(src, policy, tag)
    if scheme in ("http", "https"):
        return _read_url(src, policy, tag)
    if scheme == "file":
        parts = urllib.parse.urlsplit(src)
        if parts.netloc not in ("", "localhost"):
            raise MediaError(tag, source, f"file:// URLs must name a local file, not host {parts.netloc!r}")
        return _read_local(urllib.request.url2pathname(urllib.parse.unquote(parts.path)), policy, tag, source)
    if src.startswith("file:"):  # file:/abs/path
        return _read_local(urllib.request.url2pathname(urllib.parse.unquote(src[5:])), policy, tag, source)
    if scheme and src[len(scheme) + 1 :].startswith("//"):
        raise MediaError(tag, source, f"URL scheme {scheme!r} is not allowed (use http(s), file:// or data:)")
    return _read_local(src, policy, tag, source)


def _read_data_uri(src: str, policy: MediaPolicy, tag: str) -> bytes:
    header, comma, payload = src[5:].partition(",")
    if not comma:
        raise MediaError(tag, src, "malformed data: URI (no ',')")
    if header.lower().endswith(";base64"):
        payload = "".join(payload.split())
        if len(payload) // 4 * 3 > policy.max_bytes:
            raise MediaError(tag, src, f"data: URI is larger than the {policy.max_bytes}-byte cap")
        try:
            return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
        except (binascii.Error, ValueError) as e:
            raise MediaError(tag, src, f"data: URI is not valid base64 ({e})") from None
    data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > policy.max_bytes:
        raise MediaError(tag, src, f"data: URI is larger than the {policy.max_bytes}-byte cap")
    return data


def _read_local(path: str, policy: MediaPolicy, tag: str, source) -> bytes:
    try:
        resolved = os.path.realpath(os.path.join(os.getcwd(), path))
    except (OSError, ValueError) as e:
        raise MediaError(tag, source, f"bad path ({e})") from None
    roots = policy.roots()
    if not any(resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
        raise MediaError(
            tag,
            source,
            f"path resolves to {resolved}, outside the allowed folders {roots}; pass allowed_roots= "
            f"(MediaPolicy) or set {ROOTS_ENV}",
        )
    try:
        info = os.stat(resolved)
        if not stat.S_ISREG(info.st_mode):
            raise MediaError(tag, source, "not a regular file")
        if info.st_size > policy.max_bytes:
            raise MediaError(tag, source, f"file is {info.st_size} bytes, over the {policy.max_bytes}-byte cap")
        # O_NOFOLLOW / O_NONBLOCK: a path swapped for a symlink or a FIFO after the checks is refused, not followed
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(resolved, flags)
        with os.fdopen(fd, "rb") as f:
            opened = os.fstat(f.fileno())
            if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                raise MediaError(tag, source, "file changed while being opened")
            data = f.read(policy.max_bytes + 1)
    except MediaError:
        raise
    except FileNotFoundError:
        raise MediaError(tag, source, f"file not found ({resolved})") from None
    except PermissionError:
        raise MediaError(tag, source, f"permission denied ({resolved})") from None
    except (OSError, ValueError) as e:
        raise MediaError(tag, source, f"cannot read file ({e})") from None
    if len(data) > policy.max_bytes:
        raise MediaError(tag, source, f"file is over the {policy.max_bytes}-byte cap")
    return data


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows at most ``max_redirections`` redirects, and only to http(s) URLs."""

    def __init__(self, max_redirects: int, tag: str, source: str):
        self.max_redirections = max_redirects
        self.tag, self.source = tag, source

    def http_error_302(self, req, fp, code, msg, headers):
        # checked before the base class, which would allow ftp: and word other refusals as HTTP errors
        location = headers.get("location") or headers.get("uri") or ""
        scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, location)).scheme.lower()
        if scheme not in ("http", "https"):
            raise MediaError(self.tag, self.source, f"redirect to a {scheme!r} URL is not allowed")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _read_url(src: str, policy: MediaPolicy, tag: str) -> bytes:
    if not policy.network_allowed():
        raise MediaError(
            tag,
            src,
            f"network access is off; enable it with MediaPolicy(allow_network=True) or {NETWORK_ENV}=1",
        )
    # A hand-built opener: http(s) only (no file:, ftp: or data: handlers), no proxies from the environment,
    # redirects checked by our handler.
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        _HttpOnlyRedirects(policy.max_redirects, tag, src),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    deadline = time.monotonic() + policy.timeout_s
    try:
        request = urllib.request.Request(src, headers={"User-Agent": "transformers-qwen3-media/1"})
        with opener.open(request, timeout=policy.timeout_s) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > policy.max_bytes:
                raise MediaError(tag, src, f"download is {length} bytes, over the {policy.max_bytes}-byte cap")
            chunks, total = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise MediaError(tag, src, f"download took longer than {policy.timeout_s} s")
                chunk = response.read1(min(1 << 16, policy.max_bytes + 1 - total))  # what has arrived
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > policy.max_bytes:
                    raise MediaError(tag, src, f"download is over the {policy.max_bytes}-byte cap")
    except MediaError:
        raise
    except urllib.error.HTTPError as e:
        raise MediaError(tag, src, f"HTTP error {e.code} ({e.reason})") from None
    except urllib.error.URLError as e:
        raise MediaError(tag, src, f"cannot fetch ({e.reason})") from None
    except (TimeoutError, OSError, ValueError, http.client.HTTPException) as e:
        raise MediaError(tag, src, f"cannot fetch ({_detail(e)})") from None
    return b"".join(chunks)


# ---- decoders ------------------------------------------------------------------------------------------------------
#
# Each medium is loaded in two steps: a probe reads the source and checks its header (size, frame count, duration)
# against the per-item caps and the prompt's MediaBudget; ``decode()`` then does the expensive part. The encoder
# probes every medium of a prompt before it decodes any, so a prompt over budget costs only the reads.


@dataclass
class _Probed:
    """A medium whose source was read and whose header passed the checks; not decoded yet."""

    decode: object  # () -> the decoded medium
    dims: tuple = ()  # (width, height) of the image or of each video frame, when known


def _pil(tag, source):
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise MediaError(tag, source, "reading images needs Pillow: pip install pillow") from None
    return Image, ImageOps


def _open_image(data: bytes, policy: MediaPolicy, tag: str, source):
    """Open (header only) with the format allow-list and both pixel caps. Returns the lazy PIL image."""
    Image, _ = _pil(tag, source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaError(tag, source, f"image rejected as a decompression bomb ({e})") from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on malformed input; all mean "not an image"
        raise MediaError(tag, source, f"cannot decode image ({_detail(e)})") from None
    width, height = image.size
    if width * height > policy.max_image_pixels:
        raise MediaError(tag, source, f"image is {width}x{height}, over the {policy.max_image_pixels}-pixel cap")
    if width < 1 or height < 1:
        raise MediaError(tag, source, "image has no pixels")
    return image


def _to_rgb(image, tag, source):
    _, ImageOps = _pil(tag, source)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)  # as transformers' load_image: camera photos come out upright
        return image.convert("RGB")
    except Exception as e:  # noqa: BLE001 - truncated / corrupt data surfaces only when decoding pixels
        raise MediaError(tag, source, f"cannot decode image ({_detail(e)})") from None


SOURCE_TYPES = (str, os.PathLike, bytes, bytearray, memoryview)  # what the loader reads; anything else is decoded


def _source_bytes(source, policy: MediaPolicy, tag: str, budget: MediaBudget) -> bytes:
    """A source string through :func:`read_source`; raw file bytes as they are (under the same byte cap)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) > policy.max_bytes:
            raise MediaError(tag, source, f"{len(source)} bytes, over the {policy.max_bytes}-byte cap")
        data = bytes(source)
    else:
        data = read_source(source, policy, tag)
    budget.charge(tag, source, "bytes", len(data))
    return data


def _dims(image) -> tuple:
    """(width, height) of a PIL image or an image array, channels first or last (as transformers infers them)."""
    if hasattr(image, "size") and not hasattr(image, "shape"):
        return tuple(image.size)
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) != 3:
        return ()  # not an image the processor reads: it says so itself
    return (shape[2], shape[1]) if shape[0] in (1, 3) else (shape[1], shape[0])


def probe_image(source, policy: MediaPolicy, tag: str, budget: MediaBudget) -> _Probed:
    if not isinstance(source, SOURCE_TYPES):
        return _Probed(lambda: source, _dims(source))
    image = _open_image(_source_bytes(source, policy, tag, budget), policy, tag, source)
    budget.charge(tag, source, "pixels", image.size[0] * image.size[1])
    return _Probed(lambda: _to_rgb(image, tag, source), image.size)


def load_image(source, policy: MediaPolicy | None = None, tag: str = "<image>", budget: MediaBudget | None = None):
    """An RGB PIL image from a source string or the bytes of an image file; other inputs (PIL images, arrays)
    are returned as they are."""
    policy = _policy(policy)
    return probe_image(source, policy, tag, budget or MediaBudget(policy)).decode()


@dataclass
class Video:
    """Decoded frames (PIL images or HWC arrays) and the time in seconds of each frame."""

    frames: list
    times: list = field(default_factory=list)


def probe_video(
    source, policy: MediaPolicy, tag: str, budget: MediaBudget, fps: float = 2.0, max_frames: int = 64
) -> _Probed:
    if isinstance(source, Video) or not isinstance(source, SOURCE_TYPES):
        video = _given_video(source, tag, fps, max_frames)
        return _Probed(lambda: video, _dims(video.frames[0]) if video.frames else ())
    image = _open_image(_source_bytes(source, policy, tag, budget), policy, tag, source)
    n_frames = getattr(image, "n_frames", 1)
    if n_frames > policy.max_video_frames:
        raise MediaError(tag, source, f"video has {n_frames} frames, over the {policy.max_video_frames}-frame cap")
    if n_frames * image.size[0] * image.size[1] > policy.max_video_pixels:
        raise MediaError(tag, source, f"video has more than {policy.max_video_pixels} pixels in all")
    picks = _uniform(_frame_picks(image, n_frames, fps, tag, source), max_frames)
    budget.charge(tag, source, "pixels", len(picks) * image.size[0] * image.size[1])
    return _Probed(lambda: _decode_frames(image, picks, tag, source), image.size)


def load_video(
    source,
    policy: MediaPolicy | None = None,
    tag: str = "<video>",
    fps: float = 2.0,
    max_frames: int = 64,
    budget: MediaBudget | None = None,
) -> Video:
    """Frames of a multi-frame image file (animated GIF / WebP / PNG, multi-page TIFF) sampled at ``fps``.

    Non-file inputs pass through: a ``Video``, a list of frames, or an array [T, H, W, 3] (taken as sampled at
    ``fps``). At most ``max_frames`` frames are kept (uniformly).
    """
    policy = _policy(policy)
    return probe_video(source, policy, tag, budget or MediaBudget(policy), fps, max_frames).decode()


def _given_video(source, tag, fps, max_frames) -> Video:
    if isinstance(source, Video):
        return _subsample(source, max_frames)
    frames = list(source)
    if not frames:
        raise MediaError(tag, "<frames>", "a video needs at least one frame")
    return _subsample(Video(frames, [i / fps for i in range(len(frames))]), max_frames)


def _frame_picks(image, n_frames: int, fps: float, tag, source) -> list:
    """(frame index, time) of the frame on screen at 0, 1/fps, 2/fps ... (at least one), from the frame durations."""
    try:
        # frame start times from the per-frame durations (ms); frames without one count as 100 ms
        starts, end = [], 0.0
        for index in range(n_frames):
            image.seek(index)
            starts.append(end)
            end += max(float(image.info.get("duration") or 100), 1.0) / 1000.0
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on malformed frames
        raise MediaError(tag, source, f"cannot decode video frame ({_detail(e)})") from None
    picks, j = [], 0
    for k in range(max(1, math.ceil(end * fps))):
        while j + 1 < n_frames and starts[j + 1] <= k / fps:
            j += 1
        picks.append((j, k / fps))
    return picks


def _decode_frames(image, picks: list, tag, source) -> Video:
    frames = []
    try:
        for index, _ in picks:
            image.seek(index)
            frames.append(image.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on malformed frames
        raise MediaError(tag, source, f"cannot decode video frame ({_detail(e)})") from None
    return Video(frames, [when for _, when in picks])


def _uniform(items: list, n: int) -> list:
    """At most ``n`` items, evenly spread, first and last kept."""
    if len(items) <= n:
        return items
    if n <= 1:
        return items[:1]
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def _subsample(video: Video, max_frames: int) -> Video:
    times = video.times or [float(i) for i in range(len(video.frames))]
    pairs = _uniform(list(zip(video.frames, times, strict=True)), max_frames)
    return Video([f for f, _ in pairs], [t for _, t in pairs])


# Float audio is nominally within [-1, 1]. Hot masters and unnormalised mixes go a few dB over, so samples up to
# this bound (+24 dBFS) are kept as they are. Beyond it a file is not audio at that scale: integer PCM stored as
# float (±32768), garbage or a hostile file; its mel power overflows float32 (1e30² is inf) and the model's logits
# turn NaN. We refuse it rather than clip: clipping would hand the model a square wave of garbage with no sign
# that anything was wrong, while the error says how to fix the input.
MAX_AUDIO_SAMPLE = 16.0


def _check_samples(audio: torch.Tensor, tag, source) -> torch.Tensor:
    if not torch.isfinite(audio).all():
        raise MediaError(tag, source, "audio contains NaN or infinite samples")
    peak = audio.abs().max().item() if audio.numel() else 0.0
    if peak > MAX_AUDIO_SAMPLE:
        raise MediaError(
            tag,
            source,
            f"audio samples reach {peak:.3g}, far outside [-1, 1] (more than {MAX_AUDIO_SAMPLE:g}); float audio "
            "must be scaled to [-1, 1] (divide 16-bit PCM by 32768)",
        )
    return audio


def _as_float_tensor(array, tag, source):
    try:
        tensor = torch.as_tensor(array, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as e:
        raise MediaError(tag, source, f"audio must be a 1-D array of samples ({e})") from None
    if tensor.ndim == 2:  # [samples, channels] or [channels, samples]: average the (short) channel axis
        tensor = tensor.mean(dim=1 if tensor.shape[1] <= tensor.shape[0] else 0)
    if tensor.ndim != 1:
        raise MediaError(tag, source, f"audio must be 1-D (mono samples), got shape {tuple(tensor.shape)}")
    return tensor


def resample(audio: torch.Tensor, rate: int, target: int) -> torch.Tensor:
    """Linear-interpolation resampling (no anti-alias filter; fine for speech into a 16 kHz mel front end)."""
    if rate == target or audio.numel() == 0:
        return audio
    n_out = max(1, round(audio.numel() * target / rate))
    positions = torch.arange(n_out, dtype=torch.float64) * (rate / target)
    left = positions.floor().long().clamp(max=audio.numel() - 1)
    right = (left + 1).clamp(max=audio.numel() - 1)
    frac = (positions - left).to(audio.dtype)
    return audio[left] * (1 - frac) + audio[right] * frac


def _soundfile(tag, source):
    try:
        import soundfile
    except ImportError:
        raise MediaError(tag, source, "decoding audio files needs soundfile: pip install soundfile") from None
    return soundfile


def probe_audio(
    source,
    policy: MediaPolicy,
    tag: str,
    budget: MediaBudget,
    sampling_rate: int = 16000,
    source_rate: int | None = None,
) -> _Probed:
    def finish(audio, rate):
        return _finish_audio(audio, rate, policy, tag, source, sampling_rate)

    if not isinstance(source, SOURCE_TYPES):
        audio = _as_float_tensor(source, tag, source)
        return _Probed(lambda: finish(audio, source_rate or sampling_rate))
    data = _source_bytes(source, policy, tag, budget)
    soundfile = _soundfile(tag, source)
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            rate, n = f.samplerate, f.frames
    except Exception as e:  # noqa: BLE001 - libsndfile reports malformed data through several types
        raise MediaError(tag, source, f"cannot decode audio ({_detail(e)})") from None
    if rate <= 0:
        raise MediaError(tag, source, f"bad sample rate {rate}")
    if n / rate > policy.max_audio_seconds:
        raise MediaError(tag, source, f"audio is {n / rate:.1f} s, over the {policy.max_audio_seconds} s cap")
    budget.charge(tag, source, "seconds", n / rate)

    def decode():
        audio = _decode_audio(soundfile, data, int(policy.max_audio_seconds * rate) + 1, tag, source)
        budget.charge(tag, source, "seconds", max(0.0, audio.numel() / rate - n / rate))  # a header that lied
        return finish(audio, rate)

    return _Probed(decode)


def _decode_audio(soundfile, data: bytes, max_frames: int, tag, source) -> torch.Tensor:
    """Mono float32 samples of an audio file, at most ``max_frames`` of them (at its own rate)."""
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            samples = f.read(frames=max_frames, dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile reports malformed data through several types
        raise MediaError(tag, source, f"cannot decode audio ({_detail(e)})") from None
    return torch.from_numpy(samples).mean(dim=1)


def _finish_audio(audio: torch.Tensor, rate: int, policy: MediaPolicy, tag, source, sampling_rate: int):
    """Checked samples at ``sampling_rate``."""
    _check_samples(audio, tag, source)
    if audio.numel() / rate > policy.max_audio_seconds:
        raise MediaError(
            tag, source, f"audio is {audio.numel() / rate:.1f} s, over the {policy.max_audio_seconds} s cap"
        )
    audio = resample(audio, rate, sampling_rate)
    if audio.numel() < sampling_rate // 100:  # under 10 ms: not one mel frame
        raise MediaError(tag, source, "audio is shorter than 10 ms")
    return audio


def load_audio(
    source,
    policy: MediaPolicy | None = None,
    tag: str = "<audio>",
    sampling_rate: int = 16000,
    source_rate: int | None = None,
    budget: MediaBudget | None = None,
) -> torch.Tensor:
    """Mono float32 samples at ``sampling_rate`` from a source string (decoded with soundfile), or from an array
    (taken to be at ``source_rate``, default ``sampling_rate``)."""
    policy = _policy(policy)
    return probe_audio(source, policy, tag, budget or MediaBudget(policy), sampling_rate, source_rate).decode()


# ====================================================================================================================
# Tags and placeholders in text
# ====================================================================================================================

IMAGE_TOKEN, VIDEO_TOKEN, AUDIO_TOKEN = "<|image_pad|>", "<|video_pad|>", "<|audio_pad|>"
PLACEHOLDERS = {"image": IMAGE_TOKEN, "video": VIDEO_TOKEN, "audio": AUDIO_TOKEN}
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
AUDIO_START, AUDIO_END = "<|audio_start|>", "<|audio_end|>"
TAG_KINDS = {"image": "image", "img": "image", "video": "video", "audio": "audio"}

# Inline tags (<image>SRC</image>, <img>, <video>, <audio>; SRC may not contain '<' or '>') and the placeholders a
# chat template writes. Video placeholders wrapped in vision_start/end are replaced whole, as Qwen3-VL does (each
# frame pair brings its own start/end); image and audio placeholders keep their wrappers.
_TAG_RE = re.compile(r"<(image|img|video|audio)>([^<>]*)</\1>")
_ITEM_RE = re.compile(
    r"<(?P<tag>image|img|video|audio)>(?P<src>[^<>]*)</(?P=tag)>"
    rf"|(?P<video>{re.escape(VISION_START + VIDEO_TOKEN + VISION_END)}|{re.escape(VIDEO_TOKEN)})"
    rf"|(?P<image>{re.escape(IMAGE_TOKEN)})"
    rf"|(?P<audio>{re.escape(AUDIO_TOKEN)})"
)


# Typed into text where the media come from elsewhere (chat message text, text with inline tags), these would pass
# as real placeholders: the processor fails on the count, or the model reads the user's text as media. We refuse
# them rather than escape them (encode them as plain text): the processor renders the chat to one string before it
# expands placeholders, so it cannot tell a typed placeholder from one the template wrote, and only a refusal can be
# the same at every entry point (tokenizer, processor, chat template, Pipeline). The refusal names the token and
# says how to pass media. Direct processor calls and tokenizer text without tags are prompts, where placeholders are
# the syntax and stay allowed; text that must show these strings to the model can go through the tokenizer's
# ``apply_chat_template(..., sanitize_control_tokens=True)``, where transformers encodes them as text.
MEDIA_SPECIALS = (IMAGE_TOKEN, VIDEO_TOKEN, AUDIO_TOKEN, VISION_START, VISION_END, AUDIO_START, AUDIO_END)
_SPECIALS_RE = re.compile("|".join(re.escape(t) for t in MEDIA_SPECIALS))


def refuse_media_specials(text: str, where: str) -> None:
    """Raise :class:`MediaError` if ``text`` holds a media placeholder or start/end token."""
    match = _SPECIALS_RE.search(text)
    if match:
        raise MediaError(
            match.group(),
            None,
            f"media placeholder typed in {where}. Placeholders are written by the chat template and the processor, "
            "never typed: pass media as a chat content part ({'type': 'image', 'image': SRC}), an inline "
            "<image>SRC</image> tag, or the processor's images= / videos= / audio= arguments",
        )


def refuse_specials_in_chat(conversation) -> None:
    """:func:`refuse_media_specials` on the text of every message of a chat (or a batch of chats)."""
    batched = isinstance(conversation, (list, tuple)) and conversation and not isinstance(conversation[0], dict)
    for chat in conversation if batched else [conversation]:
        for message in getattr(chat, "messages", chat):
            if not isinstance(message, dict):
                continue
            content, role = message.get("content"), message.get("role", "a")
            parts = content if isinstance(content, (list, tuple)) else [content]
            texts = [p.get("text") if isinstance(p, dict) and p.get("type") == "text" else p for p in parts]
            for text in [*texts, message.get("reasoning_content")]:
                if isinstance(text, str):
                    refuse_media_specials(text, f"{role} message text")


def has_media_tags(text) -> bool:
    if isinstance(text, str):
        return "</" in text and _TAG_RE.search(text) is not None
    if isinstance(text, (list, tuple)):
        return any(isinstance(t, str) and has_media_tags(t) for t in text)
    return False


def parse_media_tags(text: str) -> list:
    """Split ``text`` into plain strings and ``(kind, src)`` tuples for its inline tags (kind: image/video/audio)."""
    out, last = [], 0
    for m in _TAG_RE.finditer(text):
        if m.start() > last:
            out.append(text[last : m.start()])
        out.append((TAG_KINDS[m.group(1)], m.group(2).strip()))
        last = m.end()
    if last < len(text):
        out.append(text[last:])
    return out


def _is_frame(x) -> bool:
    return hasattr(x, "convert") and hasattr(x, "size") or getattr(x, "ndim", None) == 3


def flatten_media(items, kind: str) -> list:
    """Flatten nested lists (per-sample lists from a batch) into one list of single media items, in order.

    An item is a source string/path; for images a PIL image or HWC array; for videos a ``Video``, an array
    [T, H, W, 3] or a list of frames; for audio an array of samples.
    """
    if items is None:
        return []
    if isinstance(items, (*SOURCE_TYPES, Video)):
        return [items]
    ndim = getattr(items, "ndim", None)
    if ndim is not None:
        if kind == "image" and ndim == 4:
            return list(items)
        if kind == "video" and ndim == 3:
            raise ValueError("a video array must be [frames, height, width, 3]")
        return [items]
    if kind == "image" and _is_frame(items):
        return [items]
    if isinstance(items, (list, tuple)):
        if kind == "video" and items and all(_is_frame(x) for x in items):
            return [list(items)]  # one video given as its frames
        if kind == "audio" and items and all(isinstance(x, (int, float)) for x in items):
            return [items]  # one clip as a list of samples
        return [y for x in items for y in flatten_media(x, kind)]
    raise ValueError(f"cannot use a {type(items).__name__} as {kind} input")


# transformers' smart_resize refuses images more elongated than this, with a plain ValueError that names no tag
MAX_ASPECT_RATIO = 200


def _check_aspect_ratio(dims: tuple, tag: str, source) -> None:
    width, height = dims
    if min(width, height) < 1:
        raise MediaError(tag, source, "image has no pixels")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise MediaError(
            tag,
            source,
            f"image is {width}x{height}: its aspect ratio is over the image processor's {MAX_ASPECT_RATIO}:1 limit; "
            "crop or pad it",
        )


@dataclass
class _Item:
    """One medium of a text: where it sits, its kind, its source (or the decoded medium passed as an argument)."""

    start: int
    end: int
    kind: str  # image / video / audio
    media: object
    tag: str  # names it in errors: "<img>" for a tag, "<image> (image input #0)" for an argument
    inline: bool  # an inline tag (wrapped in start/end tokens when expanded), not a placeholder
    decode: object = None  # set by the probe
    loaded: object = None
    text: str = ""  # the placeholder text that replaces it


# ====================================================================================================================
# The media path shared by the tokenizer's tags and the processor
# ====================================================================================================================

IMAGE_PROCESSOR_DEFAULTS = dict(
    patch_size=16,
    merge_size=2,
    temporal_patch_size=2,
    image_mean=[0.5, 0.5, 0.5],
    image_std=[0.5, 0.5, 0.5],
    # llama.cpp mtmd's Qwen3-VL limits: 8 to 4096 merged tokens (one merged token = 32x32 pixels)
    min_pixels=8 * 32 * 32,
    max_pixels=4096 * 32 * 32,
)
FEATURE_EXTRACTOR_DEFAULTS = dict(feature_size=128, sampling_rate=16000, return_attention_mask=True)


def default_image_processor() -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(**IMAGE_PROCESSOR_DEFAULTS)


def default_feature_extractor() -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(**FEATURE_EXTRACTOR_DEFAULTS)


# per-frame pixel budget for video (Qwen3-VL's per-frame cap is 768 merged tokens)
VIDEO_DEFAULTS = dict(
    video_fps=2.0, max_video_frames=64, video_min_pixels=8 * 32 * 32, video_max_pixels=768 * 32 * 32, n_window=50
)


class MediaEncoder:
    """Loads media, runs the image processor / feature extractor and writes the placeholder text.

    Used by both the tokenizer (inline tags) and the processor, so the two give identical inputs.
    """

    def __init__(
        self,
        image_processor=None,
        feature_extractor=None,
        *,
        video_fps=VIDEO_DEFAULTS["video_fps"],
        max_video_frames=VIDEO_DEFAULTS["max_video_frames"],
        video_min_pixels=VIDEO_DEFAULTS["video_min_pixels"],
        video_max_pixels=VIDEO_DEFAULTS["video_max_pixels"],
        n_window=VIDEO_DEFAULTS["n_window"],
    ):
        self.image_processor = image_processor if image_processor is not None else default_image_processor()
        self.feature_extractor = feature_extractor if feature_extractor is not None else default_feature_extractor()
        self.video_fps = float(video_fps)
        self.max_video_frames = int(max_video_frames)
        self.video_min_pixels = int(video_min_pixels)
        self.video_max_pixels = int(video_max_pixels)
        self.n_window = int(n_window)

    @classmethod
    def from_folder(cls, folder) -> "MediaEncoder":
        """Settings from a saved processor (processor_config.json) in ``folder``; defaults when there is none."""
        import json

        config = None
        if folder and os.path.isdir(folder):
            path = os.path.join(folder, "processor_config.json")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    config = json.load(f)
        elif folder:
            from transformers.utils import cached_file

            try:
                path = cached_file(
                    folder,
                    "processor_config.json",
                    _raise_exceptions_for_missing_entries=False,
                    _raise_exceptions_for_connection_errors=False,
                )
            except (OSError, ValueError):  # neither a folder nor a repo id (a tokenizer built in memory): no config
                path = None
            if path:  # a saved processor config must be used or refused, never silently replaced by the defaults
                try:
                    with open(path, encoding="utf-8") as f:
                        config = json.load(f)
                except ValueError as e:
                    raise ValueError(
                        f"{path}: not valid JSON ({e}); save the processor again (processor.save_pretrained(folder))"
                    ) from e
        if not config:
            return cls()
        image = config.get("image_processor")
        audio = config.get("feature_extractor")
        return cls(
            Qwen2VLImageProcessorPil.from_dict(image) if image else None,
            WhisperFeatureExtractor.from_dict(audio) if audio else None,
            **{k: config[k] for k in VIDEO_DEFAULTS if k in config},
        )

    # ---- per modality: features + the text that replaces each placeholder -------------------------------------

    @property
    def merge_length(self) -> int:
        return self.image_processor.merge_size**2

    def encode_images(self, images: list, **kwargs) -> tuple[dict, list[str]]:
        out = self.image_processor(images, return_tensors="pt", **kwargs)
        counts = [int(g.prod()) // self.merge_length for g in out["image_grid_thw"]]
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}, [
            IMAGE_TOKEN * n for n in counts
        ]

    def encode_video(self, video: Video, **kwargs) -> tuple[torch.Tensor, torch.Tensor, str]:
        """One video → (patches [t*h*w, C*T*P*P], grid [t, h, w], placeholder text with timestamps)."""
        frames = video.frames
        sizes = {_frame_size(f) for f in frames}
        if len(sizes) != 1:
            raise ValueError(f"all frames of a video must have the same size, got {sorted(sizes)}")
        size = {"shortest_edge": self.video_min_pixels, "longest_edge": self.video_max_pixels}
        out = self.image_processor(frames, size=size, return_tensors="pt", **kwargs)
        ip = self.image_processor
        tp, p = ip.temporal_patch_size, ip.patch_size
        _, gh, gw = (int(x) for x in out["image_grid_thw"][0])
        n = len(frames)
        # The image processor repeats each frame over the temporal patch; keep one copy per frame and put
        # consecutive frames side by side instead: [n, gh*gw, C, T, P, P] -> [n, gh*gw, C, P, P]
        patches = out["pixel_values"].reshape(n, gh * gw, -1, tp, p, p)[:, :, :, 0]
        times = list(video.times) if video.times else [i / self.video_fps for i in range(n)]
        if pad := -n % tp:  # Qwen3-VL repeats the last frame to fill the last temporal patch
            patches = torch.cat([patches, patches[-1:].expand(pad, -1, -1, -1, -1)])
            times += [times[-1]] * pad
        t = patches.shape[0] // tp
        # [t, T, gh*gw, C, P, P] -> [t, gh*gw, C, T, P, P]: Qwen3-VL's (t, h-block, w-block, mh, mw, C, T, P, P)
        patches = patches.reshape(t, tp, gh * gw, -1, p, p).permute(0, 2, 3, 1, 4, 5).reshape(t * gh * gw, -1)
        frame_tokens = gh * gw // self.merge_length
        text = ""
        for i in range(t):
            # timestamp of a temporal patch: the mean of its first and last frame's time (Qwen3-VL)
            stamp = (times[i * tp] + times[i * tp + tp - 1]) / 2
            text += f"<{stamp:.1f} seconds>" + VISION_START + VIDEO_TOKEN * frame_tokens + VISION_END
        return patches, torch.tensor([t, gh, gw]), text

    def encode_audio(self, clips: list[torch.Tensor]) -> tuple[dict, list[str]]:
        fe = self.feature_extractor
        out = fe(
            [c.numpy() for c in clips],
            sampling_rate=fe.sampling_rate,
            padding="longest",
            truncation=False,
            return_attention_mask=True,
            return_tensors="pt",
        )
        mask = out["attention_mask"]
        counts = _get_feat_extract_output_lengths(mask.sum(-1), self.n_window).tolist()
        # named feature_attention_mask so a merged batch keeps the text attention_mask (as Qwen3-Omni)
        return {"input_features": out["input_features"], "feature_attention_mask": mask}, [
            AUDIO_TOKEN * int(n) for n in counts
        ]

    # ---- text ----------------------------------------------------------------------------------------------------

    def expand(
        self,
        texts: list[str],
        images=None,
        videos=None,
        audio=None,
        *,
        policy=None,
        parse_tags=True,
        sampling_rate=None,
        images_kwargs=None,
    ) -> tuple[list[str], dict]:
        """Expand placeholders and inline tags in ``texts``; return the new texts and the media features.

        Media passed as arguments fill the placeholders (``<|image_pad|>``, ``<|video_pad|>``, ``<|audio_pad|>``)
        in order across the batch; tags bring their own source. Every medium of every prompt is read and its
        header checked (per-item caps, the prompt's totals, the aspect ratio) before any is decoded, and all are
        decoded before any is encoded, so a bad or too costly source fails the whole call early.
        """
        policy = _policy(policy)
        items = self._find_media(texts, images, videos, audio, parse_tags)
        for found in items:
            self._probe_prompt(found, policy, sampling_rate)
        ordered = [item for found in items for item in found]
        for item in ordered:
            item.loaded = item.decode()
        features = self._encode(ordered, images_kwargs)
        return [self._write(text, found) for text, found in zip(texts, items, strict=True)], features

    @staticmethod
    def _find_media(texts, images, videos, audio, parse_tags: bool) -> list:
        """Per text, its media (:class:`_Item`) in order: inline tags and the placeholders the arguments fill."""
        given = {kind: flatten_media(x, kind) for kind, x in (("image", images), ("video", videos), ("audio", audio))}
        used = dict.fromkeys(given, 0)
        items = []
        for text in texts:
            if not isinstance(text, str):
                raise ValueError(f"text must be a string or a list of strings, got {type(text).__name__}")
            found = []
            for m in _ITEM_RE.finditer(text):
                if m.group("tag"):
                    if parse_tags:
                        kind, tag = TAG_KINDS[m.group("tag")], f"<{m.group('tag')}>"
                        found.append(_Item(m.start(), m.end(), kind, m.group("src").strip(), tag, inline=True))
                    continue
                kind, index = m.lastgroup, used[m.lastgroup]
                used[kind] += 1
                media = given[kind][index] if index < len(given[kind]) else None
                found.append(_Item(m.start(), m.end(), kind, media, f"<{kind}> ({kind} input #{index})", inline=False))
            items.append(found)
        for kind, n in used.items():
            if n != len(given[kind]):
                token = PLACEHOLDERS[kind]
                raise MediaError(
                    token,
                    None,
                    f"the text has {n} {token} placeholder(s) but {len(given[kind])} {kind} input(s) were passed. "
                    f"Each {kind} passed needs one placeholder (a chat content part of type {kind!r} writes one); "
                    f"a <{kind}>SRC</{kind}> tag names one inline instead. Placeholders are never typed as text.",
                )
        return items

    def _probe_prompt(self, found: list, policy: MediaPolicy, sampling_rate) -> None:
        """Read and check the media of one prompt against one budget, without decoding; sets each ``decode``."""
        budget = MediaBudget(policy)
        for item in found:  # counted before anything is read
            if isinstance(item.media, SOURCE_TYPES):
                budget.charge(item.tag, item.media, "items", 1)
        for item in found:
            if item.kind == "image":
                probed = probe_image(item.media, policy, item.tag, budget)
            elif item.kind == "video":
                probed = probe_video(item.media, policy, item.tag, budget, self.video_fps, self.max_video_frames)
            else:
                rate = self.feature_extractor.sampling_rate
                probed = probe_audio(item.media, policy, item.tag, budget, rate, sampling_rate)
            if probed.dims:
                _check_aspect_ratio(probed.dims, item.tag, item.media)
            item.decode = probed.decode

    def _encode(self, ordered: list, images_kwargs) -> dict:
        """The features of all media, per modality in order of appearance; sets each item's placeholder text."""
        features = {}
        images = [item for item in ordered if item.kind == "image"]
        if images:
            feats, texts = self.encode_images([item.loaded for item in images], **(images_kwargs or {}))
            features.update(feats)
            for item, text in zip(images, texts, strict=True):
                item.text = text
        videos = [item for item in ordered if item.kind == "video"]
        if videos:
            encoded = [self.encode_video(item.loaded) for item in videos]
            features["pixel_values_videos"] = torch.cat([x[0] for x in encoded])
            features["video_grid_thw"] = torch.stack([x[1] for x in encoded])
            for item, x in zip(videos, encoded, strict=True):
                item.text = x[2]
        clips = [item for item in ordered if item.kind == "audio"]
        if clips:
            feats, texts = self.encode_audio([item.loaded for item in clips])
            features.update(feats)
            for item, text in zip(clips, texts, strict=True):
                item.text = text
        return features

    @staticmethod
    def _write(text: str, found: list) -> str:
        pieces, last = [], 0
        for item in found:
            body = item.text
            if item.inline:  # a tag brings no wrappers, a placeholder keeps its own (video text has one per pair)
                wrap = {"image": (VISION_START, VISION_END), "audio": (AUDIO_START, AUDIO_END)}.get(item.kind)
                body = wrap[0] + body + wrap[1] if wrap else body
            pieces += [text[last : item.start], body]
            last = item.end
        return "".join(pieces) + text[last:]

    @staticmethod
    def check_token_counts(input_ids, texts):
        """The placeholder count in the ids must equal the one in the text (truncation can cut media apart)."""
        for ids, text in zip(input_ids, texts, strict=True):
            ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
            for token, token_id in ((IMAGE_TOKEN, 151655), (VIDEO_TOKEN, 151656), (AUDIO_TOKEN, 151675)):
                if ids.count(token_id) != text.count(token):
                    raise ValueError(
                        f"{token}: the text has {text.count(token)} but the ids have {ids.count(token_id)}; "
                        "truncation (max_length) cut media placeholders. Raise max_length or drop truncation."
                    )


def _frame_size(frame):
    if hasattr(frame, "size") and not hasattr(frame, "shape"):
        return tuple(frame.size[::-1])  # PIL: (w, h)
    return tuple(frame.shape[:2])


# ====================================================================================================================
# Processor
# ====================================================================================================================

_TOKENIZER_KWARGS = {
    "padding",
    "padding_side",
    "truncation",
    "max_length",
    "add_special_tokens",
    "return_attention_mask",
    "pad_to_multiple_of",
    "return_offsets_mapping",
    "return_length",
    "return_special_tokens_mask",
    "return_token_type_ids",
    "verbose",
    "stride",
    "split_special_tokens",
}


class Qwen3MultimodalProcessor(ProcessorMixin):
    """Text + images + video + audio → model inputs for Qwen3-Multimodal.

    ``processor(text=..., images=..., videos=..., audio=..., return_tensors="pt")`` returns ``input_ids``,
    ``attention_mask`` and, as present, ``pixel_values`` / ``image_grid_thw``, ``pixel_values_videos`` /
    ``video_grid_thw``, ``input_features`` / ``feature_attention_mask``. Media passed as arguments fill the
    placeholders of the text in order (a chat template writes one per media part); inline ``<image>SRC</image>``,
    ``<img>``, ``<video>`` and ``<audio>`` tags bring their own source through the media loader.

    Runtime options that are never saved: ``media_policy`` (attribute or per call) for the loader.
    ``media_tags=False`` per call leaves inline tags as plain text; by default the processor follows its tokenizer's
    ``media_tags`` (saved in tokenizer_config.json; default on). Typed placeholders in chat message text are refused
    (see :func:`refuse_media_specials`).
    """

    # saved in processor_config.json beside the image processor and feature extractor settings
    def __init__(
        self,
        image_processor=None,
        feature_extractor=None,
        tokenizer=None,
        chat_template=None,
        video_fps=VIDEO_DEFAULTS["video_fps"],
        max_video_frames=VIDEO_DEFAULTS["max_video_frames"],
        video_min_pixels=VIDEO_DEFAULTS["video_min_pixels"],
        video_max_pixels=VIDEO_DEFAULTS["video_max_pixels"],
        n_window=VIDEO_DEFAULTS["n_window"],
        **kwargs,
    ):
        if tokenizer is None:
            raise ValueError("Qwen3MultimodalProcessor needs a tokenizer")
        image_processor = image_processor if image_processor is not None else default_image_processor()
        feature_extractor = feature_extractor if feature_extractor is not None else default_feature_extractor()
        if chat_template is None:
            chat_template = getattr(tokenizer, "chat_template", None)
        self.video_fps = video_fps
        self.max_video_frames = max_video_frames
        self.video_min_pixels = video_min_pixels
        self.video_max_pixels = video_max_pixels
        self.n_window = n_window
        self.image_token, self.video_token, self.audio_token = IMAGE_TOKEN, VIDEO_TOKEN, AUDIO_TOKEN
        self.media_policy = None
        super().__init__(image_processor, feature_extractor, tokenizer, chat_template=chat_template, **kwargs)

    @property
    def encoder(self) -> MediaEncoder:
        return MediaEncoder(
            self.image_processor,
            self.feature_extractor,
            video_fps=self.video_fps,
            max_video_frames=self.max_video_frames,
            video_min_pixels=self.video_min_pixels,
            video_max_pixels=self.video_max_pixels,
            n_window=self.n_window,
        )

    @property
    def model_input_names(self):
        return [
            "input_ids",
            "attention_mask",
            "pixel_values",
            "image_grid_thw",
            "pixel_values_videos",
            "video_grid_thw",
            "input_features",
            "feature_attention_mask",
        ]

    def __call__(
        self,
        images=None,
        text=None,
        videos=None,
        audio=None,
        *,
        return_tensors=None,
        sampling_rate=None,
        media_policy=None,
        media_tags=None,
        text_kwargs=None,
        images_kwargs=None,
        audio_kwargs=None,
        videos_kwargs=None,
        **kwargs,
    ) -> BatchFeature:
        unknown = set(kwargs) - _TOKENIZER_KWARGS
        if unknown:
            raise TypeError(f"Qwen3MultimodalProcessor got unexpected argument(s): {sorted(unknown)}")
        if audio_kwargs and "sampling_rate" in audio_kwargs:
            sampling_rate = audio_kwargs["sampling_rate"]
        policy = media_policy or self.media_policy
        if media_tags is None:
            media_tags = getattr(self.tokenizer, "media_tags", True)
        if text is None:
            if images is None and videos is None and audio is None:
                raise ValueError("Pass text and/or media to the processor.")
            return self._media_only(images, videos, audio, policy, sampling_rate, images_kwargs, return_tensors)
        batched = not isinstance(text, str)
        texts = list(text) if batched else [text]
        texts, features = self.encoder.expand(
            texts,
            images,
            videos,
            audio,
            policy=policy,
            parse_tags=media_tags,
            sampling_rate=sampling_rate,
            images_kwargs=images_kwargs,
        )
        tok_kwargs = {**(text_kwargs or {}), **kwargs}
        if len(texts) > 1:
            tok_kwargs.setdefault("padding", True)
            tok_kwargs.setdefault("padding_side", "left")  # batched generation continues at the right edge
        encoding = self.tokenizer(texts, media_tags=False, **tok_kwargs)
        self.encoder.check_token_counts(encoding["input_ids"], texts)
        # one prompt: a batch of one as tensors, plain lists without (as a tokenizer returns them)
        data = {k: v[0] for k, v in encoding.items()} if not batched and return_tensors is None else dict(encoding)
        data.update(features)
        return BatchFeature(data, tensor_type=return_tensors)

    def _media_only(self, images, videos, audio, policy, sampling_rate, images_kwargs, return_tensors):
        # no text: the features alone (placeholders are the caller's business)
        n = {k: len(flatten_media(v, k)) for k, v in (("image", images), ("video", videos), ("audio", audio))}
        text = IMAGE_TOKEN * n["image"] + VIDEO_TOKEN * n["video"] + AUDIO_TOKEN * n["audio"]
        _, features = self.encoder.expand(
            [text],
            images,
            videos,
            audio,
            policy=policy,
            parse_tags=False,
            sampling_rate=sampling_rate,
            images_kwargs=images_kwargs,
        )
        return BatchFeature(features, tensor_type=return_tensors)

    # ---- chat ----------------------------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        conversation,
        chat_template=None,
        tools=None,
        documents=None,
        add_generation_prompt=False,
        continue_final_message=False,
        tokenize=False,
        return_tensors=None,
        return_dict=False,
        processor_kwargs=None,
        media_policy=None,
        **kwargs,
    ):
        """Render a chat (or a batch of chats) whose message content may hold media parts, and optionally tokenize.

        Media parts: ``{"type": "image", "image" | "url" | "path": SRC-or-PIL}``, ``{"type": "image_url",
        "image_url": {"url": SRC}}``, ``{"type": "video", "video" | "url" | "path": SRC-or-frames}``,
        ``{"type": "audio", "audio" | "url" | "path": SRC-or-array}``, ``{"type": "input_audio", "input_audio":
        {"data": BASE64, "format": "wav"}}``. String sources go through the media loader. With ``tokenize=True``
        returns the ids (``return_dict=True``: all model inputs). Extra keyword arguments reach the template
        (e.g. ``enable_thinking``); processor arguments go in ``processor_kwargs``.
        """
        if return_tensors == "auto":
            return_tensors = None
        processor_kwargs = dict(processor_kwargs or {})
        for key in list(kwargs):  # tokenizer/processor options given at the top level
            if key in _TOKENIZER_KWARGS or key in ("sampling_rate", "media_tags"):
                processor_kwargs[key] = kwargs.pop(key)
        batched = (
            isinstance(conversation, (list, tuple))
            and bool(conversation)
            and (isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages"))
        )
        conversations = list(conversation) if batched else [conversation]
        conversations = [c.messages if hasattr(c, "messages") else c for c in conversations]
        refuse_specials_in_chat(conversations)  # also done by our tokenizer's template; the tokenizer may be another
        media = {"image": [], "video": [], "audio": []}
        rendered_convs = []
        for conv in conversations:
            new_conv = []
            for message in conv:
                message = dict(message)
                content = message.get("content")
                if isinstance(content, (list, tuple)):
                    parts = []
                    for part in content:
                        kind, source = _media_part(part)
                        if kind is not None:
                            media[kind].append(source)
                            part = {"type": kind}
                        parts.append(part)
                    message["content"] = parts
                new_conv.append(message)
            rendered_convs.append(new_conv)
        template = chat_template or self.chat_template
        prompts = self.tokenizer.apply_chat_template(
            rendered_convs,
            chat_template=template,
            tools=tools,
            documents=documents,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tokenize=False,
            **kwargs,
        )
        if not tokenize:
            return prompts if batched else prompts[0]
        processor_kwargs.setdefault("add_special_tokens", False)  # the template writes every special token
        out = self(
            text=prompts if batched else prompts[0],
            images=media["image"] or None,
            videos=media["video"] or None,
            audio=media["audio"] or None,
            return_tensors=return_tensors,
            media_policy=media_policy,
            **processor_kwargs,
        )
        return out if return_dict else out["input_ids"]

    def post_process_image_text_to_text(
        self, generated_outputs, skip_special_tokens=True, clean_up_tokenization_spaces=False, **kwargs
    ):
        return self.tokenizer.batch_decode(
            generated_outputs,
            skip_special_tokens=skip_special_tokens,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            **kwargs,
        )


def _media_part(part):
    """(kind, source) of a chat content part, or (None, None) for text."""
    if not isinstance(part, dict):
        return None, None
    kind = part.get("type")
    if kind == "image_url":
        url = part.get("image_url")
        return "image", url.get("url") if isinstance(url, dict) else url
    if kind == "input_audio":
        data = part.get("input_audio") or {}
        if not isinstance(data, dict) or not isinstance(data.get("data"), str):
            raise ValueError("an input_audio part needs {'data': BASE64, 'format': ...}")
        return "audio", f"data:audio/{data.get('format', 'wav')};base64,{data['data']}"
    if kind not in ("image", "video", "audio"):
        return None, None
    for key in (kind, "url", "path"):
        if part.get(key) is not None:
            return kind, part[key]
    if kind == "image" and isinstance(part.get("base64"), str):
        return kind, "data:image;base64," + part["base64"]
    raise ValueError(f"a {kind} content part needs a source: one of {kind!r}, 'url' or 'path'")


__all__ = [
    "MediaEncoder",
    "MediaError",
    "MediaPolicy",
    "Qwen3MultimodalProcessor",
    "Qwen3MultimodalTokenizer",
    "Video",
    "load_audio",
    "load_image",
    "load_video",
    "parse_media_tags",
    "read_source",
]
