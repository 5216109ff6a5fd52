"""The Qwen3-Multimodal processor: media tags and placeholders → model inputs (Hub file).

Imports only stdlib, torch and transformers, and its siblings with ``from .x import y``.

- Images: transformers' ``Qwen2VLImageProcessorPil`` configured as Qwen3-VL (patch 16, merge 2, temporal patch 2,
  mean/std 0.5) with llama.cpp mtmd's Qwen3-VL limits (8 to 4096 merged tokens per image). Audio: transformers'
  ``WhisperFeatureExtractor`` (128 mel bins, 16 kHz); token counts from Qwen3-Omni's
  ``_get_feat_extract_output_lengths``. We write no resizing or mel code.
- Video without torchvision: sized as Qwen3-VL's video processor sizes a clip (its ``smart_resize``, with the pixel
  budget ``video_min_pixels`` / ``video_max_pixels`` over all sampled frames), then each frame is normalised by the
  same image processor; only the grouping of frame pairs into temporal patches is ours (a reshape, in Qwen3-VL's
  patch order). Each frame pair is preceded by its timestamp text (``<0.2 seconds>``) as Qwen3-VL's processor
  writes it. Video files are sampled by Qwen3-VL's own ``sample_frames`` (see the media loader). So grids, token
  counts and timestamp text equal Qwen3-VL's for the same clip and settings.
- The processor's own settings (video sampling and budgets, the audio window) live in :class:`MediaSettings`.
- Media placeholders typed into message text are refused (:func:`refuse_media_specials`).

Where we differ from the native processors:

- Qwen3-VL resizes video frames with torchvision (bicubic, antialiased); we resize with Pillow's bicubic
  (transformers' ``resize``): the same sizes, so the same grids and token counts; the pixel values differ by the
  two filters (not measured: torchvision 0.28 from PyPI does not load beside torch's CPU build).
- A one-frame clip is padded to one temporal patch (Qwen3-VL's ``smart_resize`` refuses it).
- Frames given as a list or array (not a file) are taken as sampled at ``video_fps`` for their timestamps; Qwen3-VL
  assumes 24 fps without metadata.
- Qwen3-VL's ``cap_pixels_per_frame`` (off by default in transformers 5.24) is not offered.
- Images past the image processor's 200:1 aspect-ratio limit are refused with a MediaError before processing
  (transformers raises a plain ValueError).
"""

import os
import re
from dataclasses import asdict, dataclass, fields

import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import _get_feat_extract_output_lengths
from transformers.models.whisper.feature_extraction_whisper import WhisperFeatureExtractor
from transformers.processing_utils import ProcessorMixin

from .media_qwen3_multimodal import (
    SOURCE_TYPES,
    MediaBudget,
    MediaError,
    MediaPolicy,
    Video,
    as_policy,
    load_audio,
    load_image,
    load_video,
    probe_audio,
    probe_image,
    probe_video,
    read_source,
)
from .tokens_qwen3_multimodal import (
    AUDIO_END,
    AUDIO_START,
    AUDIO_TOKEN,
    AUDIO_TOKEN_ID,
    IMAGE_TOKEN,
    IMAGE_TOKEN_ID,
    VIDEO_TOKEN,
    VIDEO_TOKEN_ID,
    VISION_END,
    VISION_START,
)

# ====================================================================================================================

PLACEHOLDERS = {"image": IMAGE_TOKEN, "video": VIDEO_TOKEN, "audio": AUDIO_TOKEN}
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


def is_frame(x) -> bool:
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
    if kind == "image" and is_frame(items):
        return [items]
    if isinstance(items, (list, tuple)):
        if kind == "video" and items and all(is_frame(x) for x in items):
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


@dataclass(frozen=True)
class _Item:
    """One medium of a text: where it sits, its kind, its source (or the decoded medium passed as an argument)."""

    start: int
    end: int
    kind: str  # image / video / audio
    media: object
    tag: str  # names it in errors: "<img>" for a tag, "<image> (image input #0)" for an argument
    inline: bool  # an inline tag (wrapped in start/end tokens when expanded), not a placeholder


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


@dataclass(frozen=True)
class MediaSettings:
    """The processor's own settings, beside its image processor and feature extractor. Saved in
    processor_config.json; the one home of their defaults, read by the processor's ``__init__``, by
    :class:`MediaEncoder` and by :meth:`MediaEncoder.from_folder`.

    The video fields are Qwen3VLVideoProcessor's, under the names this processor has always saved: ``video_fps`` is
    its ``fps``, ``min_video_frames`` / ``max_video_frames`` its ``min_frames`` / ``max_frames``, and
    ``video_min_pixels`` / ``video_max_pixels`` its ``size["shortest_edge"]`` / ``size["longest_edge"]``: pixel
    budgets over the whole clip (all sampled frames), not per frame. ``n_window`` is the audio encoder's window
    (Qwen3-Omni's), which sets the audio token count.
    """

    video_fps: float = 2.0
    min_video_frames: int = 4
    max_video_frames: int = 64  # 768 in Qwen3-VL; 64 keeps one clip's frames at most 32 temporal patches
    video_min_pixels: int = 128 * 32 * 32  # Qwen3VLVideoProcessor's class defaults
    video_max_pixels: int = 768 * 32 * 32
    n_window: int = 50

    @classmethod
    def from_dict(cls, config: dict) -> "MediaSettings":
        """The known keys of a saved config (or of keyword arguments); ``None`` and other keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names and v is not None})


class MediaEncoder:
    """Loads media, runs the image processor / feature extractor and writes the placeholder text.

    Used by both the tokenizer (inline tags) and the processor, so the two give identical inputs.
    """

    def __init__(self, image_processor=None, feature_extractor=None, settings: MediaSettings | None = None):
        self.image_processor = image_processor if image_processor is not None else default_image_processor()
        self.feature_extractor = feature_extractor if feature_extractor is not None else default_feature_extractor()
        self.settings = settings if settings is not None else MediaSettings()

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
            MediaSettings.from_dict(config),
        )

    # ---- per modality: features + the text that replaces each placeholder -------------------------------------

    @property
    def _video_sampling(self) -> tuple:
        """``probe_video``'s (fps, max_frames, min_frames)."""
        return self.settings.video_fps, self.settings.max_video_frames, self.settings.min_video_frames

    @property
    def merge_length(self) -> int:
        return self.image_processor.merge_size**2

    def encode_images(self, images: list, **kwargs) -> tuple[dict, list[str]]:
        out = self.image_processor(images, return_tensors="pt", **kwargs)
        counts = [int(g.prod()) // self.merge_length for g in out["image_grid_thw"]]
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}, [
            IMAGE_TOKEN * n for n in counts
        ]

    def encode_video(self, video: Video) -> tuple[torch.Tensor, torch.Tensor, str]:
        """One video → (patches [t*h*w, C*T*P*P], grid [t, h, w], placeholder text with timestamps).

        Sized as Qwen3-VL's video processor sizes a clip: one size for all frames, from its ``smart_resize`` with
        the pixel budget of the whole clip; then each frame is normalised by the image processor.
        """
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize  # slow import: video only

        frames, ip, settings = video.frames, self.image_processor, self.settings
        sizes = {_frame_size(f) for f in frames}
        if len(sizes) != 1:
            raise ValueError(f"all frames of a video must have the same size, got {sorted(sizes)}")
        tp, p = ip.temporal_patch_size, ip.patch_size
        n = len(frames)
        # Qwen3-VL's smart_resize refuses fewer frames than one temporal patch; we pad a single frame (below) instead
        height, width = smart_resize(
            max(n, tp),
            *sizes.pop(),
            temporal_factor=tp,
            factor=p * ip.merge_size,
            min_pixels=settings.video_min_pixels,
            max_pixels=settings.video_max_pixels,
        )
        out = ip([_resize_frame(f, height, width, ip.resample) for f in frames], do_resize=False, return_tensors="pt")
        gh, gw = height // p, width // p
        # The image processor repeats each frame over the temporal patch; keep one copy per frame and put
        # consecutive frames side by side instead: [n, gh*gw, C, T, P, P] -> [n, gh*gw, C, P, P]
        patches = out["pixel_values"].reshape(n, gh * gw, -1, tp, p, p)[:, :, :, 0]
        times = list(video.times) if video.times else [i / settings.video_fps for i in range(n)]
        if pad := -n % tp:  # Qwen3-VL repeats the last frame to fill the last temporal patch
            patches = torch.cat([patches, patches[-1:].expand(pad, -1, -1, -1, -1)])
            times += [times[-1]] * pad
        t = patches.shape[0] // tp
        # [t, T, gh*gw, C, P, P] -> [t, gh*gw, C, T, P, P]: Qwen3-VL's (t, h-block, w-block, mh, mw, C, T, P, P)
        patches = patches.reshape(t, tp, gh * gw, -1, p, p).permute(0, 2, 3, 1, 4, 5).reshape(t * gh * gw, -1)
        block = VISION_START + VIDEO_TOKEN * (gh * gw // self.merge_length) + VISION_END
        # timestamp of a temporal patch: the mean of its first and last frame's time (Qwen3-VL)
        stamps = [(times[i * tp] + times[i * tp + tp - 1]) / 2 for i in range(t)]
        return patches, torch.tensor([t, gh, gw]), "".join(f"<{stamp:.1f} seconds>" + block for stamp in stamps)

    def encode_videos(self, videos: list[Video]) -> tuple[dict, list[str]]:
        encoded = [self.encode_video(video) for video in videos]
        features = {
            "pixel_values_videos": torch.cat([patches for patches, _, _ in encoded]),
            "video_grid_thw": torch.stack([grid for _, grid, _ in encoded]),
        }
        return features, [text for _, _, text in encoded]

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
        counts = _get_feat_extract_output_lengths(mask.sum(-1), self.settings.n_window).tolist()
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
        policy = as_policy(policy)
        found = self._find_media(texts, images, videos, audio, parse_tags)  # per text, its media in order
        decoders = [self._probe_prompt(items, policy, sampling_rate) for items in found]  # read + checked
        loaded = [decode() for per_text in decoders for decode in per_text]
        features, bodies = self._encode([item for items in found for item in items], loaded, images_kwargs)
        bodies = iter(bodies)
        out = [
            self._write(text, items, [next(bodies) for _ in items]) for text, items in zip(texts, found, strict=True)
        ]
        return out, features

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

    def _probe_prompt(self, found: list, policy: MediaPolicy, sampling_rate) -> list:
        """Read and check the media of one prompt against one budget, without decoding; their decoders."""
        budget, decoders = MediaBudget(policy), []
        for item in found:  # counted before anything is read
            if isinstance(item.media, SOURCE_TYPES):
                budget.charge(item.tag, item.media, "items", 1)
        for item in found:
            if item.kind == "image":
                probed = probe_image(item.media, policy, item.tag, budget)
            elif item.kind == "video":
                probed = probe_video(item.media, policy, item.tag, budget, *self._video_sampling)
            else:
                rate = self.feature_extractor.sampling_rate
                probed = probe_audio(item.media, policy, item.tag, budget, rate, sampling_rate)
            if probed.dims:
                _check_aspect_ratio(probed.dims, item.tag, item.media)
            decoders.append(probed.decode)
        return decoders

    def _encode(self, ordered: list, loaded: list, images_kwargs) -> tuple[dict, list[str]]:
        """The features of all media (per modality, in order of appearance) and the placeholder text of each."""
        features, bodies = {}, [""] * len(ordered)
        for kind in ("image", "video", "audio"):
            where = [i for i, item in enumerate(ordered) if item.kind == kind]
            if not where:
                continue
            media = [loaded[i] for i in where]
            if kind == "image":
                feats, texts = self.encode_images(media, **(images_kwargs or {}))
            elif kind == "video":
                feats, texts = self.encode_videos(media)
            else:
                feats, texts = self.encode_audio(media)
            features.update(feats)
            for i, text in zip(where, texts, strict=True):
                bodies[i] = text
        return features, bodies

    @staticmethod
    def _write(text: str, found: list, bodies: list) -> str:
        """``text`` with each medium's span replaced by its placeholder text."""
        pieces, last = [], 0
        for item, body in zip(found, bodies, strict=True):
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
            for token, token_id in (
                (IMAGE_TOKEN, IMAGE_TOKEN_ID),
                (VIDEO_TOKEN, VIDEO_TOKEN_ID),
                (AUDIO_TOKEN, AUDIO_TOKEN_ID),
            ):
                if ids.count(token_id) != text.count(token):
                    raise ValueError(
                        f"{token}: the text has {text.count(token)} but the ids have {ids.count(token_id)}; "
                        "truncation (max_length) cut media placeholders. Raise max_length or drop truncation."
                    )


def _resize_frame(frame, height: int, width: int, resample):
    """One video frame as an RGB array [H, W, 3] of exactly ``height`` x ``width``, resized with Pillow.

    Qwen3-VL resizes video with torchvision (bicubic, antialiased); Pillow's bicubic gives the same sizes (so the
    same grids and token counts), and pixel values that differ by as much as the two filters do.
    """
    from transformers.image_transforms import resize
    from transformers.image_utils import ChannelDimension, to_numpy_array

    array = to_numpy_array(frame.convert("RGB") if hasattr(frame, "convert") else frame)
    if tuple(array.shape[:2]) == (height, width):
        return array
    return resize(array, (height, width), resample=resample, input_data_format=ChannelDimension.LAST)


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
        # transformers saves exactly the __init__ parameters (and reads them back), so each setting is named here;
        # None means MediaSettings' default
        video_fps=None,
        min_video_frames=None,
        max_video_frames=None,
        video_min_pixels=None,
        video_max_pixels=None,
        n_window=None,
        **kwargs,
    ):
        if tokenizer is None:
            raise ValueError("Qwen3MultimodalProcessor needs a tokenizer")
        image_processor = image_processor if image_processor is not None else default_image_processor()
        feature_extractor = feature_extractor if feature_extractor is not None else default_feature_extractor()
        if chat_template is None:
            chat_template = getattr(tokenizer, "chat_template", None)
        given = dict(video_fps=video_fps, min_video_frames=min_video_frames, max_video_frames=max_video_frames)
        given.update(video_min_pixels=video_min_pixels, video_max_pixels=video_max_pixels, n_window=n_window)
        self.__dict__.update(asdict(MediaSettings.from_dict(given)))  # attributes, so that to_dict saves them
        self.image_token, self.video_token, self.audio_token = IMAGE_TOKEN, VIDEO_TOKEN, AUDIO_TOKEN
        self.media_policy = None
        super().__init__(image_processor, feature_extractor, tokenizer, chat_template=chat_template, **kwargs)

    @property
    def settings(self) -> MediaSettings:
        return MediaSettings.from_dict(self.__dict__)

    @property
    def encoder(self) -> MediaEncoder:
        return MediaEncoder(self.image_processor, self.feature_extractor, self.settings)

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
        conversations, batched = _as_chats(conversation)
        refuse_specials_in_chat(conversations)  # also done by our tokenizer's template; the tokenizer may be another
        rendered_convs, media = _take_media_parts(conversations)
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


def _as_chats(conversation) -> tuple[list, bool]:
    """(the chats as lists of messages, whether a batch was given) for one chat or a batch of chats."""
    batched = (
        isinstance(conversation, (list, tuple))
        and bool(conversation)
        and (isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages"))
    )
    chats = list(conversation) if batched else [conversation]
    return [c.messages if hasattr(c, "messages") else c for c in chats], batched


def _take_media_parts(conversations: list) -> tuple[list, dict]:
    """The chats with each media part replaced by a bare ``{"type": kind}`` (the template writes its placeholder),
    and the media sources per kind, in order of appearance. The caller's messages are not modified."""
    media = {"image": [], "video": [], "audio": []}

    def strip(part):
        kind, source = _media_part(part)
        if kind is None:
            return part
        media[kind].append(source)
        return {"type": kind}

    rendered = []
    for conv in conversations:
        messages = []
        for message in conv:
            content = message.get("content")
            if isinstance(content, (list, tuple)):
                message = {**message, "content": [strip(part) for part in content]}
            messages.append(message)
        rendered.append(messages)
    return rendered, media


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
    "Video",
    "load_audio",
    "load_image",
    "load_video",
    "parse_media_tags",
    "read_source",
]
