"""Video files (mp4, webm, mkv) through the media loader and the processor.

Oracles: transformers' own PyAV reader (``read_video_pyav``, frames bit for bit) and Qwen3-VL's video processor
and processor (``Qwen3VLVideoProcessor``: frame sampling, ``get_num_of_video_patches`` and ``smart_resize`` for the
grid; ``Qwen3VLProcessor.replace_video_token`` for the placeholder text with its timestamps). The native video
processor cannot run its ``__call__`` here: it resizes with torchvision, which is not a dependency (PyPI's
torchvision 0.28 does not load its operators beside the CPU build of torch 2.13). Its counting code needs no
torchvision, so that is what the token counts are compared with. The clips are written with PyAV in tmp_path.
"""

import functools
import io
import types

import av
import numpy as np
import pytest
import torch
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor, smart_resize
from transformers.video_utils import read_video_pyav

import transformers_qwen3.remote.media_qwen3_multimodal as hub
from transformers_qwen3.remote.media_qwen3_multimodal import MediaError, MediaPolicy, load_video
from transformers_qwen3.remote.processing_qwen3_multimodal import Qwen3MultimodalProcessor

VIDEO_TOKEN_ID = 151656
CODECS = {"mp4": ("mp4", "libx264"), "webm": ("webm", "libvpx-vp9"), "mkv": ("matroska", "libx264")}


def colour(i):
    return (i * 12 % 256, 255 - i * 12 % 256, 128)


def write_clip(path, n_frames=20, rate=10, size=(64, 48), noise=False):
    """A clip of ``n_frames`` frames at ``rate`` fps; frame i is ``colour(i)`` (or seeded noise)."""
    container_format, codec = CODECS[path.suffix[1:]]
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(n_frames):
            if noise:
                pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            else:
                pixels = np.full((size[1], size[0], 3), colour(i), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QWEN3_MM_ALLOWED_ROOTS", raising=False)
    return tmp_path


@pytest.fixture
def decoded(monkeypatch):
    """Records each video file decode (beyond the header read)."""
    seen = []
    original = hub._decode_container

    def spy(*args, **kwargs):
        seen.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(hub, "_decode_container", spy)
    return seen


# ---- decoding ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["mp4", "webm", "mkv"])
def test_frames_decode_to_their_colours_at_the_sampled_times(root, suffix):
    write_clip(root / f"clip.{suffix}")  # 20 frames at 10 fps: 2 s -> 4 frames at 2 fps
    video = load_video(f"clip.{suffix}")
    indices = [0, 6, 13, 19]  # np.linspace(0, 19, 4).round(), Qwen3-VL's sampling
    assert video.times == pytest.approx([i / 10 for i in indices])
    for frame, index in zip(video.frames, indices, strict=True):
        assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
        err = np.abs(frame.reshape(-1, 3).astype(int) - colour(index)).max()
        assert err <= 6, f"frame {index}: max |diff| {err} to {colour(index)} (yuv420p rounding)"


def test_frames_equal_transformers_pyav_reader(root):
    path = write_clip(root / "clip.mp4", n_frames=33, rate=12, size=(80, 48), noise=True)
    sampler = Qwen3VLVideoProcessor(fps=2.0, min_frames=4, max_frames=64)
    native, metadata = read_video_pyav(str(path), sample_indices_fn=sampler.sample_frames)
    ours = load_video("clip.mp4")
    assert ours.times == pytest.approx([i / metadata.fps for i in metadata.frames_indices])
    diff = np.abs(np.stack(ours.frames).astype(int) - native).max()
    assert np.stack(ours.frames).shape == native.shape and diff == 0, f"max |diff| {diff}"


def test_bytes_reach_pyav_only_in_memory(root, monkeypatch):
    write_clip(root / "clip.mp4")
    opened = []
    original = av.open

    def spy(file, *args, **kwargs):
        opened.append((type(file), kwargs.get("format")))
        return original(file, *args, **kwargs)

    monkeypatch.setattr(av, "open", spy)
    load_video("clip.mp4")
    assert opened and all(kind is io.BytesIO and fmt == "mov" for kind, fmt in opened)


# ---- caps from the header, before decoding ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (MediaPolicy(max_video_frames=19), "max_video_frames"),
        (MediaPolicy(max_video_pixels=20 * 64 * 48 - 1), "max_video_pixels"),
        (MediaPolicy(max_video_seconds=1.5), "max_video_seconds"),
        (MediaPolicy(max_total_pixels=4 * 64 * 48 - 1), "max_total_pixels"),  # 4 frames sampled
        (MediaPolicy(max_bytes=100), "byte cap"),
    ],
)
@pytest.mark.parametrize("suffix", ["mp4", "webm"])
def test_caps_are_refused_before_decoding(root, decoded, policy, field, suffix):
    write_clip(root / f"clip.{suffix}")
    with pytest.raises(MediaError, match=field) as e:
        load_video(f"clip.{suffix}", policy)
    assert e.value.tag == "<video>" and not decoded
    load_video(f"clip.{suffix}", MediaPolicy(max_video_frames=20, max_total_pixels=4 * 64 * 48))  # at the caps
    assert decoded


def test_video_pixels_count_towards_the_prompt_total(root, decoded, qwen3_tokenizer):
    write_clip(root / "clip.mp4")
    processor = Qwen3MultimodalProcessor(tokenizer=qwen3_tokenizer)
    with pytest.raises(MediaError, match="max_total_pixels"):
        processor(
            text="<video>clip.mp4</video><video>clip.mp4</video>", media_policy=MediaPolicy(max_total_pixels=20_000)
        )
    assert not decoded  # 2 x 4 frames of 64x48 = 24,576 pixels, refused from the headers


# ---- broken files -----------------------------------------------------------------------------------------------------


def corruptions(data: bytes):
    yield "truncated header", data[:40]
    yield "truncated stream", data[: len(data) // 2]
    middle = bytearray(data)
    middle[len(data) // 3 : len(data) // 3 + 400] = bytes(400)
    yield "zeroed middle", bytes(middle)
    yield "magic only", data[:12]


@pytest.mark.parametrize("suffix", ["mp4", "webm"])
def test_corrupt_files_are_media_errors(root, suffix):
    data = write_clip(root / f"clip.{suffix}").read_bytes()
    for name, broken in corruptions(data):
        (root / "bad").write_bytes(broken)
        try:
            video = load_video("bad")
        except MediaError as e:
            assert e.tag == "<video>", name
        else:  # FFmpeg conceals some damage; then the frames must still be whole frames of the header's size
            assert video.frames and all(f.shape == (48, 64, 3) for f in video.frames), name


def test_a_file_without_a_video_stream(root):
    with av.open(str(root / "sound.mkv"), "w", format="matroska") as container:
        stream = container.add_stream("pcm_s16le", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(MediaError, match="no video stream"):
        load_video("sound.mkv")


def test_missing_pyav_names_the_package(root, monkeypatch):
    write_clip(root / "clip.mp4")
    monkeypatch.setitem(__import__("sys").modules, "av", None)
    with pytest.raises(MediaError, match="pip install av"):
        load_video("clip.mp4")


# ---- token counts: Qwen3-VL's video processor ---------------------------------------------------------------------------


def native_processor(settings):
    """Qwen3-VL's video processor with our settings, and a stand-in for its processor that holds what
    ``Qwen3VLProcessor.replace_video_token`` reads (the real one cannot be built without torchvision: transformers
    resolves its video processor class through a mapping that needs it)."""
    video = Qwen3VLVideoProcessor(
        fps=settings.video_fps,
        min_frames=settings.min_video_frames,
        max_frames=settings.max_video_frames,
        size={"shortest_edge": settings.video_min_pixels, "longest_edge": settings.video_max_pixels},
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
    )
    return types.SimpleNamespace(
        video_processor=video,
        vision_start_token="<|vision_start|>",
        video_token="<|video_pad|>",
        vision_end_token="<|vision_end|>",
        _calculate_timestamps=functools.partial(Qwen3VLProcessor._calculate_timestamps, None),
    )


CLIPS = [  # (frames, fps, width, height)
    (20, 10, 64, 48),  # 2 s: min_frames (4) wins
    (75, 25, 320, 240),  # 3 s: 6 frames
    (31, 30, 176, 144),  # just over 1 s: 4 frames (min_frames)
    (150, 15, 640, 360),  # 10 s: 20 frames, the budget shrinks each frame
    (90, 6, 96, 480),  # 15 s, tall: 30 frames
    (300, 2, 48, 48),  # 150 s: max_frames (64)
]


@pytest.mark.parametrize(("n_frames", "rate", "width", "height"), CLIPS)
def test_grid_tokens_and_timestamps_equal_qwen3_vl(root, qwen3_tokenizer, n_frames, rate, width, height):
    path = write_clip(root / "clip.mp4", n_frames=n_frames, rate=rate, size=(width, height))
    processor = Qwen3MultimodalProcessor(tokenizer=qwen3_tokenizer)
    out = processor(text="<video>clip.mp4</video>", return_tensors="pt")

    native = native_processor(processor.settings)
    _, metadata = read_video_pyav(str(path), sample_indices_fn=native.video_processor.sample_frames)
    n = len(metadata.frames_indices)
    patches = native.video_processor.get_num_of_video_patches(n, height, width)
    h, w = smart_resize(
        n, height, width, temporal_factor=2, factor=32, min_pixels=128 * 32 * 32, max_pixels=768 * 1024
    )
    grid = torch.tensor([[(n + 1) // 2, h // 16, w // 16]])
    assert int(grid.prod()) == patches
    assert torch.equal(out["video_grid_thw"], grid), f"ours {out['video_grid_thw'].tolist()}, native {grid.tolist()}"
    assert int((out["input_ids"] == VIDEO_TOKEN_ID).sum()) == patches // 4
    assert out["pixel_values_videos"].shape[0] == patches

    text = Qwen3VLProcessor.replace_video_token(native, {"video_grid_thw": grid, "video_metadata": [metadata]}, 0)
    assert qwen3_tokenizer.decode(out["input_ids"][0]) == text


def test_one_frame_clip_is_padded_not_refused(root, qwen3_tokenizer):
    # Qwen3-VL's smart_resize refuses a clip of one frame; we repeat it to fill the temporal patch, as for odd counts
    write_clip(root / "still.mp4", n_frames=1, rate=1)
    out = Qwen3MultimodalProcessor(tokenizer=qwen3_tokenizer)(text="<video>still.mp4</video>", return_tensors="pt")
    assert out["video_grid_thw"][0, 0].item() == 1
    assert qwen3_tokenizer.decode(out["input_ids"][0]).startswith("<0.0 seconds><|vision_start|>")
