"""Named model shapes for ``transformers-qwen3 init --preset``.

Text presets copy the shapes of the real Qwen3 checkpoints' config.json (Qwen/Qwen3-0.6B ... Qwen3-8B);
``tiny`` is a test-sized decoder with the real vocabulary so the real tokenizer fits it.
"""

QWEN3_COMMON = {
    "vocab_size": 151936,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "attention_bias": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "bos_token_id": 151643,
    "eos_token_id": 151645,
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


PRESETS = {name: {"text_config": text_config(name)} for name in TEXT_SHAPES}


def preset_config(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Choose one of: {', '.join(PRESETS)}.")
    return PRESETS[name]
