"""Multimodal parity against the oracles, on the same random weights:

- images / two odd-sized images / a video / a padded batch mixing them vs transformers' native
  Qwen3VLForConditionalGeneration (fp32 logits max |diff| <= 1e-5, or within native's own eager-vs-SDPA spread);
- the audio tower vs the native Qwen3-Omni audio encoder on 1 s, 2.5 s, 7 s and 9.5 s clips;
- our glue for audio (scatter, 1-D positions) vs the decoder fed the native encoder's output by hand.
"""

import numpy as np
import pytest
import torch
from helpers.vl_prompts import A_END, A_START, AUDIO, AUDIO_CFG, PROMPTS, TEXT, VISION, build, mm_types
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, WhisperFeatureExtractor
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
    Qwen3OmniMoeAudioEncoder,
    _get_feat_extract_output_lengths,
)

from transformers_qwen3 import Qwen3MultimodalConfig, Qwen3MultimodalForConditionalGeneration


@pytest.fixture(scope="module")
def vl_pair():
    torch.manual_seed(0)
    native = Qwen3VLForConditionalGeneration(Qwen3VLConfig(text_config=TEXT, vision_config=VISION)).eval()
    config = Qwen3MultimodalConfig(text_config=TEXT, vision_config=VISION, audio_config=AUDIO_CFG)
    ours = Qwen3MultimodalForConditionalGeneration(config).eval()
    state = {k.replace("model.language_model.", "model."): v for k, v in native.state_dict().items()}
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("model.audio_tower.") for k in missing), (missing, unexpected)
    return native, ours


def native_logits(native, inputs):
    return native(**inputs, mm_token_type_ids=mm_types(inputs["input_ids"])).logits


def compare(native, ours, inputs, what):
    with torch.no_grad():
        expected = native_logits(native, inputs)
        got = ours(**inputs).logits
        native.set_attn_implementation("eager")
        spread = (native_logits(native, inputs) - expected).abs().max().item()
        native.set_attn_implementation("sdpa")
    diff = (got - expected).abs().max().item()
    assert diff <= max(1e-5, spread), f"{what}: max |diff| {diff:.3g} (native eager-vs-sdpa {spread:.3g})"
    return diff


@pytest.mark.parametrize("name", PROMPTS)
def test_logits_match_native_qwen3_vl(vl_pair, name):
    native, ours = vl_pair
    compare(native, ours, build(PROMPTS[name]), name)


def test_padded_batch_mixing_media_matches_native(vl_pair):
    native, ours = vl_pair
    a, b = build(PROMPTS["one_image"]), build(PROMPTS["two_odd_images"])
    la, lb = a["input_ids"].shape[1], b["input_ids"].shape[1]
    width = max(la, lb)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    ids[0, width - la :], mask[0, width - la :] = a["input_ids"][0], 1  # left padding
    ids[1, width - lb :], mask[1, width - lb :] = b["input_ids"][0], 1
    inputs = {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": torch.cat([a["pixel_values"], b["pixel_values"]]),
        "image_grid_thw": torch.cat([a["image_grid_thw"], b["image_grid_thw"]]),
    }
    diff = compare(native, ours, inputs, "padded batch")
    # and each row equals its own unbatched run (within the batch-vs-single spread of native)
    with torch.no_grad():
        batch = ours(**inputs).logits
        single = ours(**a).logits[0]
        native_batch = native_logits(native, inputs)
        native_single = native_logits(native, a)[0]
    spread = (native_batch[0, width - la :] - native_single).abs().max().item()
    assert (batch[0, width - la :] - single).abs().max().item() <= max(1e-5, 2 * spread), diff


def test_generation_with_image_matches_native(vl_pair):
    native, ours = vl_pair
    inputs = build(PROMPTS["two_odd_images"])
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    expected = native.generate(**inputs, mm_token_type_ids=mm_types(inputs["input_ids"]), **kwargs)
    assert torch.equal(ours.generate(**inputs, **kwargs), expected)


def test_text_only_on_multimodal_checkpoint_matches_native(vl_pair):
    native, ours = vl_pair
    ids = torch.tensor([[9707, 11, 1052, 3838, 374, 419, 30]])
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, native(ids).logits)


def test_placeholder_count_mismatch_is_a_clear_error(vl_pair):
    _, ours = vl_pair
    inputs = build(PROMPTS["one_image"])
    inputs["input_ids"] = inputs["input_ids"][:, 1:]
    inputs["input_ids"][0, 4] = 9707  # one image placeholder fewer than the tower's features
    with pytest.raises(ValueError, match="placeholder tokens but the tower produced"):
        ours(**inputs)


# ---- audio ---------------------------------------------------------------------------------------------------------


def clip(seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def features():
    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000)
    clips = [clip(s, i) for i, s in enumerate((1.0, 2.5, 7.0, 9.5))]
    out = extractor(clips, sampling_rate=16000, padding="longest", return_attention_mask=True, return_tensors="pt")
    return out["input_features"], out["attention_mask"]


def test_audio_tower_matches_native_omni_encoder(vl_pair, features):
    _, ours = vl_pair
    native = Qwen3OmniMoeAudioEncoder(Qwen3OmniMoeAudioEncoderConfig(**AUDIO_CFG)).eval()
    native.load_state_dict(
        {k[len("model.audio_tower.") :]: v for k, v in ours.state_dict().items() if k.startswith("model.audio_tower.")}
    )
    input_features, mask = features
    with torch.no_grad():
        got = ours.model.get_audio_features(input_features, mask).last_hidden_state
        lens = mask.sum(-1)
        flat = input_features.permute(0, 2, 1)[mask.bool()].permute(1, 0)
        expected = native(flat, feature_lens=lens).last_hidden_state
        # per clip, one at a time: the batched tower must not mix clips
        singles = [
            native(input_features[i, :, : lens[i]], feature_lens=lens[i : i + 1]).last_hidden_state
            for i in range(len(lens))
        ]
    assert got.shape[0] == int(_get_feat_extract_output_lengths(lens).sum())
    assert [s.shape[0] for s in singles] == [13, 33, 91, 124]  # ~13 tokens per second, padding dropped
    assert (got - expected).abs().max().item() <= 1e-5
    assert (got - torch.cat(singles)).abs().max().item() <= 1e-5


def test_audio_glue_scatter_and_1d_positions(vl_pair, features):
    _, ours = vl_pair
    input_features, mask = features
    input_features, mask = input_features[1:2], mask[1:2]  # the 2.5 s clip: 33 tokens
    n = int(_get_feat_extract_output_lengths(mask.sum(-1)))
    ids = torch.tensor([[9707, 11, A_START] + [AUDIO] * n + [A_END, 3838, 30]])
    with torch.no_grad():
        got = ours(input_ids=ids, input_features=input_features, feature_attention_mask=mask).logits
        embeds = ours.model.embed_tokens(ids).clone()
        embeds[ids == AUDIO] = ours.model.get_audio_features(input_features, mask).last_hidden_state
        expected = ours(inputs_embeds=embeds).logits  # text path: plain 1-D positions
    assert (got - expected).abs().max().item() <= 1e-6
