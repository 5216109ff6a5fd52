"""Vision tower + prefill for one 448x448 image, and the audio tower on 10 s of audio: ours vs the native models
(transformers' Qwen3VLForConditionalGeneration and Qwen3-Omni audio encoder) on the same random weights.

Shapes: decoder = Qwen3-0.6B, vision tower = Qwen3-VL-2B's (depth 24, width 1024, deepstack 5/11/17), audio tower =
Qwen3-Omni's (32 layers, width 1280). fp32, CPU, batch 1; both sides in one process, interleaved round by round (order alternating);
reported as ours / native time ratios (> 1.0 means we are faster).

    .venv/bin/python bench/bench_multimodal.py [--rounds 3] [--threads 2]
"""

import argparse
import statistics
import time

import numpy as np
import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, WhisperFeatureExtractor
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

from transformers_qwen3 import Qwen3MultimodalConfig, Qwen3MultimodalForConditionalGeneration
from transformers_qwen3.checkpoint.presets import OMNI_AUDIO, VISION_SHAPES, text_config, vision_config
from transformers_qwen3.formats.keys import renamed
from transformers_qwen3.remote.tokens_qwen3_multimodal import (
    IM_END_ID,
    IM_START_ID,
    IMAGE_TOKEN_ID,
    VISION_END_ID,
    VISION_START_ID,
)


def pair_round(i, native_fn, ours_fn):
    """(native s, ours s) of one round; the order alternates by round so warm-cache and load drift hit both."""
    if i % 2:
        ours_s = timed(ours_fn, 1)
        return timed(native_fn, 1), ours_s
    return timed(native_fn, 1), timed(ours_fn, 1)


def timed(fn, rounds):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        with torch.no_grad():
            fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build_models():
    """(native Qwen3-VL, ours, native Qwen3-Omni audio encoder), ours holding the native models' random weights."""
    text = {
        **text_config("0.6b"),
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5e6,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    }
    vision = vision_config(*VISION_SHAPES["2b"], out_hidden=text["hidden_size"])
    audio = {**OMNI_AUDIO, "output_dim": text["hidden_size"]}
    native_vl = Qwen3VLForConditionalGeneration(Qwen3VLConfig(text_config=text, vision_config=vision)).eval()
    ours = Qwen3MultimodalForConditionalGeneration(
        Qwen3MultimodalConfig(text_config=text, vision_config=vision, audio_config=audio)
    ).eval()
    state = {renamed(k): v for k, v in native_vl.state_dict().items()}
    ours.load_state_dict(state, strict=False)
    native_audio = Qwen3OmniMoeAudioEncoder(Qwen3OmniMoeAudioEncoderConfig(**audio)).eval()
    native_audio.load_state_dict(ours.model.audio_tower.state_dict())
    return native_vl, ours, native_audio


def vision_times(native_vl, ours, rounds: int) -> tuple[float, float]:
    """Median (native s, ours s): vision tower + prefill for a 448x448 image (28x28 patches of 16, 196 tokens)."""
    grid = torch.tensor([[1, 28, 28]])
    pixels = torch.randn(28 * 28, 3 * 2 * 16 * 16)
    ids = torch.tensor(
        [
            [IM_START_ID, 872, 198, VISION_START_ID]
            + [IMAGE_TOKEN_ID] * 196
            + [VISION_END_ID, 3838, 374, 419, 30, IM_END_ID]
        ]
    )
    types = (ids == IMAGE_TOKEN_ID).int()
    times = [
        pair_round(
            i,
            lambda: native_vl(input_ids=ids, pixel_values=pixels, image_grid_thw=grid, mm_token_type_ids=types),
            lambda: ours(input_ids=ids, pixel_values=pixels, image_grid_thw=grid),
        )
        for i in range(rounds)
    ]
    return statistics.median(r[0] for r in times), statistics.median(r[1] for r in times)


def audio_times(native_audio, ours, rounds: int) -> tuple[float, float, int]:
    """Median (native s, ours s, frames): the audio tower on a 10 s clip."""
    t = np.arange(16000 * 10) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    feats = WhisperFeatureExtractor(feature_size=128)(
        wave, sampling_rate=16000, return_attention_mask=True, return_tensors="pt"
    )
    features, mask = feats["input_features"], feats["attention_mask"]
    flat = features.permute(0, 2, 1)[mask.bool()].permute(1, 0)
    times = [
        pair_round(
            i,
            lambda: native_audio(flat, feature_lens=mask.sum(-1)),
            lambda: ours.model.get_audio_features(features, mask),
        )
        for i in range(rounds)
    ]
    return statistics.median(r[0] for r in times), statistics.median(r[1] for r in times), int(mask.sum())


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    native_vl, ours, native_audio = build_models()
    vision_native, vision_ours = vision_times(native_vl, ours, args.rounds)
    audio_native, audio_ours, frames = audio_times(native_audio, ours, args.rounds)
    print("| workload | native s | ours s | speed ratio (native/ours) |")
    print("|---|---|---|---|")
    print(
        f"| vision tower + prefill, 448x448 image (196 tokens + 10 text) | {vision_native:.3f} | {vision_ours:.3f} "
        f"| {vision_native / vision_ours:.3f} |"
    )
    print(
        f"| audio tower, 10 s clip ({frames} frames) | {audio_native:.3f} | {audio_ours:.3f} "
        f"| {audio_native / audio_ours:.3f} |"
    )


if __name__ == "__main__":
    main()
