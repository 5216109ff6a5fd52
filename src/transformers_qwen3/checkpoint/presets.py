"""Named model shapes for ``transformers-qwen3 init --preset``.

Text presets copy the shapes of the real Qwen3 checkpoints' config.json (Qwen/Qwen3-0.6B ... Qwen3-8B);
``-mm`` presets copy Qwen3-VL 2B/4B/8B (decoder and vision tower, M-RoPE) and add Qwen3-Omni's audio tower with its
projection sized to the decoder. ``tiny``/``tiny-mm`` are test-sized with the real vocabulary (the real tokenizer
fits them).
"""

from ..remote.tokens_qwen3_multimodal import ENDOFTEXT_ID, IM_END_ID

QWEN3_COMMON = {
    "vocab_size": 151936,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "attention_bias": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "bos_token_id": ENDOFTEXT_ID,
    "eos_token_id": IM_END_ID,
    "max_window_layers": 28,
    "use_sliding_window": False,
    "sliding_window": None,
}

# name: (hidden, intermediate, layers, heads, kv heads, head_dim, tied, max positions)
TEXT_SHAPES = {
    "tiny": (64, 128, 2, 4, 2, 32, True, 4096),
    "0.6b": (1024, 3072, 28, 16, 8, 128, True, 40960),
    "1.7b": (2048, 6144, 28, 16, 8, 128, True, 40960),
    "4b": (2560, 9728, 36, 32, 8, 128, True, 40960),
    "8b": (4096, 12288, 36, 32, 8, 128, False, 40960),
}


def text_config(preset: str) -> dict:
    hidden, inter, layers, heads, kv, head_dim, tied, max_pos = TEXT_SHAPES[preset]
    return {
        **QWEN3_COMMON,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "tie_word_embeddings": tied,
        "max_position_embeddings": max_pos,
    }


# Qwen3-VL decoders: rope theta 5e6, interleaved M-RoPE over (t, h, w) = (24, 20, 20) frequency pairs.
VL_ROPE = {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20], "mrope_interleaved": True}
# name: (hidden, intermediate, layers, heads, kv, tied) of the Qwen3-VL decoder
VL_TEXT_SHAPES = {
    "2b": (2048, 6144, 28, 16, 8, True),
    "4b": (2560, 9728, 36, 32, 8, True),
    "8b": (4096, 12288, 36, 32, 8, False),
}
# name: (depth, hidden, intermediate, heads, deepstack layer indexes) of the Qwen3-VL vision tower
VISION_SHAPES = {
    "2b": (24, 1024, 4096, 16, [5, 11, 17]),
    "4b": (24, 1024, 4096, 16, [5, 11, 17]),
    "8b": (27, 1152, 4304, 16, [8, 16, 24]),
}
# Qwen3-Omni's audio encoder (32 layers, width 1280); output_dim is set to the decoder's width
OMNI_AUDIO = {
    "num_mel_bins": 128,
    "encoder_layers": 32,
    "encoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "d_model": 1280,
    "downsample_hidden_size": 480,
    "n_window": 50,
    "n_window_infer": 800,
    "max_source_positions": 1500,
}


def vision_config(depth, hidden, intermediate, heads, deepstack, out_hidden):
    return {
        "depth": depth,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_heads": heads,
        "out_hidden_size": out_hidden,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": deepstack,
        "hidden_act": "gelu_pytorch_tanh",
    }


def multimodal_config(name: str) -> dict:
    hidden, inter, layers, heads, kv, tied = VL_TEXT_SHAPES[name]
    text = {
        **QWEN3_COMMON,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": 128,
        "tie_word_embeddings": tied,
        "max_position_embeddings": 262144,
        "rope_parameters": VL_ROPE,
    }
    return {
        "text_config": text,
        "vision_config": vision_config(*VISION_SHAPES[name], out_hidden=hidden),
        "audio_config": {**OMNI_AUDIO, "output_dim": hidden},
    }


def tiny_multimodal_config() -> dict:
    text = {**text_config("tiny"), "rope_parameters": {**VL_ROPE, "rope_theta": 10000.0, "mrope_section": [6, 5, 5]}}
    audio = {
        "num_mel_bins": 128,
        "encoder_layers": 2,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "d_model": 32,
        "downsample_hidden_size": 16,
        "n_window": 50,
        "n_window_infer": 800,
        "max_source_positions": 1500,
        "output_dim": text["hidden_size"],
    }
    return {
        "text_config": text,
        "vision_config": {**vision_config(2, 32, 64, 2, [0], text["hidden_size"]), "num_position_embeddings": 64},
        "audio_config": audio,
    }


PRESETS = {name: {"text_config": text_config(name)} for name in TEXT_SHAPES}
PRESETS["tiny-mm"] = tiny_multimodal_config()
PRESETS.update({f"{name}-mm": multimodal_config(name) for name in VL_TEXT_SHAPES})


def preset_config(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Choose one of: {', '.join(PRESETS)}.")
    return PRESETS[name]
