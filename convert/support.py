"""What the vendored llama.cpp can run: config values it cannot reproduce are refused before anything is written."""

from __future__ import annotations

from typing import Any

from ..formats.folder import Checkpoint
from ..formats.validate import ROPE_TYPES, text_rope_parameters
from .errors import ConversionError


def check_llama_cpp_support(ckpt: Checkpoint) -> None:
    """Config values the vendored llama.cpp cannot reproduce: one error listing every problem."""
    hidden = ckpt.text["hidden_size"]
    checks = _text_checks(ckpt.text) + (_mrope_checks(ckpt.text) if ckpt.has_towers else [])
    if ckpt.vision is not None:
        checks += _vision_checks(ckpt.vision, hidden)
    if ckpt.audio is not None:
        checks += _audio_checks(ckpt.audio, hidden)
    problems = [what for ok, what in checks if not ok]
    if problems:
        raise ConversionError(
            f"{ckpt.folder}: llama.cpp cannot run this checkpoint as converted: " + "; ".join(problems)
        )


def _text_checks(t: dict[str, Any]) -> list[tuple[bool, str]]:
    rope = text_rope_parameters(t)
    checks = [
        (t.get("hidden_act", "silu") == "silu", f"text hidden_act {t.get('hidden_act')!r} (llama.cpp qwen3: silu)"),
        (not t.get("attention_bias", False), "text attention_bias=true (llama.cpp qwen3 has no q/k/v biases)"),
        (not t.get("use_sliding_window", False), "text use_sliding_window=true (llama.cpp qwen3: full attention)"),
        (
            all(lt == "full_attention" for lt in t.get("layer_types") or []),
            "text layer_types other than full_attention (no sliding window in llama.cpp qwen3)",
        ),
        (rope["rope_type"] in ROPE_TYPES, f"rope_type {rope['rope_type']!r} (supported: {', '.join(ROPE_TYPES)})"),
    ]
    if rope["rope_type"] == "yarn":
        checks.append(
            ("original_max_position_embeddings" in rope, "yarn rope without original_max_position_embeddings")
        )
    return checks


def _mrope_checks(t: dict[str, Any]) -> list[tuple[bool, str]]:
    """A model with towers runs as llama.cpp's qwen3vl, whose rotary embedding is interleaved M-RoPE."""
    rope = text_rope_parameters(t)
    section = rope.get("mrope_section")
    head_dim = t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"]
    checks = [
        (
            rope.get("mrope_interleaved", True) is not False,
            "mrope_interleaved=false (llama.cpp qwen3vl implements interleaved M-RoPE only)",
        )
    ]
    if not section:
        return [
            (False, "a model with towers needs rope_parameters.mrope_section (llama.cpp qwen3vl uses M-RoPE)")
        ] + checks
    return [
        (len(section) <= 4, f"mrope_section {section} has more than 4 sections"),
        (sum(section) == head_dim // 2, f"mrope_section {section} must sum to head_dim/2 = {head_dim // 2}"),
    ] + checks


def _vision_checks(v: dict[str, Any], hidden: int) -> list[tuple[bool, str]]:
    depth = v.get("depth")
    ds = v.get("deepstack_visual_indexes") or []
    return [
        (v.get("temporal_patch_size", 2) == 2, "vision temporal_patch_size != 2 (clip.cpp splits the Conv3d in two)"),
        (v.get("in_channels", 3) == 3, "vision in_channels != 3"),
        (
            v.get("hidden_act", "gelu_pytorch_tanh") == "gelu_pytorch_tanh",
            f"vision hidden_act {v.get('hidden_act')!r} (clip.cpp qwen3vl_merger: tanh GELU)",
        ),
        (
            v.get("out_hidden_size") == hidden,
            f"vision out_hidden_size {v.get('out_hidden_size')} != text hidden_size {hidden}",
        ),
        (all(0 <= i < depth for i in ds), f"deepstack_visual_indexes {ds} outside 0..{depth - 1}"),
        (len(set(ds)) == len(ds), f"deepstack_visual_indexes {ds} repeats a layer"),
    ]


def _audio_checks(a: dict[str, Any], hidden: int) -> list[tuple[bool, str]]:
    return [
        (a.get("n_window", 50) == 50, f"audio n_window {a.get('n_window')} (clip.cpp qwen3a: 100-frame chunks)"),
        (
            a.get("n_window_infer", 800) == 800,
            f"audio n_window_infer {a.get('n_window_infer')} (mtmd qwen3a: 800-frame attention windows)",
        ),
        (
            a.get("activation_function", "gelu") == "gelu",
            f"audio activation_function {a.get('activation_function')!r} (clip.cpp qwen3a: erf GELU)",
        ),
        (not a.get("scale_embedding", False), "audio scale_embedding=true (clip.cpp qwen3a does not scale)"),
        (a.get("output_dim") == hidden, f"audio output_dim {a.get('output_dim')} != text hidden_size {hidden}"),
    ]


def text_rope(ckpt: Checkpoint) -> dict[str, Any]:
    return text_rope_parameters(ckpt.text)
