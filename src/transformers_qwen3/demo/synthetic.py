"""Synthetic image + audio question-answering data for the project's demo model.

No real weights or data sets can be downloaded here, so the demo model learns a task the project builds itself.
The task is designed to be learnable by a tiny model (hidden 256, 2-4 layers, small towers) in minutes on a CPU:

* **Images** (default 64x64, always a multiple of 32 so that patch 16 x spatial-merge 2 tiles it exactly, which
  cross-runtime parity with llama.cpp needs): 1-4 filled shapes of ONE type (circle, square, triangle) and ONE
  colour from a small palette of well separated hues, on a plain background. No anti-aliasing, so every pixel is
  either background or an exact palette colour. One shape sits at a named position (left/right/top/bottom/center);
  two to four shapes sit one per quadrant cell, never touching, so counting is unambiguous.
* **Audio** (16 kHz mono): 1-4 beeps of ONE pitch class (low/medium/high around 300/800/2000 Hz, +-5 %) in a clip of
  1, 2 or 3 s, beeps spread evenly over the clip with gaps of at least ~80 ms, plus faint white noise.
* **Questions**: one fixed wording per question type, single-word lowercase answers that are one token each in the
  Qwen3 tokenizer ("red", "three", "triangle", "high", ...). Numbers are spelled as words ("one" .. "four").

Every sample is a pure function of ``(seed, split, index)``: random access, no state, so training code can build
samples on the fly without disk I/O (:class:`SyntheticSplit`). The split a sample may land in is decided by a hash
of its seed and *media content* (not its question), so train / validation / test never share an image or a clip,
and the test set for a seed does not change when ``n_train`` changes.

Deviations from "just write float WAV": clips are stored as 16-bit PCM. libsndfile writes a PEAK chunk with a
wall-clock timestamp into float WAV files, which would break byte-identical output. The in-memory arrays are
quantised to the same 16-bit grid, so ``soundfile.read(path, dtype="float32")`` returns exactly what
:func:`render_audio` returns.

CLI: ``transformers-qwen3 demo synthetic OUT --n-train 2000 --n-val 200 --n-test 200 --seed 0``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image, ImageDraw

from ..errors import UserError
from ..outputs import atomic_folder

__all__ = [
    "ANSWERS",
    "AUDIO_TASKS",
    "IMAGE_TASKS",
    "KINDS",
    "PALETTE",
    "PITCHES",
    "SAMPLE_RATE",
    "SPLITS",
    "AudioSpec",
    "ImageSpec",
    "Sample",
    "SyntheticSplit",
    "add_arguments",
    "make_dataset",
    "make_sample",
    "render_audio",
    "render_image",
    "run",
]

FORMAT_VERSION = 1
KINDS = ("image", "audio")
SPLITS = ("train", "validation", "test")
SPLIT_FILES = {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}
# Share of the hash space each split owns. Held-out splits are small; train takes the rest.
_SPLIT_RANGES = {"test": (0.0, 0.1), "validation": (0.1, 0.2), "train": (0.2, 1.0)}
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}

# ---------------------------------------------------------------------------------------------------------------
# Vocabulary of the task
# ---------------------------------------------------------------------------------------------------------------

# Hues spaced >= 45 degrees apart, saturated, none close to a neutral background.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "yellow": (235, 200, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 180),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom", "center")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
MAX_COUNT = 4
# Pitch classes, roughly 1.3 octaves apart: trivially separable on a mel spectrogram.
PITCHES: dict[str, float] = {"low": 300.0, "medium": 800.0, "high": 2000.0}
DURATIONS = (1.0, 2.0, 3.0)
SAMPLE_RATE = 16000

IMAGE_TASKS = ("colour", "shape", "count", "position")
AUDIO_TASKS = ("count", "pitch", "duration")
# Defaults for the demo: the clip-length question is left out because it needs the model to measure sequence length,
# which is the hardest cue for a tiny model and not needed to show the audio path working.
DEFAULT_IMAGE_TASKS = IMAGE_TASKS
DEFAULT_AUDIO_TASKS = ("count", "pitch")

# Every answer each task can give; one Qwen3 token each (checked by tests/test_synthetic.py).
ANSWERS: dict[str, tuple[str, ...]] = {
    "image/colour": tuple(PALETTE),
    "image/shape": SHAPES,
    "image/count": NUMBER_WORDS[1 : MAX_COUNT + 1],
    "image/position": POSITIONS,
    "audio/count": NUMBER_WORDS[1 : MAX_COUNT + 1],
    "audio/pitch": tuple(PITCHES),
    "audio/duration": tuple(NUMBER_WORDS[int(d)] for d in DURATIONS),
}


# ---------------------------------------------------------------------------------------------------------------
# Specs: everything needed to render one image or one clip
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSpec:
    size: int
    background: tuple[int, int, int]
    shape: str
    colour: str
    # One inclusive pixel box (x0, y0, x1, y1) per shape; boxes are square.
    boxes: tuple[tuple[int, int, int, int], ...]
    # Named position when there is one shape, else None (no single position for a group).
    position: str | None

    @property
    def count(self) -> int:
        return len(self.boxes)

    def key(self) -> str:
        """Canonical description of the picture, used to keep splits disjoint."""
        return f"image|{self.size}|{self.background}|{self.shape}|{self.colour}|{self.boxes}"


@dataclass(frozen=True)
class AudioSpec:
    sample_rate: int
    duration: float  # seconds; the clip has round(duration * sample_rate) samples
    pitch: str
    frequency: float  # Hz
    onsets: tuple[float, ...]  # seconds, one per beep
    beep_length: float  # seconds
    amplitude: float
    noise_std: float
    noise_seed: int

    @property
    def count(self) -> int:
        return len(self.onsets)

    def key(self) -> str:
        # The noise realisation is left out: two clips that differ only in noise are the same clip for our purposes.
        return (
            f"audio|{self.sample_rate}|{self.duration}|{self.pitch}|{self.frequency}|{self.onsets}|"
            f"{self.beep_length}|{self.amplitude}"
        )


# ---------------------------------------------------------------------------------------------------------------
# Rendering (pure functions of a spec)
# ---------------------------------------------------------------------------------------------------------------


def render_image(spec: ImageSpec) -> Image.Image:
    """Draw the shapes of ``spec`` without anti-aliasing; returns an RGB PIL image of ``spec.size`` squared."""
    image = Image.new("RGB", (spec.size, spec.size), spec.background)
    draw = ImageDraw.Draw(image)
    fill = PALETTE[spec.colour]
    for x0, y0, x1, y1 in spec.boxes:
        if spec.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif spec.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif spec.shape == "triangle":  # upright isosceles, base on the box's bottom edge
            draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
        else:
            raise ValueError(f"unknown shape {spec.shape!r}; expected one of {SHAPES}")
    return image


_RAMP_SECONDS = 0.008  # raised-cosine attack/release: no clicks, so no broadband energy that blurs the pitch


def render_audio(spec: AudioSpec) -> np.ndarray:
    """Synthesize the clip of ``spec``: float32, mono, values on the 16-bit PCM grid (k / 32768)."""
    n = int(round(spec.duration * spec.sample_rate))
    noise_rng = np.random.default_rng(spec.noise_seed)
    x = noise_rng.normal(0.0, spec.noise_std, n)
    length = int(round(spec.beep_length * spec.sample_rate))
    t = np.arange(length) / spec.sample_rate
    envelope = np.ones(length)
    ramp = min(int(round(_RAMP_SECONDS * spec.sample_rate)), length // 2)
    if ramp > 0:
        rise = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        envelope[:ramp] = rise
        envelope[length - ramp :] = rise[::-1]
    beep = spec.amplitude * envelope * np.sin(2.0 * np.pi * spec.frequency * t)
    for onset in spec.onsets:
        start = int(round(onset * spec.sample_rate))
        stop = min(start + length, n)
        x[start:stop] += beep[: stop - start]
    return _quantize_pcm16(x).astype(np.float32) / np.float32(32768.0)


def _quantize_pcm16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


# ---------------------------------------------------------------------------------------------------------------
# Sampling specs
# ---------------------------------------------------------------------------------------------------------------


def _sample_image_spec(rng: np.random.Generator, task: str, size: int, background: tuple[int, int, int]) -> ImageSpec:
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = tuple(PALETTE)[rng.integers(len(PALETTE))]
    # The position question needs a single shape; otherwise counts are uniform so no count is a safe guess.
    count = 1 if task == "position" else int(rng.integers(1, MAX_COUNT + 1))
    if count == 1:
        position = POSITIONS[rng.integers(len(POSITIONS))]
        side = int(rng.integers(round(0.30 * size), round(0.375 * size) + 1))  # 19..24 px at 64
        anchor_x, anchor_y = {
            "left": (0.25, 0.5),
            "right": (0.75, 0.5),
            "top": (0.5, 0.25),
            "bottom": (0.5, 0.75),
            "center": (0.5, 0.5),
        }[position]
        jitter = max(1, round(0.04 * size))  # +-3 px at 64: the centroid stays well inside its named region
        cx = anchor_x * size + int(rng.integers(-jitter, jitter + 1))
        cy = anchor_y * size + int(rng.integers(-jitter, jitter + 1))
        x0 = min(max(round(cx - side / 2), 0), size - side)
        y0 = min(max(round(cy - side / 2), 0), size - side)
        boxes = ((x0, y0, x0 + side - 1, y0 + side - 1),)
    else:
        position = None
        # One shape per quadrant cell with a margin, so shapes never touch and each is large.
        cell = size // 2
        margin = max(1, round(0.08 * cell))
        cells = sorted(rng.choice(4, size=count, replace=False).tolist())
        boxes_list = []
        for c in cells:
            cell_x, cell_y = (c % 2) * cell, (c // 2) * cell
            side = int(rng.integers(round(0.45 * cell), round(0.70 * cell) + 1))  # 14..22 px at 64
            x0 = cell_x + int(rng.integers(margin, cell - margin - side + 1))
            y0 = cell_y + int(rng.integers(margin, cell - margin - side + 1))
            boxes_list.append((x0, y0, x0 + side - 1, y0 + side - 1))
        boxes = tuple(boxes_list)
    return ImageSpec(size=size, background=background, shape=shape, colour=colour, boxes=boxes, position=position)


def _sample_audio_spec(rng: np.random.Generator, task: str, sample_rate: int) -> AudioSpec:
    del task  # every audio task can use every clip
    pitch = tuple(PITCHES)[rng.integers(len(PITCHES))]
    frequency = round(PITCHES[pitch] * float(rng.uniform(0.95, 1.05)), 1)
    count = int(rng.integers(1, MAX_COUNT + 1))
    duration = DURATIONS[rng.integers(len(DURATIONS))]
    # Beeps are centred in equal slots; beep = ~40 % of a slot, so the gap is >= ~0.39 slot (78 ms at 4 beeps in 1 s).
    edge = 0.1
    slot = (duration - 2 * edge) / count
    beep_length = round(min(max(0.4 * slot * float(rng.uniform(0.9, 1.1)), 0.06), 0.4), 3)
    onsets = []
    for i in range(count):
        centre = edge + (i + 0.5) * slot + float(rng.uniform(-0.15, 0.15)) * (slot - beep_length)
        onsets.append(round(centre - beep_length / 2, 3))
    amplitude = round(float(rng.uniform(0.3, 0.6)), 2)
    return AudioSpec(
        sample_rate=sample_rate,
        duration=duration,
        pitch=pitch,
        frequency=frequency,
        onsets=tuple(onsets),
        beep_length=beep_length,
        amplitude=amplitude,
        noise_std=0.003,
        noise_seed=int(rng.integers(2**31)),
    )


# ---------------------------------------------------------------------------------------------------------------
# Questions and answers
# ---------------------------------------------------------------------------------------------------------------


def _image_question(task: str, spec: ImageSpec) -> tuple[str, str]:
    many = spec.count > 1
    if task == "colour":
        return ("What colour are the shapes?" if many else "What colour is the shape?"), spec.colour
    if task == "shape":
        return ("What shape are they?" if many else "What shape is it?"), spec.shape
    if task == "count":
        return "How many shapes are there?", NUMBER_WORDS[spec.count]
    if task == "position":
        assert spec.position is not None
        return "Where is the shape?", spec.position
    raise ValueError(f"unknown image task {task!r}; expected one of {IMAGE_TASKS}")


def _audio_question(task: str, spec: AudioSpec) -> tuple[str, str]:
    if task == "count":
        return "How many beeps are there?", NUMBER_WORDS[spec.count]
    if task == "pitch":
        return "Is the tone high, medium or low?", spec.pitch
    if task == "duration":
        return "How many seconds long is the clip?", NUMBER_WORDS[int(round(spec.duration))]
    raise ValueError(f"unknown audio task {task!r}; expected one of {AUDIO_TASKS}")


# ---------------------------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One question about one rendered image (PIL, RGB) or clip (float32 numpy array at ``spec.sample_rate``)."""

    split: str
    index: int
    kind: str  # "image" | "audio"
    task: str  # e.g. "colour", "count", "pitch"
    question: str
    answer: str
    spec: ImageSpec | AudioSpec
    media: Image.Image | np.ndarray

    def messages(self, media_ref: object | None = None) -> list[dict]:
        """Chat-format messages; the media part holds ``media_ref`` (e.g. a relative path) or the in-memory media."""
        ref = self.media if media_ref is None else media_ref
        return [
            {
                "role": "user",
                "content": [{"type": self.kind, self.kind: ref}, {"type": "text", "text": self.question}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": self.answer}]},
        ]

    def meta(self) -> dict:
        """Ground truth and bookkeeping stored next to the messages (evaluation by modality and task)."""
        spec = self.spec
        meta: dict = {"kind": self.kind, "task": self.task, "split": self.split, "index": self.index}
        if isinstance(spec, ImageSpec):
            meta.update(shape=spec.shape, colour=spec.colour, count=spec.count, position=spec.position)
        else:
            meta.update(pitch=spec.pitch, frequency=spec.frequency, count=spec.count, duration=spec.duration)
        return meta


class SyntheticOptionError(UserError, ValueError):
    """An option of the data set that cannot be used; the message names it and what is allowed."""


def _check_options(
    seed: int,
    kinds: Sequence[str],
    image_size: int,
    image_tasks: Sequence[str],
    audio_tasks: Sequence[str],
) -> None:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise SyntheticOptionError(f"seed must be a non-negative integer, got {seed!r}")
    if not kinds or any(k not in KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise SyntheticOptionError(f"kinds must be distinct values from {KINDS}, got {tuple(kinds)!r}")
    if not isinstance(image_size, (int, np.integer)) or image_size < 32 or image_size % 32:
        raise SyntheticOptionError(
            f"image_size must be a positive multiple of 32 (patch 16 x spatial merge 2; llama.cpp parity needs it), "
            f"got {image_size!r}; try 64"
        )
    for name, tasks, allowed in (("image_tasks", image_tasks, IMAGE_TASKS), ("audio_tasks", audio_tasks, AUDIO_TASKS)):
        if not tasks or any(t not in allowed for t in tasks):
            raise SyntheticOptionError(f"{name} must be a non-empty selection from {allowed}, got {tuple(tasks)!r}")


def _split_bucket(seed: int, key: str) -> float:
    digest = hashlib.blake2b(f"{seed}|{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def make_sample(
    seed: int,
    split: str,
    index: int,
    *,
    kinds: Sequence[str] = KINDS,
    image_size: int = 64,
    image_tasks: Sequence[str] = DEFAULT_IMAGE_TASKS,
    audio_tasks: Sequence[str] = DEFAULT_AUDIO_TASKS,
    background: tuple[int, int, int] = (255, 255, 255),
    sample_rate: int = SAMPLE_RATE,
) -> Sample:
    """The ``index``-th sample of ``split`` for ``seed``: kinds alternate (index % len(kinds)), rest is random.

    Specs are drawn until the hash of ``(seed, media content)`` falls in the split's share of the hash space, so a
    picture or clip can only ever occur in one split.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    _check_options(seed, kinds, image_size, image_tasks, audio_tasks)
    kind = kinds[index % len(kinds)]
    lo, hi = _SPLIT_RANGES[split]
    rng = np.random.default_rng([int(seed), _SPLIT_IDS[split], int(index)])
    for _ in range(10_000):
        if kind == "image":
            task = image_tasks[rng.integers(len(image_tasks))]
            spec = _sample_image_spec(rng, task, image_size, tuple(background))
        else:
            task = audio_tasks[rng.integers(len(audio_tasks))]
            spec = _sample_audio_spec(rng, task, sample_rate)
        if lo <= _split_bucket(seed, spec.key()) < hi:
            break
    else:  # pragma: no cover - the held-out share is 10 %, so this would take astronomically bad luck
        raise RuntimeError(f"could not draw a {kind} sample for split {split!r}")
    if isinstance(spec, ImageSpec):
        question, answer = _image_question(task, spec)
        media = render_image(spec)
    else:
        question, answer = _audio_question(task, spec)
        media = render_audio(spec)
    return Sample(split, int(index), kind, task, question, answer, spec, media)


class SyntheticSplit(Sequence[Sample]):
    """``n`` samples of one split, built on access (a drop-in map-style dataset; no torch import needed)."""

    def __init__(self, seed: int, split: str, n: int, **options) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.seed, self.split, self.n, self.options = seed, split, n, options
        make_sample(seed, split, 0, **options)  # validate the options now, not at the first access

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.n))]
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(index)
        return make_sample(self.seed, self.split, index, **self.options)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(self.n):
            yield make_sample(self.seed, self.split, i, **self.options)


# ---------------------------------------------------------------------------------------------------------------
# Writing a dataset folder
# ---------------------------------------------------------------------------------------------------------------


def _write_split(root: Path, samples: SyntheticSplit) -> None:
    lines = []
    for sample in samples:
        stem = f"{sample.split}-{sample.index:06d}"
        if sample.kind == "image":
            rel = f"images/{stem}.png"
            sample.media.save(root / rel, format="PNG")  # PIL writes no timestamp: byte-identical per seed
        else:
            rel = f"audio/{stem}.wav"
            pcm = _quantize_pcm16(sample.media.astype(np.float64))  # exact: media is already on the PCM grid
            soundfile.write(root / rel, pcm, sample.spec.sample_rate, subtype="PCM_16", format="WAV")
        record = {"messages": sample.messages(rel), "meta": sample.meta()}
        lines.append(json.dumps(record, ensure_ascii=False, sort_keys=False))
    (root / SPLIT_FILES[samples.split]).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


# what make_dataset writes: --force replaces a folder holding only these
DATASET_FILES = ("train.jsonl", "validation.jsonl", "test.jsonl", "dataset_info.json", "images", "audio")


def _info(seed: int, counts: dict, options: dict) -> dict:
    return {
        "format": "transformers-qwen3-synthetic",
        "format_version": FORMAT_VERSION,
        "seed": int(seed),
        "splits": {SPLIT_FILES[s]: int(counts[s]) for s in SPLITS},
        "kinds": list(options["kinds"]),
        "image_size": int(options["image_size"]),
        "image_tasks": list(options["image_tasks"]),
        "audio_tasks": list(options["audio_tasks"]),
        "sample_rate": SAMPLE_RATE,
        "answers": {k: list(v) for k, v in ANSWERS.items()},
    }


def make_dataset(
    out_dir: str | os.PathLike,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
    *,
    image_size: int = 64,
    image_tasks: Sequence[str] = DEFAULT_IMAGE_TASKS,
    audio_tasks: Sequence[str] = DEFAULT_AUDIO_TASKS,
    force: bool = False,
) -> Path:
    """Write ``train.jsonl``, ``validation.jsonl``, ``test.jsonl``, ``dataset_info.json``, ``images/``, ``audio/``.

    Media paths in the records are relative to ``out_dir``. The folder is built next to ``out_dir`` and renamed into
    place at the end (:func:`..outputs.atomic_folder`), so an interrupted run never leaves a half-written dataset;
    ``force`` replaces a folder holding only what this function writes. The same arguments give byte-identical
    files.
    """
    kinds = tuple(kinds)
    options = dict(kinds=kinds, image_size=image_size, image_tasks=tuple(image_tasks), audio_tasks=tuple(audio_tasks))
    counts = {"train": n_train, "validation": n_val, "test": n_test}
    for name, n in counts.items():
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise SyntheticOptionError(f"the number of {name} samples must be a non-negative integer, got {n!r}")
    _check_options(seed, kinds, image_size, options["image_tasks"], options["audio_tasks"])

    out = Path(out_dir)
    # an empty folder may be filled without --force; --force replaces only a folder of our own files
    force = force or (out.is_dir() and not out.is_symlink() and not any(out.iterdir()))
    with atomic_folder(out, force=force, ours=DATASET_FILES) as tmp:
        (tmp / "images").mkdir()
        (tmp / "audio").mkdir()
        for split in SPLITS:
            _write_split(tmp, SyntheticSplit(seed, split, counts[split], **options))
        (tmp / "dataset_info.json").write_text(
            json.dumps(_info(seed, counts, options), indent=2) + "\n", encoding="utf-8"
        )
    return out


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


def _csv(allowed: Sequence[str]):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(t.strip() for t in text.split(",") if t.strip())
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list from {','.join(allowed)}, got {text!r}")
        return items

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output folder (created; must be empty unless --force)")
    parser.add_argument("--n-train", type=int, default=2000, help="training samples (default 2000)")
    parser.add_argument("--n-val", type=int, default=200, help="validation samples (default 200)")
    parser.add_argument("--n-test", type=int, default=200, help="test samples (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument("--kinds", type=_csv(KINDS), default=KINDS, help="modalities, e.g. image,audio (default both)")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels, multiple of 32 (default 64)")
    parser.add_argument(
        "--image-tasks", type=_csv(IMAGE_TASKS), default=DEFAULT_IMAGE_TASKS, help=f"from {','.join(IMAGE_TASKS)}"
    )
    parser.add_argument(
        "--audio-tasks", type=_csv(AUDIO_TASKS), default=DEFAULT_AUDIO_TASKS, help=f"from {','.join(AUDIO_TASKS)}"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing data set written by this command")


def run(args: argparse.Namespace) -> int:
    out = make_dataset(
        args.out,
        args.n_train,
        args.n_val,
        args.n_test,
        seed=args.seed,
        kinds=args.kinds,
        image_size=args.image_size,
        image_tasks=args.image_tasks,
        audio_tasks=args.audio_tasks,
        force=args.force,
    )
    print(f"wrote {args.n_train} train, {args.n_val} validation, {args.n_test} test samples to {out}")
    return 0
