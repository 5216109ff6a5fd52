"""Hugging Face → GGUF tensor names, as data.

Each table maps a Hugging Face *base* name (no ``.weight`` / ``.bias``; ``{bid}`` = a block index) to a `Rule`: the
GGUF base name llama.cpp looks up, the reshaping step (a named function in `RESHAPES`) and how the GGUF block index
derives from the Hugging Face one. The suffix is carried over unchanged. The GGUF names are the ones the vendored
llama.cpp loads (src/llama-arch.cpp for the text model, tools/mtmd/clip-impl.h for the towers) and the ones its own
convert_hf_to_gguf.py writes; each line names the Hugging Face module it comes from.

Text: exactly Qwen3ForCausalLM's parameter names (`checkpoint.py` folds Qwen3-VL's ``model.language_model.`` into
``model.``). Vision: transformers' Qwen3VLVisionModel under ``model.visual.``. Audio: transformers'
Qwen3OmniMoeAudioEncoder under ``model.audio_tower.``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch

from .errors import ConversionError


@dataclass(frozen=True)
class Rule:
    gguf: str  # GGUF base name; "{bid}" is filled in
    reshape: str = "none"  # key into RESHAPES
    index: str = "same"  # "same": GGUF {bid} = HF {bid}; "deepstack": HF list position -> vision layer index


# --- text decoder: arch `qwen3` (text-only checkpoints) and `qwen3vl` (with towers) share these names ------------
TEXT_TENSORS: dict[str, Rule] = {
    "model.embed_tokens": Rule("token_embd"),  # Qwen3Model.embed_tokens
    "model.norm": Rule("output_norm"),  # Qwen3Model.norm
    "lm_head": Rule("output"),  # Qwen3ForCausalLM.lm_head (absent on disk when tied)
    "model.layers.{bid}.input_layernorm": Rule("blk.{bid}.attn_norm"),
    "model.layers.{bid}.self_attn.q_proj": Rule("blk.{bid}.attn_q"),
    "model.layers.{bid}.self_attn.k_proj": Rule("blk.{bid}.attn_k"),
    "model.layers.{bid}.self_attn.v_proj": Rule("blk.{bid}.attn_v"),
    "model.layers.{bid}.self_attn.o_proj": Rule("blk.{bid}.attn_output"),
    "model.layers.{bid}.self_attn.q_norm": Rule("blk.{bid}.attn_q_norm"),  # Qwen3's per-head RMSNorm on q
    "model.layers.{bid}.self_attn.k_norm": Rule("blk.{bid}.attn_k_norm"),  # ... and on k
    "model.layers.{bid}.post_attention_layernorm": Rule("blk.{bid}.ffn_norm"),
    "model.layers.{bid}.mlp.gate_proj": Rule("blk.{bid}.ffn_gate"),
    "model.layers.{bid}.mlp.up_proj": Rule("blk.{bid}.ffn_up"),
    "model.layers.{bid}.mlp.down_proj": Rule("blk.{bid}.ffn_down"),
}

# --- vision tower (Qwen3VLVisionModel) → mmproj, projector `qwen3vl_merger` ---------------------------------------
VISION_TENSORS: dict[str, Rule] = {
    # Conv3d with temporal kernel 2 → two Conv2d kernels (clip.cpp adds the two frames' convolutions)
    "model.visual.patch_embed.proj": Rule("v.patch_embd", reshape="split_temporal"),
    "model.visual.pos_embed": Rule("v.position_embd"),  # learned 2-D grid, interpolated at runtime
    "model.visual.blocks.{bid}.norm1": Rule("v.blk.{bid}.ln1"),
    "model.visual.blocks.{bid}.norm2": Rule("v.blk.{bid}.ln2"),
    "model.visual.blocks.{bid}.attn.qkv": Rule("v.blk.{bid}.attn_qkv"),  # fused q|k|v, kept fused
    "model.visual.blocks.{bid}.attn.proj": Rule("v.blk.{bid}.attn_out"),
    "model.visual.blocks.{bid}.mlp.linear_fc1": Rule("v.blk.{bid}.ffn_up"),
    "model.visual.blocks.{bid}.mlp.linear_fc2": Rule("v.blk.{bid}.ffn_down"),
    # the merger's LayerNorm runs before the 2x2 patch merge: llama.cpp calls it the tower's post-norm
    "model.visual.merger.norm": Rule("v.post_ln"),
    "model.visual.merger.linear_fc1": Rule("mm.0"),  # indices 0/2 as in Qwen2-VL's nn.Sequential
    "model.visual.merger.linear_fc2": Rule("mm.2"),
    # deepstack mergers are keyed by the vision layer they tap (deepstack_visual_indexes), not their list position
    "model.visual.deepstack_merger_list.{bid}.norm": Rule("v.deepstack.{bid}.norm", index="deepstack"),
    "model.visual.deepstack_merger_list.{bid}.linear_fc1": Rule("v.deepstack.{bid}.fc1", index="deepstack"),
    "model.visual.deepstack_merger_list.{bid}.linear_fc2": Rule("v.deepstack.{bid}.fc2", index="deepstack"),
}

# --- audio tower (Qwen3OmniMoeAudioEncoder) → mmproj, projector `qwen3a` ------------------------------------------
AUDIO_TENSORS: dict[str, Rule] = {
    "model.audio_tower.conv2d{bid}": Rule("a.conv2d.{bid}", reshape="conv_bias_chw"),  # three stride-2 Conv2d
    "model.audio_tower.conv_out": Rule("a.conv_out"),  # Linear(channels * mel/8 → d_model), no bias
    "model.audio_tower.layers.{bid}.self_attn.q_proj": Rule("a.blk.{bid}.attn_q"),
    "model.audio_tower.layers.{bid}.self_attn.k_proj": Rule("a.blk.{bid}.attn_k"),  # no bias (Whisper-style)
    "model.audio_tower.layers.{bid}.self_attn.v_proj": Rule("a.blk.{bid}.attn_v"),
    "model.audio_tower.layers.{bid}.self_attn.out_proj": Rule("a.blk.{bid}.attn_out"),
    "model.audio_tower.layers.{bid}.self_attn_layer_norm": Rule("a.blk.{bid}.ln1"),
    "model.audio_tower.layers.{bid}.final_layer_norm": Rule("a.blk.{bid}.ln2"),
    "model.audio_tower.layers.{bid}.fc1": Rule("a.blk.{bid}.ffn_up"),
    "model.audio_tower.layers.{bid}.fc2": Rule("a.blk.{bid}.ffn_down"),
    "model.audio_tower.ln_post": Rule("a.post_ln"),
    "model.audio_tower.proj1": Rule("mm.a.mlp.1"),  # projector: proj1 → GELU → proj2 (to the text width)
    "model.audio_tower.proj2": Rule("mm.a.mlp.2"),
}

# Generated, not read: the audio tower's sinusoidal position table is a non-persistent buffer in transformers.
AUDIO_POSITION_EMBD = "a.position_embd.weight"


# --- reshaping steps: HF tensor → [(GGUF name suffix, tensor)], torch order --------------------------------------
def keep(t: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    return [("", t)]


def split_temporal(t: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Conv3d weight [C_out, C_in, T=2, P, P] → two Conv2d weights [C_out, C_in, P, P] named `.weight`, `.weight.1`.

    The bias (1-D) passes through."""
    if t.ndim == 1:
        return [("", t)]
    if t.ndim != 5 or t.shape[2] != 2:
        raise ConversionError(
            f"vision patch embedding has shape {tuple(t.shape)}; llama.cpp's qwen3vl_merger needs a Conv3d "
            "with temporal_patch_size 2"
        )
    # [C_out, C_in, 2, P, P] -> 2 x [C_out, C_in, P, P]
    return [("", t[:, :, 0]), (".1", t[:, :, 1])]


def conv_bias_chw(t: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Conv2d bias [C] → [C, 1, 1]: clip.cpp broadcasts it over a [W, H, C] feature map."""
    if t.ndim == 1:
        return [("", t.reshape(-1, 1, 1))]
    return [("", t)]


RESHAPES: dict[str, Callable[[torch.Tensor], list[tuple[str, torch.Tensor]]]] = {
    "none": keep,
    "split_temporal": split_temporal,
    "conv_bias_chw": conv_bias_chw,
}


# --- storage types: which tensors llama.cpp wants in a fixed type whatever --outtype says --------------------------
# First match wins; patterns are fnmatch globs over GGUF names. "outtype": the requested type. "f16_or_f32": F16 for
# an F16 file, F32 otherwise. Mirrors the vendored convert_hf_to_gguf.py (its prepare_tensors / tensor_force_quant).
TYPE_RULES: tuple[tuple[str, str], ...] = (
    ("*_norm.weight", "f32"),  # norms: ggml_mul with an F32 operand
    ("v.patch_embd.weight*", "f16_or_f32"),  # im2col kernel: F16 or F32 only
    ("a.conv2d.*.weight", "f16"),  # audio convolutions: upstream forces F16 (im2col)
    ("a.conv_out.weight", "f16"),  # upstream's ".conv" rule catches conv_out as well
    ("v.position_embd.weight", "f32"),  # position tables are added, interpolated: never quantized
    ("a.position_embd.weight", "f32"),
)


def storage_rule(gguf_name: str, ndim: int) -> str:
    """The storage rule ("f32", "f16", "f16_or_f32" or "outtype") for a GGUF tensor name."""
    if ndim <= 1:
        return "f32"
    for pattern, rule in TYPE_RULES:
        if fnmatchcase(gguf_name, pattern):
            return rule
    if not gguf_name.endswith(".weight"):  # biases reshaped to [C, 1, 1], ".weight.1" is caught above
        return "f32"
    return "outtype"


# --- name matching ---------------------------------------------------------------------------------------------
def _compile(table: dict[str, Rule]) -> list[tuple[re.Pattern[str], Rule]]:
    out = []
    for hf, rule in table.items():
        pattern = re.escape(hf).replace(re.escape("{bid}"), r"(?P<bid>\d+)")
        out.append((re.compile(pattern + r"(?P<suffix>\.weight|\.bias)"), rule))
    return out


_COMPILED = {id(t): _compile(t) for t in (TEXT_TENSORS, VISION_TENSORS, AUDIO_TENSORS)}


@dataclass(frozen=True)
class Match:
    rule: Rule
    bid: int | None
    suffix: str  # ".weight" / ".bias"


def match(table: dict[str, Rule], hf_name: str) -> Match | None:
    for pattern, rule in _COMPILED[id(table)]:
        m = pattern.fullmatch(hf_name)
        if m:
            bid = m.groupdict().get("bid")
            return Match(rule, int(bid) if bid is not None else None, m.group("suffix"))
    return None


def gguf_base_name(m: Match, deepstack_indexes: list[int] | None = None) -> str:
    bid = m.bid
    if m.rule.index == "deepstack":
        if not deepstack_indexes or bid is None or bid >= len(deepstack_indexes):
            raise ConversionError(
                f"deepstack merger {bid} has no entry in vision_config.deepstack_visual_indexes={deepstack_indexes}"
            )
        bid = deepstack_indexes[bid]
    return m.rule.gguf.format(bid=bid)


def hf_name(table: dict[str, Rule], gguf_name: str) -> str | None:
    """The inverse lookup (for verification): GGUF name → Hugging Face name, for one-to-one rules."""
    for hf, rule in table.items():
        if rule.reshape != "none" or rule.index != "same":
            continue
        pattern = re.escape(rule.gguf).replace(re.escape("{bid}"), r"(?P<bid>\d+)")
        m = re.fullmatch(pattern + r"(?P<suffix>\.weight|\.bias)", gguf_name)
        if m:
            bid = m.groupdict().get("bid")
            return hf.format(bid=bid) + m.group("suffix")
    return None
