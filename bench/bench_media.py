"""Media loading costs: audio resampling (soxr, against the linear interpolation it replaced) and video decoding.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_media.py

Aliasing: the loudest component left of an 11 kHz tone after resampling 48 kHz to 16 kHz. Resampling: 60 s of 48 kHz noise to 16 kHz, median of 5 after a warm-up. Video: a 10 s 1280x720 30 fps h264
clip written here with PyAV, loaded from its bytes (20 frames sampled) and turned into patches, median of 3.
Single-process timings on a shared machine: compare the rows of one run, not runs of different days.
"""

import os
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from transformers_qwen3.remote.media_qwen3_multimodal import load_video, resample
from transformers_qwen3.remote.processing_qwen3_multimodal import MediaEncoder


def linear(audio: torch.Tensor, rate: int, target: int) -> torch.Tensor:
    """The resampler before soxr (linear interpolation, no anti-alias filter), kept here as the anchor."""
    n_out = max(1, round(audio.numel() * target / rate))
    positions = torch.arange(n_out, dtype=torch.float64) * (rate / target)
    left = positions.floor().long().clamp(max=audio.numel() - 1)
    right = (left + 1).clamp(max=audio.numel() - 1)
    frac = (positions - left).to(audio.dtype)
    return audio[left] * (1 - frac) + audio[right] * frac


def median_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def write_clip(path: Path, seconds: int = 10, rate: int = 30, size=(1280, 720)) -> Path:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("h264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(seconds * rate):
            pixels = np.full((size[1], size[0], 3), (i * 7 % 256, 80, 160), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def alias_dbfs(fn, tone_hz: float = 11000.0, rate: int = 48000) -> tuple[float, float]:
    """The loudest component (dBFS, Hz) of a -6 dBFS tone above 8 kHz after resampling to 16 kHz: what folds back."""
    t = np.arange(rate * 2) / rate
    y = fn(torch.tensor(0.5 * np.sin(2 * np.pi * tone_hz * t), dtype=torch.float32), rate, 16000)
    y = y.numpy().astype(np.float64)[1000:-1000]  # the filter's edges left out
    window = np.hanning(len(y))
    spectrum = np.abs(np.fft.rfft(y * window)) / (window.sum() / 2)
    return 20 * np.log10(spectrum.max()), np.argmax(spectrum) * 16000 / len(y)


def main() -> None:
    for name, fn in (("soxr HQ", resample), ("linear (before)", linear)):
        level, freq = alias_dbfs(fn)
        print(f"11 kHz tone at -6 dBFS, 48 kHz -> 16 kHz, {name}: loudest {level:.1f} dBFS at {freq:.0f} Hz")
    audio = torch.tensor(np.random.default_rng(0).standard_normal(48000 * 60), dtype=torch.float32)
    for name, fn in (("soxr HQ", resample), ("linear (before)", linear)):
        print(f"resample 60 s 48 kHz -> 16 kHz, {name}: {median_ms(lambda fn=fn: fn(audio, 48000, 16000), 5):.1f} ms")
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)  # local media are read below the current folder by default
        clip = write_clip(Path(work) / "clip.mp4")
        encoder = MediaEncoder()
        decode = median_ms(lambda: load_video(clip.name), 3)
        video = load_video(clip.name)
        encode = median_ms(lambda: encoder.encode_video(video), 3)
        print(
            f"video 10 s 1280x720 30 fps h264 ({len(video.frames)} frames sampled): decode {decode:.0f} ms, "
            f"patches {encode:.0f} ms"
        )


if __name__ == "__main__":
    main()
