"""GGUF metadata: the text model's hyperparameters and the mmproj's clip.* keys.

Only keys the vendored llama.cpp reads (src/llama-model.cpp for qwen3 / qwen3vl, tools/mtmd/clip.cpp for
qwen3vl_merger / qwen3a), written through gguf-py's GGUFWriter helpers so that every key name comes from
`gguf.Keys`.
"""

from __future__ import annotations

import math

import gguf

from ..formats.folder import Checkpoint
from .support import text_rope

ARCH_TEXT_ONLY = "qwen3"  # gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN3]
ARCH_MULTIMODAL = "qwen3vl"  # M-RoPE + deepstack inputs
ARCH_MMPROJ = "clip"

VISION_PROJECTOR = "qwen3vl_merger"  # gguf.VisionProjectorType.QWEN3VL
AUDIO_PROJECTOR = "qwen3a"  # gguf.VisionProjectorType.QWEN3A

# Qwen3-VL's image normalisation (its preprocessor_config.json), used when the folder has no processor config.
QWEN3VL_IMAGE_MEAN = (0.5, 0.5, 0.5)
QWEN3VL_IMAGE_STD = (0.5, 0.5, 0.5)
# Layer-norm epsilons the towers hard-code in transformers (nn.LayerNorm(eps=1e-6) in Qwen3-VL's vision blocks,
# the nn.LayerNorm default 1e-5 in Qwen3-Omni's audio encoder); the configs carry no such field.
VISION_LAYER_NORM_EPS = 1e-6
AUDIO_LAYER_NORM_EPS = 1e-5


def text_arch(ckpt: Checkpoint) -> str:
    return ARCH_MULTIMODAL if ckpt.has_towers else ARCH_TEXT_ONLY


def add_general(writer: gguf.GGUFWriter, kind: str, name: str, file_type: int) -> None:
    writer.add_type(kind)
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    total, shared, expert, n_expert = writer.get_total_parameter_count()
    if total > 0:
        writer.add_size_label(gguf.size_label(total, shared, expert, n_expert))


def add_text_hparams(writer: gguf.GGUFWriter, ckpt: Checkpoint) -> None:
    t = ckpt.text
    head_dim = t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"]
    writer.add_block_count(t["num_hidden_layers"])
    writer.add_context_length(t["max_position_embeddings"])
    writer.add_embedding_length(t["hidden_size"])
    writer.add_feed_forward_length(t["intermediate_size"])
    writer.add_head_count(t["num_attention_heads"])
    writer.add_head_count_kv(t.get("num_key_value_heads") or t["num_attention_heads"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(t.get("rms_norm_eps", 1e-6))

    rope = text_rope(ckpt)
    writer.add_rope_freq_base(rope.get("rope_theta", 10000.0))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif rope["rope_type"] == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope["factor"])
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        for key, add in (
            ("extrapolation_factor", writer.add_rope_scaling_yarn_ext_factor),
            ("attention_factor", writer.add_rope_scaling_yarn_attn_factor),
            ("beta_fast", writer.add_rope_scaling_yarn_beta_fast),
            ("beta_slow", writer.add_rope_scaling_yarn_beta_slow),
        ):
            if rope.get(key) is not None:
                add(rope[key])

    if ckpt.has_towers:
        # qwen3vl: rotary dims per (time, height, width, extra) section; llama.cpp interleaves them (IMROPE)
        section = list(rope["mrope_section"])
        writer.add_rope_dimension_sections(section + [0] * (4 - len(section)))
        deepstack = (ckpt.vision or {}).get("deepstack_visual_indexes") or []
        # the text model's input width is n_embd * (1 + this): deepstack features ride along the embeddings
        writer.add_num_deepstack_layers(len(deepstack))


def image_normalisation(ckpt: Checkpoint) -> tuple[list[float], list[float]]:
    for filename, sub in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        cfg = ckpt.read_json(filename)
        if cfg is None:
            continue
        if sub is not None:
            cfg = cfg.get(sub) or {}
        if "image_mean" in cfg and "image_std" in cfg:
            return [float(x) for x in cfg["image_mean"]], [float(x) for x in cfg["image_std"]]
    return list(QWEN3VL_IMAGE_MEAN), list(QWEN3VL_IMAGE_STD)


def add_mmproj_hparams(writer: gguf.GGUFWriter, ckpt: Checkpoint) -> None:
    n_embd_text = ckpt.text["hidden_size"]
    # One file, two encoders: only the per-modality projector keys. clip.cpp reads the global
    # clip.projector_type first and would apply it to both encoders.
    if (v := ckpt.vision) is not None:
        writer.add_clip_has_vision_encoder(True)
        writer.add_clip_vision_projector_type(VISION_PROJECTOR)
        writer.add_vision_projection_dim(n_embd_text)
        # the learned position grid is sqrt(num_position_embeddings) patches wide
        writer.add_vision_image_size(int(math.isqrt(v["num_position_embeddings"]) * v["patch_size"]))
        writer.add_vision_patch_size(v["patch_size"])
        writer.add_vision_embedding_length(v["hidden_size"])
        writer.add_vision_feed_forward_length(v["intermediate_size"])
        writer.add_vision_block_count(v["depth"])
        writer.add_vision_head_count(v["num_heads"])
        mean, std = image_normalisation(ckpt)
        writer.add_vision_image_mean(mean)
        writer.add_vision_image_std(std)
        writer.add_vision_use_gelu(True)  # tanh GELU (gelu_pytorch_tanh)
        writer.add_vision_spatial_merge_size(v.get("spatial_merge_size", 2))
        writer.add_vision_attention_layernorm_eps(VISION_LAYER_NORM_EPS)
        deepstack = set(v.get("deepstack_visual_indexes") or [])
        if deepstack:
            writer.add_vision_is_deepstack_layers([i in deepstack for i in range(v["depth"])])
    if (a := ckpt.audio) is not None:
        writer.add_clip_has_audio_encoder(True)
        writer.add_clip_audio_projector_type(AUDIO_PROJECTOR)
        writer.add_audio_projection_dim(n_embd_text)
        writer.add_audio_embedding_length(a["d_model"])
        writer.add_audio_feed_forward_length(a["encoder_ffn_dim"])
        writer.add_audio_block_count(a["encoder_layers"])
        writer.add_audio_head_count(a["encoder_attention_heads"])
        writer.add_audio_num_mel_bins(a["num_mel_bins"])
        writer.add_audio_attention_layernorm_eps(AUDIO_LAYER_NORM_EPS)
