"""What a checkpoint must hold, and what llama.cpp can run.

Expected tensor names and shapes come from transformers' own modules built on the meta device from the checkpoint's
config (Qwen3ForCausalLM, Qwen3VLVisionModel, Qwen3OmniMoeAudioEncoder): no hand-kept list of parameter names, and
a tensor whose shape disagrees with the config is caught before anything is written. The capability checks below
list each config value the vendored llama.cpp hard-codes or does not implement.
"""

from __future__ import annotations

from typing import Any

import torch

from .checkpoint import Checkpoint
from .errors import ConversionError
from .tensor_map import AUDIO_PREFIX, VISION_PREFIX

_ROPE_TYPES = ("default", "linear", "yarn")


def _meta_state_shapes(module_factory) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        module = module_factory()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _text_rope(text: dict[str, Any]) -> dict[str, Any]:
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    if "rope_theta" not in rope and "rope_theta" in text:
        rope["rope_theta"] = text["rope_theta"]
    rope.setdefault("rope_type", rope.get("type", "default"))
    return rope


def expected_tensors(ckpt: Checkpoint) -> dict[str, tuple[int, ...]]:
    """Every tensor the checkpoint must have on disk (name → torch shape)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    text = {k: v for k, v in ckpt.text.items() if k not in ("model_type", "architectures", "auto_map")}
    rope = {k: v for k, v in _text_rope(ckpt.text).items() if k not in ("mrope_section", "mrope_interleaved")}
    text["rope_parameters"] = rope
    text.pop("rope_scaling", None)
    text["tie_word_embeddings"] = ckpt.tie_word_embeddings
    try:
        text_cfg = Qwen3Config(**text)
        shapes = _meta_state_shapes(lambda: Qwen3ForCausalLM(text_cfg))
    except (TypeError, ValueError) as e:
        raise ConversionError(f"text config cannot build a Qwen3 decoder: {e}") from e
    if ckpt.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)

    if ckpt.vision is not None:
        from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

        vcfg = Qwen3VLVisionConfig(**{k: v for k, v in ckpt.vision.items() if k != "model_type"})
        for k, v in _meta_state_shapes(lambda: Qwen3VLVisionModel(vcfg)).items():
            shapes[VISION_PREFIX + k] = v
    if ckpt.audio is not None:
        from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

        acfg = Qwen3OmniMoeAudioEncoderConfig(**{k: v for k, v in ckpt.audio.items() if k != "model_type"})
        for k, v in _meta_state_shapes(lambda: Qwen3OmniMoeAudioEncoder(acfg)).items():
            shapes[AUDIO_PREFIX + k] = v
    return shapes


def check_tensors(ckpt: Checkpoint) -> None:
    """Missing / unexpected tensors and shapes that disagree with the config: one error listing all of them."""
    expected = expected_tensors(ckpt)
    present = {name: t.shape for name, t in ckpt.tensors.items()}
    if ckpt.tie_word_embeddings:
        present.pop("lm_head.weight", None)  # tied: transformers ignores a stored copy, so do we
    missing = sorted(set(expected) - set(present))
    unexpected = sorted(set(present) - set(expected))
    wrong = sorted(n for n in set(expected) & set(present) if tuple(expected[n]) != tuple(present[n]))
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {_short(missing)}")
    if unexpected:
        problems.append(
            f"tensors the config does not account for ({len(unexpected)}): {_short(unexpected)} "
            "(a tower without its *_config, or a different architecture)"
        )
    if wrong:
        details = [f"{n} is {list(present[n])}, config implies {list(expected[n])}" for n in wrong]
        problems.append(f"shapes inconsistent with config.json ({len(wrong)}): {_short(details)}")
    if problems:
        raise ConversionError(f"{ckpt.folder}: " + "; ".join(problems))


def _short(items: list[str], n: int = 6) -> str:
    head = ", ".join(items[:n])
    return head + (f", … ({len(items) - n} more)" if len(items) > n else "")


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
    rope = _text_rope(t)
    need(rope["rope_type"] in _ROPE_TYPES, f"rope_type {rope['rope_type']!r} (supported: {', '.join(_ROPE_TYPES)})")
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
    return _text_rope(ckpt.text)
