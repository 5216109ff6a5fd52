"""The media loader of Qwen3-Multimodal: every image, video or audio source named in text goes through here (Hub file).

Imports only stdlib, torch and transformers (Pillow, soundfile, soxr and PyAV inside the functions that need them, so
a text-only user never needs them; a missing package gives a clear error naming it).

One loader (:func:`load_image`, :func:`load_video`, :func:`load_audio`, all through :func:`read_source`) serves the
tokenizer's inline tags, the processor, the chat template and the Pipeline. Sources named in text are untrusted:
network off unless enabled, local files only below allowed roots, byte / pixel / duration caps per item and in
total per prompt (checked from headers before anything is decoded), and every failure is one :class:`MediaError`
naming the tag and the reason, never echoing a file's contents. See :class:`MediaPolicy`.

Where we differ from transformers' loaders:

- Sources are never handed to transformers' ``load_image`` / ``load_audio`` (they fetch any URL, follow any
  redirect, have no size caps and open any path).
- Audio is downmixed to mono and resampled to 16 kHz with soxr ("HQ"), the resampler librosa uses; transformers'
  ``load_audio`` resamples with librosa too, so the two agree up to soxr's quality setting.
- Audio with non-finite samples or samples beyond ±16 is refused (transformers computes NaN features for it).
- Video files (mp4/mov through FFmpeg's mov demuxer, webm/mkv through its matroska demuxer, chosen from the file's
  signature so FFmpeg never probes with the others) are decoded with PyAV from the bytes in memory, as
  transformers' ``read_video_pyav`` decodes them, with Qwen3-VL's frame sampling; but frame count, size and
  duration are checked from the container header first. WebM/MKV headers carry no frame count: it is estimated as
  duration x frame rate. A stream shorter than its header repeats its last decoded frame.
- Multi-frame images (animated GIF / WebP / PNG, multi-page TIFF) are videos too (Pillow), sampled at ``fps`` from
  their frame durations; transformers does not read them as video.
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
    max_audio_seconds: longest audio clip.  max_video_frames: most frames in one video file (a video file is decoded
    up to its last sampled frame, so this bounds the decoding work).  max_video_pixels: pixels of all those frames.
    max_video_seconds: longest video file.

    Totals for all the sources of one prompt (each text of a batch has its own), checked from file headers before
    anything is decoded, because small files can claim large sizes (an 8 KB 1-bit PNG decodes to 8000x8000 RGB):
    max_items: sources named.  max_total_bytes: bytes read.  max_total_pixels: image pixels plus the pixels of the
    video frames kept (sampled).  max_total_audio_seconds: audio duration. Media passed already decoded (PIL images,
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
    max_video_seconds: float = 3600.0
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


def as_policy(policy) -> MediaPolicy:
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
    policy = as_policy(policy)
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
    policy = as_policy(policy)
    return probe_image(source, policy, tag, budget or MediaBudget(policy)).decode()


@dataclass
class Video:
    """Decoded frames (PIL images or HWC arrays) and the time in seconds of each frame."""

    frames: list
    times: list = field(default_factory=list)


def probe_video(
    source,
    policy: MediaPolicy,
    tag: str,
    budget: MediaBudget,
    fps: float = 2.0,
    max_frames: int = 64,
    min_frames: int = 4,
) -> _Probed:
    if isinstance(source, Video) or not isinstance(source, SOURCE_TYPES):
        video = _given_video(source, tag, fps, max_frames)
        return _Probed(lambda: video, _dims(video.frames[0]) if video.frames else ())
    data = _source_bytes(source, policy, tag, budget)
    demuxer = _container_format(data)
    if demuxer is not None:
        return _probe_container(data, demuxer, policy, tag, budget, source, (fps, min_frames, max_frames))
    image = _open_image(data, policy, tag, source)
    n_frames = getattr(image, "n_frames", 1)
    _check_video_caps(n_frames, None, image.size, policy, tag, source)
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
    min_frames: int = 4,
) -> Video:
    """Frames of a video file (mp4/mov, webm/mkv: PyAV) or of a multi-frame image (animated GIF / WebP / PNG,
    multi-page TIFF: Pillow).

    Video files are sampled as Qwen3-VL's video processor samples them (``fps`` frames per second of the clip,
    between ``min_frames`` and ``max_frames``, evenly spread); multi-frame images at ``fps`` from their frame
    durations. Non-file inputs pass through: a ``Video``, a list of frames, or an array [T, H, W, 3] (taken as
    sampled at ``fps``). At most ``max_frames`` frames are kept (uniformly).
    """
    policy = as_policy(policy)
    return probe_video(source, policy, tag, budget or MediaBudget(policy), fps, max_frames, min_frames).decode()


def _check_video_caps(n_frames: int, seconds, dims: tuple, policy: MediaPolicy, tag, source) -> None:
    """The per-file caps, from the header: frames, pixels of all frames, and (for containers) duration."""
    if n_frames > policy.max_video_frames:
        raise MediaError(
            tag,
            source,
            f"video has {n_frames} frames, over the {policy.max_video_frames}-frame cap; "
            "raise MediaPolicy.max_video_frames to allow more",
        )
    if n_frames * dims[0] * dims[1] > policy.max_video_pixels:
        raise MediaError(
            tag,
            source,
            f"video has {n_frames} frames of {dims[0]}x{dims[1]}, more than {policy.max_video_pixels} pixels in all; "
            "raise MediaPolicy.max_video_pixels to allow more",
        )
    if seconds is not None and seconds > policy.max_video_seconds:
        raise MediaError(
            tag,
            source,
            f"video is {seconds:.1f} s, over the {policy.max_video_seconds} s cap; "
            "raise MediaPolicy.max_video_seconds to allow more",
        )


# Container signatures -> the one FFmpeg demuxer we let read them. Naming the demuxer means FFmpeg never probes the
# bytes with the others (a playlist demuxer such as hls or concat would open the files and URLs the bytes name).
_CONTAINERS = (
    (4, b"ftyp", "mov"),  # ISO base media: mp4, mov, m4v
    (0, b"\x1a\x45\xdf\xa3", "matroska"),  # EBML: mkv, webm
)


def _container_format(data: bytes):
    for offset, magic, demuxer in _CONTAINERS:
        if data[offset : offset + len(magic)] == magic:
            return demuxer
    return None


def _av(tag, source):
    try:
        import av
    except ImportError:
        raise MediaError(tag, source, "decoding video files needs PyAV: pip install av") from None
    return av


def _container_header(data: bytes, demuxer: str, tag, source) -> tuple:
    """(frame count, frames per second, (width, height)) of the first video stream, from the container header."""
    av = _av(tag, source)
    try:
        with av.open(io.BytesIO(data), format=demuxer) as container:
            if not container.streams.video:
                raise MediaError(tag, source, "the file has no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            n_frames, dims = int(stream.frames or 0), (stream.width, stream.height)
            if stream.duration is not None and stream.time_base:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = (container.duration or 0) / av.time_base
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001 - FFmpeg reports malformed data through several types
        raise MediaError(tag, source, f"cannot decode video ({_detail(e)})") from None
    if rate <= 0 or min(dims) < 1:
        raise MediaError(tag, source, "the video header gives no frame rate or frame size")
    if n_frames <= 0:  # Matroska/WebM headers carry the duration only
        n_frames = round(seconds * rate)
    if n_frames <= 0:
        raise MediaError(tag, source, "the video header gives neither a frame count nor a duration")
    return n_frames, rate, dims


def _sample_indices(n_frames: int, rate: float, fps: float, min_frames: int, max_frames: int) -> list:
    """The frames Qwen3-VL's video processor keeps: its own ``sample_frames`` (imported here: the import is slow
    and only video files need it)."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    sampler = Qwen3VLVideoProcessor(fps=fps, min_frames=min_frames, max_frames=max_frames)
    return sampler.sample_frames(VideoMetadata(total_num_frames=n_frames, fps=rate)).tolist()


def _probe_container(data: bytes, demuxer: str, policy, tag, budget, source, sampling: tuple) -> _Probed:
    n_frames, rate, dims = _container_header(data, demuxer, tag, source)
    _check_video_caps(n_frames, n_frames / rate, dims, policy, tag, source)
    indices = _sample_indices(n_frames, rate, *sampling)
    budget.charge(tag, source, "pixels", len(indices) * dims[0] * dims[1])
    return _Probed(lambda: _decode_container(data, demuxer, indices, rate, dims, tag, source), dims)


def _decode_container(data: bytes, demuxer: str, indices: list, rate: float, dims: tuple, tag, source) -> Video:
    """The frames at ``indices`` as RGB arrays [H, W, 3], as transformers' ``read_video_pyav`` decodes them: every
    frame up to the last one wanted (the header's frame count and size were checked; frames that disagree with the
    header are refused). A stream shorter than its header repeats its last frame."""
    av, wanted, frames = _av(tag, source), set(indices), {}
    try:
        with av.open(io.BytesIO(data), format=demuxer) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index > indices[-1]:
                    break
                if (frame.width, frame.height) != dims:
                    raise MediaError(tag, source, f"a frame is {frame.width}x{frame.height}, not {dims[0]}x{dims[1]}")
                if index in wanted:
                    frames[index] = frame.to_ndarray(format="rgb24")
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001 - FFmpeg reports malformed data through several types
        raise MediaError(tag, source, f"cannot decode video ({_detail(e)})") from None
    if not frames:
        raise MediaError(tag, source, "the video has no decodable frames")
    out, last = [], frames[min(frames)]
    for index in indices:
        last = frames.get(index, last)
        out.append(last)
    return Video(out, [index / rate for index in indices])


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


def resample(audio: torch.Tensor, rate: int, target: int, tag: str = "<audio>", source=None) -> torch.Tensor:
    """Band-limited resampling with soxr (librosa's default resampler), quality "HQ".

    Its anti-alias filter removes what lies above the new Nyquist frequency instead of folding it back: an 11 kHz
    tone in 48 kHz audio comes out of a 16 kHz resample attenuated by more than 100 dB, where linear interpolation
    (what we used before) left it at about -11 dB as a 5 kHz tone the mel front end would hear.
    """
    if rate == target or audio.numel() == 0:
        return audio
    try:
        import soxr
    except ImportError:
        raise MediaError(
            tag, source, f"audio at {rate} Hz must be resampled to {target} Hz, which needs soxr: pip install soxr"
        ) from None
    out = soxr.resample(audio.contiguous().numpy(), rate, target, quality="HQ")
    return torch.from_numpy(out).to(audio.dtype)


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
    audio = resample(audio, rate, sampling_rate, tag, source)
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
    policy = as_policy(policy)
    return probe_audio(source, policy, tag, budget or MediaBudget(policy), sampling_rate, source_rate).decode()


# ====================================================================================================================
# Tags and placeholders in text
