"""Qwen3MultimodalProcessor and the tokenizer's inline tags.

Oracles: transformers' Qwen2VLImageProcessorPil with Qwen3-VL's settings (pixel values and grids must be identical:
we reuse it, we do not reimplement it), Qwen3-VL's video patchify and timestamp rule (patch layout and timestamps
text; video sizes and token counts against Qwen3VLVideoProcessor are in test_video.py), WhisperFeatureExtractor and Qwen3-Omni's token-count formula for audio. Then the placeholder glue through the
tiny-mm model: a mixed text+image+audio prompt generates deterministically and a batch mixing media matches its
rows run alone.
"""

import base64
import io

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from transformers import WhisperFeatureExtractor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

from transformers_qwen3 import Qwen3MultimodalConfig, Qwen3MultimodalForConditionalGeneration
from transformers_qwen3.checkpoint.presets import PRESETS
from transformers_qwen3.remote.media_qwen3_multimodal import MediaError
from transformers_qwen3.remote.processing_qwen3_multimodal import MediaEncoder, Qwen3MultimodalProcessor

IMAGE, VIDEO, AUDIO = 151655, 151656, 151675
V_START, V_END, A_START, A_END = 151652, 151653, 151669, 151670


def noise_image(width, height, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def tone(seconds, rate=16000, seed=0):
    return np.random.default_rng(seed).standard_normal(int(round(seconds * rate))).astype(np.float32) * 0.1


@pytest.fixture(scope="module")
def processor(qwen3_tokenizer):
    return Qwen3MultimodalProcessor(tokenizer=qwen3_tokenizer)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    noise_image(150, 100).save(tmp_path / "photo.png")
    noise_image(37, 411, seed=1).save(tmp_path / "tall.png")
    soundfile.write(tmp_path / "clip.wav", tone(1.0), 16000)
    return tmp_path


def count(ids, token):
    return int((torch.as_tensor(ids) == token).sum())


# ---- images: exactly Qwen2VLImageProcessorPil with Qwen3-VL's settings -------------------------------------------

NATIVE_IMAGE = dict(
    patch_size=16,
    merge_size=2,
    temporal_patch_size=2,
    image_mean=[0.5] * 3,
    image_std=[0.5] * 3,
    min_pixels=8 * 32 * 32,
    max_pixels=4096 * 32 * 32,
)


@pytest.mark.parametrize("size", [(150, 100), (37, 411), (5, 5), (1001, 17), (2900, 1700)])
def test_images_match_the_native_image_processor(processor, size):
    image = noise_image(*size)
    native = Qwen2VLImageProcessorPil(**NATIVE_IMAGE)(image, return_tensors="pt")
    out = processor(text="Look: <|vision_start|><|image_pad|><|vision_end|>", images=image, return_tensors="pt")
    diff = (out["pixel_values"] - native["pixel_values"]).abs().max().item()
    assert out["pixel_values"].shape == native["pixel_values"].shape and diff == 0, f"max |diff| {diff}"
    assert torch.equal(out["image_grid_thw"], native["image_grid_thw"])
    tokens = int(native["image_grid_thw"].prod()) // 4
    assert count(out["input_ids"], IMAGE) == tokens
    assert 8 <= tokens <= 4096  # llama.cpp mtmd's Qwen3-VL limits
    ids = out["input_ids"][0].tolist()
    start = ids.index(V_START)
    assert ids[start + 1 : start + 1 + tokens] == [IMAGE] * tokens and ids[start + 1 + tokens] == V_END


def test_placeholder_count_mismatch_and_truncation_raise(processor):
    image = noise_image(64, 64)
    with pytest.raises(ValueError, match=r"2 <\|image_pad\|> placeholder\(s\) but 1 image"):
        processor(text="<|image_pad|> and <|image_pad|>", images=[image])
    with pytest.raises(ValueError, match="but 0 image"):
        processor(text="<|image_pad|>")
    with pytest.raises(ValueError, match="truncation"):
        processor(text="<|image_pad|> tail", images=[image], truncation=True, max_length=5)


# ---- video: our temporal grouping is Qwen3-VL's patch layout; timestamps as Qwen3-VL writes them ------------------


def unpatchify(patches, grid_h, grid_w, patch=16, merge=2, temporal=2):
    """Invert Qwen2VLImageProcessorPil's patchify for one image: [h*w, C*T*P*P] -> [C, H, W]."""
    x = patches.reshape(grid_h // merge, grid_w // merge, merge, merge, 3, temporal, patch, patch)[:, :, :, :, :, 0]
    x = x.permute(4, 0, 2, 5, 1, 3, 6)  # C, bh, mh, ph, bw, mw, pw
    return x.reshape(3, grid_h * patch, grid_w * patch)


def test_video_layout_and_timestamps_match_qwen3_vl(qwen3_tokenizer):
    # 96x64 frames, 5 of them: inside the clip budget Qwen3-VL's smart_resize leaves them at their size, so the
    # patches can be compared exactly (resizing differs: Pillow here, torchvision there)
    processor = Qwen3MultimodalProcessor(tokenizer=qwen3_tokenizer, video_min_pixels=4096)
    frames = [noise_image(96, 64, seed=i) for i in range(5)]
    out = processor(
        text="<|vision_start|><|video_pad|><|vision_end|> what happens?", videos=[frames], return_tensors="pt"
    )
    t, gh, gw = out["video_grid_thw"][0].tolist()
    assert (t, gh, gw) == (3, 4, 6)  # 5 frames -> the last repeated -> 3 temporal patches of 64x96 pixels

    # oracle: each frame normalised by the image processor, then Qwen3-VL's own video patchify
    per_frame = [Qwen2VLImageProcessorPil(**NATIVE_IMAGE)(f, do_resize=False, return_tensors="pt") for f in frames]
    clip = torch.stack([unpatchify(p["pixel_values"], gh, gw) for p in per_frame])[None]  # [1, T, C, H, W]
    native, nt, nh, nw = Qwen3VLVideoProcessor.patchify(None, clip, patch_size=16, merge_size=2, temporal_patch_size=2)
    assert (nt, nh, nw) == (t, gh, gw)
    diff = (out["pixel_values_videos"] - native[0]).abs().max().item()
    assert diff == 0, f"max |diff| {diff}"

    stamps = Qwen3VLProcessor._calculate_timestamps(None, list(range(5)), processor.video_fps, 2)
    block = "<|vision_start|>" + "<|video_pad|>" * (gh * gw // 4) + "<|vision_end|>"
    expected = "".join(f"<{s:.1f} seconds>" + block for s in stamps) + " what happens?"
    assert processor.tokenizer.decode(out["input_ids"][0]) == expected


def test_video_from_an_animated_gif(processor, workdir):
    frames = [noise_image(48, 32, seed=i) for i in range(4)]
    frames[0].save(workdir / "clip.gif", save_all=True, append_images=frames[1:], duration=500, loop=0)
    out = processor(text="<video>clip.gif</video>", return_tensors="pt")
    assert out["video_grid_thw"][0, 0].item() == 2  # 2 s at 2 fps -> 4 frames -> 2 temporal patches
    text = processor.tokenizer.decode(out["input_ids"][0])
    assert text.startswith("<0.2 seconds><|vision_start|>") and "<1.2 seconds>" in text


# ---- audio: WhisperFeatureExtractor + Qwen3-Omni's token count ------------------------------------------------------


@pytest.mark.parametrize("seconds,tokens", [(1.0, 13), (2.5, 33), (9.5, 124)])
def test_audio_token_counts_and_features(processor, seconds, tokens):
    audio = tone(seconds)
    out = processor(text="Listen: <|audio_start|><|audio_pad|><|audio_end|>", audio=[audio], return_tensors="pt")
    assert count(out["input_ids"], AUDIO) == tokens
    native = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000)(
        audio,
        sampling_rate=16000,
        padding="longest",
        truncation=False,
        return_attention_mask=True,
        return_tensors="pt",
    )
    assert torch.equal(out["input_features"], native["input_features"])
    assert out["feature_attention_mask"].sum().item() == int(seconds * 100)
    assert "attention_mask" in out and out["attention_mask"].shape == out["input_ids"].shape  # not overwritten


def test_audio_at_another_rate_is_resampled(processor):
    out = processor(text="<|audio_pad|>", audio=[tone(1.0, rate=8000)], sampling_rate=8000, return_tensors="pt")
    assert count(out["input_ids"], AUDIO) == 13


# ---- tokenizer tags -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "plain text",
        "<image> unclosed",
        "a </image> b",
        "<image>x</img>",
        "<|image_pad|>",
        "<img src='x'>",
        "解释这张图片中的科学原理",
    ],
)
def test_text_without_tags_tokenizes_as_before(qwen3_tokenizer, text):
    assert qwen3_tokenizer(text)["input_ids"] == qwen3_tokenizer(text, media_tags=False)["input_ids"]
    assert qwen3_tokenizer([text, "x"])["input_ids"] == qwen3_tokenizer([text, "x"], media_tags=False)["input_ids"]


def test_tags_through_the_tokenizer_equal_the_processor(qwen3_tokenizer, processor, workdir):
    text = "解释这张图片中的科学原理:<image>photo.png</image> <audio>clip.wav</audio> <img>tall.png</img>"
    by_tok = qwen3_tokenizer(text, return_tensors="pt")
    by_proc = processor(text=text, return_tensors="pt")
    assert (
        set(by_tok)
        == set(by_proc)
        == {
            "input_ids",
            "attention_mask",
            "pixel_values",
            "image_grid_thw",
            "input_features",
            "feature_attention_mask",
        }
    )
    for key in by_tok:
        assert torch.equal(by_tok[key], by_proc[key]), key
    ids = by_tok["input_ids"][0]
    assert count(ids, V_START) == 2 and count(ids, A_START) == 1 and count(ids, AUDIO) == 13
    assert count(ids, IMAGE) == int(by_tok["image_grid_thw"].prod(-1).sum()) // 4
    # a file:// URL and a data: URI name the same image
    uri = "data:image/png;base64," + base64.b64encode((workdir / "photo.png").read_bytes()).decode()
    for src in (f"file://{workdir}/photo.png", uri):
        again = qwen3_tokenizer(f"<image>{src}</image>", return_tensors="pt")
        assert torch.equal(again["pixel_values"], by_tok["pixel_values"][: again["pixel_values"].shape[0]])


def test_a_bad_tag_fails_the_whole_call_before_encoding(qwen3_tokenizer, workdir, monkeypatch):
    encoded = []
    monkeypatch.setattr(MediaEncoder, "encode_images", lambda self, *a, **k: encoded.append(1))
    with pytest.raises(MediaError, match="file not found") as e:
        qwen3_tokenizer("<image>photo.png</image> then <audio>missing.wav</audio>")
    assert e.value.tag == "<audio>" and not encoded
    with pytest.raises(MediaError, match="empty source"):
        qwen3_tokenizer("<image> </image>")


def test_saved_settings_reach_the_tokenizer(qwen3_tokenizer, tmp_path):
    from transformers_qwen3.checkpoint.hub_folder import save_processor

    small = Qwen2VLImageProcessorPil(**{**NATIVE_IMAGE, "max_pixels": 16 * 32 * 32})
    save_processor(Qwen3MultimodalProcessor(small, tokenizer=qwen3_tokenizer, video_fps=1.0), tmp_path)
    encoder = MediaEncoder.from_folder(str(tmp_path))
    assert encoder.image_processor.size["longest_edge"] == 16 * 32 * 32 and encoder.settings.video_fps == 1.0
    assert encoder.settings.video_max_pixels == Qwen3MultimodalProcessor(tokenizer=qwen3_tokenizer).video_max_pixels
    features, _ = encoder.encode_images([noise_image(640, 480)])
    assert int(features["image_grid_thw"].prod()) // 4 <= 16
    assert MediaEncoder.from_folder(str(tmp_path / "nowhere")).image_processor.size["longest_edge"] == 4096 * 32 * 32


# ---- chat template ----------------------------------------------------------------------------------------------------


def test_chat_template_with_media_parts(processor, workdir):
    wav = io.BytesIO()
    soundfile.write(wav, tone(2.5), 16000, format="WAV")
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "path": "photo.png"},
                {"type": "video", "video": [noise_image(64, 64, seed=i) for i in range(2)]},
                {
                    "type": "input_audio",
                    "input_audio": {"data": base64.b64encode(wav.getvalue()).decode(), "format": "wav"},
                },
                {"type": "audio", "audio": tone(1.0)},
                {"type": "text", "text": "Describe all of it."},
            ],
        }
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>")
    out = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    ids = out["input_ids"]
    assert ids.shape[0] == 1 and count(ids, AUDIO) == 33 + 13
    assert count(ids, IMAGE) == int(out["image_grid_thw"].prod()) // 4
    assert count(ids, VIDEO) == int(out["video_grid_thw"].prod()) // 4
    assert out["input_features"].shape[0] == 2
    only_ids = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_tensors="pt")
    assert torch.equal(only_ids, ids)


# ---- through the model (tiny-mm, random weights) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Qwen3MultimodalForConditionalGeneration(Qwen3MultimodalConfig(**PRESETS["tiny-mm"])).eval()


def test_text_image_audio_prompt_generates_deterministically(processor, model, workdir):
    text = "<image>photo.png</image> and <audio>clip.wav</audio>: what do you see and hear?"
    inputs = processor(text=text, return_tensors="pt")
    with torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        second = model.generate(**processor(text=text, return_tensors="pt"), max_new_tokens=6, do_sample=False)
        logits = model(**inputs).logits
    assert torch.equal(first, second)
    assert first[0, inputs["input_ids"].shape[1]].item() == logits[0, -1].argmax().item()


def test_batch_with_different_mixes_matches_single_rows(processor, model, workdir):
    texts = [
        "just text, nothing else",
        "<image>tall.png</image> a picture",
        "<audio>clip.wav</audio> then <image>photo.png</image> both",
    ]
    batch = processor(text=texts, return_tensors="pt")
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padding
    with torch.no_grad():
        batched = model(**batch).logits[:, -1]
        for row, text in enumerate(texts):
            alone = model(**processor(text=text, return_tensors="pt")).logits[0, -1]
            diff = (batched[row] - alone).abs().max().item()
            assert diff < 1e-4, f"row {row}: max |diff| {diff:.3g}"
