"""What the vendored llama.cpp can run: config values it cannot reproduce are refused before anything is written."""

from __future__ import annotations

from typing import Any

from ..formats.folder import Checkpoint
from ..formats.validate import ROPE_TYPES, text_rope_parameters
from .errors import ConversionError


def check_llama_cpp_support(ckpt: Checkpoint) -> None:
    """Config values the vendored llama.cpp cannot reproduce: one error listing every problem."""
    t = ckpt.text
    problems: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    need(t.get("hidden_act", "silu") == "silu", f"text hidden_act {t.get('hidden_act')!r} (llama.cpp qwen3: silu)")
    need(not t.get("attention_bias", False), "text attention_bias=true (llama.cpp qwen3 has no q/k/v biases)")
    need(not t.get("use_sliding_window", False), "text use_sliding_window=true (llama.cpp qwen3: full attention)")
    layer_types = t.get("layer_types") or []
    need(
        all(lt == "full_attention" for lt in layer_types),
        "text layer_types other than full_attention (no sliding window in llama.cpp qwen3)",
    )
    rope = text_rope_parameters(t)
    need(rope["rope_type"] in ROPE_TYPES, f"rope_type {rope['rope_type']!r} (supported: {', '.join(ROPE_TYPES)})")
    if rope["rope_type"] == "yarn":
        need("original_max_position_embeddings" in rope, "yarn rope without original_max_position_embeddings")
    if ckpt.has_towers:
        section = rope.get("mrope_section")
        head_dim = t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"]
        if not section:
            problems.append("a model with towers needs rope_parameters.mrope_section (llama.cpp qwen3vl uses M-RoPE)")
        else:
            need(len(section) <= 4, f"mrope_section {section} has more than 4 sections")
            need(sum(section) == head_dim // 2, f"mrope_section {section} must sum to head_dim/2 = {head_dim // 2}")
        need(
            rope.get("mrope_interleaved", True) is not False,
            "mrope_interleaved=false (llama.cpp qwen3vl implements interleaved M-RoPE only)",
        )

    hidden = t["hidden_size"]
    if (v := ckpt.vision) is not None:
        need(
            v.get("temporal_patch_size", 2) == 2, "vision temporal_patch_size != 2 (clip.cpp splits the Conv3d in two)"
        )
        need(v.get("in_channels", 3) == 3, "vision in_channels != 3")
        need(
            v.get("hidden_act", "gelu_pytorch_tanh") == "gelu_pytorch_tanh",
            f"vision hidden_act {v.get('hidden_act')!r} (clip.cpp qwen3vl_merger: tanh GELU)",
        )
        need(
            v.get("out_hidden_size") == hidden,
            f"vision out_hidden_size {v.get('out_hidden_size')} != text hidden_size {hidden}",
        )
        depth = v.get("depth")
        ds = v.get("deepstack_visual_indexes") or []
        need(all(0 <= i < depth for i in ds), f"deepstack_visual_indexes {ds} outside 0..{depth - 1}")
        need(len(set(ds)) == len(ds), f"deepstack_visual_indexes {ds} repeats a layer")
    if (a := ckpt.audio) is not None:
        need(a.get("n_window", 50) == 50, f"audio n_window {a.get('n_window')} (clip.cpp qwen3a: 100-frame chunks)")
        need(
            a.get("n_window_infer", 800) == 800,
            f"audio n_window_infer {a.get('n_window_infer')} (mtmd qwen3a: 800-frame attention windows)",
        )
        need(
            a.get("activation_function", "gelu") == "gelu",
            f"audio activation_function {a.get('activation_function')!r} (clip.cpp qwen3a: erf GELU)",
        )
        need(not a.get("scale_embedding", False), "audio scale_embedding=true (clip.cpp qwen3a does not scale)")
        need(a.get("output_dim") == hidden, f"audio output_dim {a.get('output_dim')} != text hidden_size {hidden}")
    if problems:
        raise ConversionError(
            f"{ckpt.folder}: llama.cpp cannot run this checkpoint as converted: " + "; ".join(problems)
        )


def text_rope(ckpt: Checkpoint) -> dict[str, Any]:
    return text_rope_parameters(ckpt.text)
