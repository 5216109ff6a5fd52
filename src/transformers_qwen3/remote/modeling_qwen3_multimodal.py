"""Qwen3-Multimodal: one dense Qwen3 decoder reading text, images, video and audio in a single sequence.

How it is built, and where it differs from the models it is made of:

- Text decoder: transformers' own ``Qwen3DecoderLayer`` and ``Qwen3RMSNorm``, under Qwen3ForCausalLM's exact
  parameter names (``model.embed_tokens``, ``model.layers.N...``, ``model.norm``, ``lm_head``), so a real Qwen3
  checkpoint loads unchanged and text-only logits are bit-identical to ``Qwen3ForCausalLM``.
- Rotary: Qwen3-VL's interleaved multimodal rotary (M-RoPE). For text-only input the three position components are
  equal, which reduces it exactly to Qwen3's 1-D rotary (same frequencies, same cos/sin values).
- Vision tower (``model.visual``): transformers' ``Qwen3VLVisionModel``; its deepstack features are added to the
  hidden states after the first decoder layers at visual positions, as Qwen3-VL does.
- Audio tower (``model.audio_tower``): transformers' ``Qwen3OmniMoeAudioEncoder``; audio tokens take 1-D positions
  (all three M-RoPE components advance together), as in Qwen3-Omni. Deepstack adds nothing at audio positions.
- Generic interface: the same as the native classes', through transformers' own mechanisms: the KV cache as
  ``cache`` (5.24's name) or ``past_key_values`` (``bridge_cache_keyword``), outputs under the release's own field
  name, ``return_dict=False`` tuples (``@can_return_tuple``), Qwen3ForCausalLM's tied-weight table and
  tensor/pipeline/FSDP plans for the decoder, transformers' own ``prepare_inputs_for_generation`` (so
  ``generate(inputs_embeds=...)`` works), and ``get_image_features`` / ``get_video_features`` /
  ``get_audio_features`` returning Qwen3-VL's and Qwen3-Omni's output types.
- Differs from Qwen3-VL in structure: the base model runs the decoder itself (no ``language_model`` submodule, so
  the keys stay Qwen3's), hence ``use_cache`` and the decoder's parallelism plans sit on the composite config.
- Per-layer FFN widths: ``text_config.intermediate_size`` may list one width per layer (a compressed model,
  issue 11); each layer is still transformers' ``Qwen3DecoderLayer``, its MLP built at that width.
- Compile: the text path (text-only prefill, and every decoding step, which is what ``generate()`` compiles) traces
  as one graph; the media path (a prefill with images/video/audio) does not, and ``generate()`` never compiles it.

Design choice: the towers and decoder layers are *composed* from transformers' modules rather than re-written.
They are then exact by construction (parity tests against the native models still check our glue: positions,
scatter, deepstack, batching), at the price of depending on transformers internals that can move between releases.
That price is paid in ``pyproject.toml``: the supported transformers range is pinned to the releases CI tests
(floor and ceiling), and the ceiling is raised only after the parity suite passes on the new release. Internals that
moved inside that range are bridged by feature tests in the "Bridges" section below.

This file ships to the Hub as remote code: it imports only the standard library, torch, transformers and its
sibling configuration file.
"""

import copy
import functools
import inspect
import itertools

import torch
import transformers.modeling_utils as modeling_utils
from torch import nn
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GenericForSequenceClassification
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3Attention,
    Qwen3DecoderLayer,
    Qwen3ForCausalLM,
    Qwen3RMSNorm,
)
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder
from transformers.models.qwen3_vl.modeling_qwen3_vl import (
    BaseModelOutputWithDeepstackFeatures,
    Qwen3VLTextRotaryEmbedding,
    Qwen3VLVisionModel,
)
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import accepts_precomputed_kwargs, can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_qwen3_multimodal import Qwen3MultimodalConfig

# Modality ids of ``mm_token_type_ids`` (Qwen3-VL's convention, extended with audio).
TEXT, IMAGE, VIDEO, AUDIO = 0, 1, 2, 3


# --------------------------------------------------------------------------------------------------------------------
# Bridges to older transformers releases (docs/compatibility.md). Each is a feature test, not a version check.
# --------------------------------------------------------------------------------------------------------------------


def _cache_name(takes_cache: bool) -> str:
    # transformers 5.24 renamed the KV-cache keyword and output field from ``past_key_values`` to ``cache``.
    return "cache" if takes_cache else "past_key_values"


MASK_CACHE_KEYWORD = _cache_name("cache" in inspect.signature(create_causal_mask).parameters)
LAYER_CACHE_KEYWORD = _cache_name("cache" in inspect.signature(Qwen3DecoderLayer.forward).parameters)
OUTPUT_CACHE_FIELD = _cache_name("cache" in BaseModelOutputWithPast.__dataclass_fields__)


def bridge_cache_keyword(forward):
    """Our forwards take the KV cache as ``cache`` (5.24's name) and also accept ``past_key_values``.

    On 5.24+ that is transformers' own bridge, which warns as the native models do. Before 5.24,
    ``past_key_values`` is the only name transformers itself passes (generate, GenericForSequenceClassification),
    so it is renamed silently.
    """
    if OUTPUT_CACHE_FIELD == "cache":
        return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(forward)

    @functools.wraps(forward)
    def renamed(*args, **kwargs):
        if "past_key_values" in kwargs:
            if kwargs.get("cache") is not None:
                raise ValueError("Pass the KV cache as `cache` or as `past_key_values`, not both.")
            kwargs["cache"] = kwargs.pop("past_key_values")
        return forward(*args, **kwargs)

    return renamed


def _slice_logits_to_keep(hidden_states, logits_to_keep):
    """transformers < 5.23 has no ``slice_logits_to_keep``; this is what its Qwen3ForCausalLM did inline."""
    slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
    return hidden_states[:, slice_indices, :]


slice_logits_to_keep = getattr(modeling_utils, "slice_logits_to_keep", _slice_logits_to_keep)


# --------------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------------


class Qwen3MultimodalRotaryEmbedding(Qwen3VLTextRotaryEmbedding):
    """Qwen3-VL's interleaved M-RoPE over the text config.

    Accepts 1-D positions ``[batch, seq]`` (text-only: identical to Qwen3's rotary) or 3-D ``[3, batch, seq]``.
    Without ``mrope_section`` in the rope parameters only 1-D positions are meaningful; we fall back to all
    frequencies on the temporal component, which is what equal components give anyway.
    """


def scatter_features(inputs_embeds, mask, features, what):
    """Write ``features`` [n, hidden] into ``inputs_embeds`` [batch, seq, hidden] where ``mask`` [batch, seq] is set."""
    n_tokens, n_features = int(mask.sum()), features.shape[0]
    if n_tokens != n_features:
        raise ValueError(
            f"{what}: the prompt has {n_tokens} placeholder tokens but the tower produced {n_features} features. "
            f"Build inputs with the Qwen3Multimodal processor (it expands each placeholder to the right count), "
            f"and pass exactly the media the prompt names."
        )
    features = features.to(inputs_embeds.device, inputs_embeds.dtype)
    return inputs_embeds.masked_scatter(mask[..., None].expand_as(inputs_embeds), features)


def merge_deepstack(old_mask, old_stack, new_mask, new_stack):
    """Images and videos both present: one deepstack row list per layer, in sequence order over both masks."""
    joint = old_mask | new_mask
    merged = []
    for old, new in zip(old_stack, new_stack, strict=True):
        rows = old.new_zeros(int(joint.sum()), old.shape[-1])
        rows[old_mask[joint]] = old
        rows[new_mask[joint]] = new
        merged.append(rows)
    return joint, merged


# --------------------------------------------------------------------------------------------------------------------
# Compression plans in transformers (issue 11; docs/compression.md, "memory_budget"). A plan names each decoder
# weight's ggml type; the torch runtime holds F16 as a plain Linear and Q8_0 as bitsandbytes LLM.int8, through
# transformers' own quantization_config. One home: transformers_qwen3.compress uses these too.
# --------------------------------------------------------------------------------------------------------------------

PLANS_FILE = "compression_plans.json"  # the torch plans our tools wrote into the folder, one per budget
_WIDE_TYPES = ("F32", "F16", "BF16")
_ALWAYS_WIDE = ("lm_head", "model.visual", "model.audio_tower")  # tied head and towers: outside a plan's scope
_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def plan_quantization_config(types):
    """``types``: decoder tensor name -> ggml type. The BitsAndBytesConfig holding the Q8_0 ones (full module names
    of the wide ones skipped: bitsandbytes matches a pattern from the start of the name), or None."""
    from transformers import BitsAndBytesConfig

    bad = sorted({t for t in types.values() if t != "Q8_0" and t not in _WIDE_TYPES})
    if bad:
        raise ValueError(
            f"the plan holds weights as {', '.join(bad)}; the torch runtime has F16 and Q8_0 only: plan again with "
            "`transformers-qwen3 plan ... --runtime torch`"
        )
    names = {n[: -len(".weight")] if n.endswith(".weight") else n: t for n, t in types.items()}
    if not any(t == "Q8_0" for t in names.values()):
        return None
    wide = sorted(n.replace(".", r"\.") for n, t in names.items() if t in _WIDE_TYPES)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=[*_ALWAYS_WIDE, *wide])


def budget_quantization_config(pretrained_model_name_or_path, memory_budget, **hub_kwargs):
    """The quantization_config of the largest plan in the folder's compression_plans.json that fits
    ``memory_budget`` ("4GB", "3.5GiB", or bytes). Plans come from transformers-qwen3's tools; this code cannot
    calibrate or plan, and a plan that cuts FFN widths or layers needs transformers-qwen3's ``compress``."""
    import json
    import re

    from transformers.utils import cached_file

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(memory_budget))
    if not m or m.group(2).lower() not in _BYTE_UNITS:
        raise ValueError(f"memory_budget={memory_budget!r}: give bytes with a unit, e.g. '4GB', '3.5GiB', '800MB'")
    budget = int(float(m.group(1)) * _BYTE_UNITS[m.group(2).lower()])
    path = cached_file(
        pretrained_model_name_or_path, PLANS_FILE, _raise_exceptions_for_missing_entries=False, **hub_kwargs
    )
    if path is None:
        raise ValueError(
            f"memory_budget: {pretrained_model_name_or_path} carries no {PLANS_FILE}. Plans come from "
            "transformers-qwen3 (`pip install transformers-qwen3`): `transformers-qwen3 calibrate`, `transformers-qwen3 "
            "plan --runtime torch`, then `transformers_qwen3.compress.write_budget_plans(folder, plans)`"
        )
    with open(path, encoding="utf-8") as f:
        plans = json.load(f).get("plans") or []
    fitting = [p for p in plans if p["bytes"] <= budget]
    if not fitting:
        smallest = min((p["bytes"] for p in plans), default=None)
        raise ValueError(
            f"memory_budget {budget} bytes is below the smallest plan this folder carries ({smallest} bytes); give "
            "at least that, or make a smaller plan with `transformers-qwen3 plan --runtime torch`"
        )
    plan = max(fitting, key=lambda p: p["bytes"])
    if any(layer["skip"] or layer["ffn_width"] != layer["ffn_full"] for layer in plan["layers"]):
        raise ValueError(
            f"the plan for memory_budget {budget} bytes cuts FFN widths or layers, which needs transformers-qwen3: "
            "`pip install transformers-qwen3`, then `transformers_qwen3.compress.compress(model, plan)` (or load the "
            "folder `transformers_qwen3.compress.apply.compress_folder` writes)"
        )
    return plan_quantization_config({n: t["type"] for n, t in plan["tensors"].items()})


# --------------------------------------------------------------------------------------------------------------------
# PreTrainedModel
# --------------------------------------------------------------------------------------------------------------------


class Qwen3MultimodalPreTrainedModel(PreTrainedModel):
    config: Qwen3MultimodalConfig
    config_class = Qwen3MultimodalConfig
    base_model_prefix = "model"
    input_modalities = ("image", "video", "audio", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen3DecoderLayer", "Qwen3VLVisionBlock", "Qwen3OmniMoeAudioEncoderLayer"]
    _skip_keys_device_placement = [OUTPUT_CACHE_FIELD]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # True as for Qwen3 / Qwen3-VL: the text path (what generate() compiles, the decoding steps) traces as one graph.
    # The media path does not (its placeholder-count check and M-RoPE index loop read tensor values on the host);
    # media are encoded in the prefill step, which generate() never compiles.
    _can_compile_fullgraph = True
    _can_record_outputs = {"hidden_states": Qwen3DecoderLayer, "attentions": Qwen3Attention}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, memory_budget=None, **kwargs):
        """transformers' ``from_pretrained``, plus ``memory_budget="4GB"``: load with the quantization of the largest
        compression plan the folder carries that fits (``budget_quantization_config``)."""
        if memory_budget is not None:
            if kwargs.get("quantization_config") is not None:
                raise ValueError("give memory_budget or quantization_config, not both")
            hub = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
            config = budget_quantization_config(pretrained_model_name_or_path, memory_budget, **hub)
            if config is not None:
                kwargs["quantization_config"] = config
                kwargs.setdefault("device_map", "cpu" if not torch.cuda.is_available() else "auto")
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    # No _init_weights override: the base class's re-derives the RotaryEmbedding ``inv_freq`` buffers that models
    # built on the meta device need, and the towers are PreTrainedModels that initialise their own buffers.


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------


def _decoder_layer(text_config, layer_idx: int) -> Qwen3DecoderLayer:
    """transformers' Qwen3DecoderLayer; with per-layer FFN widths (a compressed model), its MLP is built from a
    copy of the config holding this layer's width. The attention keeps the shared config: it reads the attention
    implementation from it at run time, and ``set_attn_implementation`` changes only the shared one."""
    if isinstance(text_config.intermediate_size, int):
        return Qwen3DecoderLayer(text_config, layer_idx)
    layer_config = copy.copy(text_config)
    layer_config.intermediate_size = text_config.intermediate_size[layer_idx]
    layer = Qwen3DecoderLayer(layer_config, layer_idx)
    layer.self_attn.config = text_config
    return layer


class Qwen3MultimodalModel(Qwen3MultimodalPreTrainedModel):
    """Embeddings + optional towers + the Qwen3 decoder stack. Returns the final normed hidden states."""

    def __init__(self, config: Qwen3MultimodalConfig):
        super().__init__(config)
        config = self.config
        # The base class resolves the attention implementation on the top-level config only; the decoder layers
        # read it from text_config (the towers are PreTrainedModels and resolve their own), so pass it down.
        config.text_config._attn_implementation = config._attn_implementation
        text_config = config.text_config
        self.padding_idx = text_config.pad_token_id
        self.vocab_size = text_config.vocab_size

        self.embed_tokens = nn.Embedding(text_config.vocab_size, text_config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [_decoder_layer(text_config, layer_idx) for layer_idx in range(text_config.num_hidden_layers)]
        )
        self.norm = Qwen3RMSNorm(text_config.hidden_size, eps=text_config.rms_norm_eps)
        self.rotary_emb = Qwen3MultimodalRotaryEmbedding(config=text_config)
        self.has_sliding_layers = "sliding_attention" in text_config.layer_types

        self.visual = Qwen3VLVisionModel._from_config(config.vision_config) if config.vision_config else None
        self.audio_tower = Qwen3OmniMoeAudioEncoder._from_config(config.audio_config) if config.audio_config else None
        self.rope_deltas = None  # [batch, 1]: M-RoPE position minus sequence index, kept for decoding steps
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    # ---- towers ------------------------------------------------------------------------------------------------

    # Same signatures and outputs as Qwen3VLModel's / Qwen3OmniMoeThinkerModel's, so generic multimodal code works.

    @accepts_precomputed_kwargs(modality="image")
    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.LongTensor | None = None, **kwargs
    ) -> tuple | BaseModelOutputWithDeepstackFeatures:
        """Vision tower on flattened patches [n_patches, channels * patch volume], as Qwen3-VL's.

        ``pooler_output``: one [n_tokens_i, hidden] tensor per image (a tuple); ``deepstack_features``: one such
        tuple per deepstack layer; ``last_hidden_state``: the tower's unmerged output.
        """
        if self.visual is None:
            raise ValueError("This checkpoint has no vision tower (vision_config is None); it cannot read images.")
        out = self.visual(pixel_values.type(self.visual.dtype), grid_thw=image_grid_thw, return_dict=True, **kwargs)
        split_sizes = (image_grid_thw.prod(-1) // self.visual.spatial_merge_size**2).tolist()
        out.pooler_output = torch.split(out.pooler_output, split_sizes)
        out.deepstack_features = [torch.split(features, split_sizes) for features in out.deepstack_features]
        return out

    @accepts_precomputed_kwargs(modality="video")
    @can_return_tuple
    def get_video_features(
        self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.LongTensor | None = None, **kwargs
    ) -> tuple | BaseModelOutputWithDeepstackFeatures:
        """Videos go through the vision tower exactly as images (one entry per video in ``pooler_output``)."""
        return self.get_image_features(pixel_values_videos, video_grid_thw, **kwargs)

    @accepts_precomputed_kwargs(modality="audio")
    @can_return_tuple
    def get_audio_features(
        self,
        input_features: torch.Tensor,
        feature_attention_mask: torch.LongTensor | None = None,
        audio_feature_lengths: torch.LongTensor | None = None,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPooling:
        """Audio tower, as Qwen3-Omni's: ``last_hidden_state`` is [n_tokens of all clips, hidden].

        Takes padded log-mel features [n_clips, mel, frames] with ``feature_attention_mask`` [n_clips, frames], or
        clips already concatenated [mel, total frames] with ``audio_feature_lengths`` [n_clips].
        """
        if self.audio_tower is None:
            raise ValueError("This checkpoint has no audio tower (audio_config is None); it cannot read audio.")
        if feature_attention_mask is not None:
            audio_feature_lengths = feature_attention_mask.sum(-1)
            # [n_clips, mel, frames] -> [mel, sum of valid frames]: the tower takes the clips concatenated
            input_features = input_features.permute(0, 2, 1)[feature_attention_mask.bool()].permute(1, 0)
        elif audio_feature_lengths is None:
            raise ValueError(
                "get_audio_features needs feature_attention_mask (padded clips [n, mel, frames]) or "
                "audio_feature_lengths (clips concatenated [mel, frames]); the processor returns the former."
            )
        return self.audio_tower(
            input_features.type(self.audio_tower.dtype), feature_lens=audio_feature_lengths, return_dict=True, **kwargs
        )

    # ---- positions ---------------------------------------------------------------------------------------------

    def mm_token_type_ids_from(self, input_ids):
        """Modality of every token, derived from the placeholder ids (audio counts as text: 1-D positions)."""
        types = torch.zeros_like(input_ids, dtype=torch.int)
        types[input_ids == self.config.image_token_id] = IMAGE
        types[input_ids == self.config.video_token_id] = VIDEO
        types[input_ids == self.config.audio_token_id] = AUDIO
        return types

    def get_rope_index(self, input_ids, image_grid_thw=None, video_grid_thw=None, attention_mask=None, **kwargs):
        """M-RoPE positions [3, batch, seq] and per-row deltas [batch, 1] (max position + 1 - length).

        Text and audio tokens advance all three components together; each image (and each video frame, which
        Qwen3-VL separates by timestamps) takes a (t, h, w) grid starting at the current position and then moves
        the position on by max(h, w) / merge. Padding (attention_mask == 0) gets position 0.
        """
        merge = self.config.vision_config.spatial_merge_size if self.config.vision_config else 1
        if video_grid_thw is not None:  # one grid per frame, t = 1 each
            video_grid_thw = torch.repeat_interleave(video_grid_thw, video_grid_thw[:, 0], dim=0)
            video_grid_thw[:, 0] = 1
        grids = {
            IMAGE: iter(image_grid_thw.tolist()) if image_grid_thw is not None else iter(()),
            VIDEO: iter(video_grid_thw.tolist()) if video_grid_thw is not None else iter(()),
        }
        mm_types = self.mm_token_type_ids_from(input_ids)
        position_ids = torch.zeros(3, *input_ids.shape, dtype=torch.long, device=input_ids.device)
        deltas = []
        for row in range(input_ids.shape[0]):
            keep = attention_mask[row].bool() if attention_mask is not None else torch.ones_like(input_ids[row]).bool()
            types = mm_types[row][keep].tolist()
            pieces, current = [], 0
            for modality, group in itertools.groupby(types):
                length = len(list(group))
                if modality in (TEXT, AUDIO):
                    pieces.append(torch.arange(current, current + length).expand(3, -1))
                    current += length
                    continue
                # consecutive placeholders of one modality may hold several images/frames: one grid each
                while length > 0:
                    t, h, w = next(grids[modality])
                    h, w = h // merge, w // merge
                    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
                    pieces.append(torch.stack([tt, hh, ww]).reshape(3, -1) + current)  # [3, t*h*w]
                    current += max(h, w)
                    length -= t * h * w
            row_positions = torch.cat(pieces, dim=1).to(input_ids.device)
            position_ids[:, row, keep] = row_positions
            deltas.append(int(row_positions.max()) + 1 - int(keep.sum()))
        return position_ids, torch.tensor(deltas, device=input_ids.device).unsqueeze(1)

    def positions_for(
        self, position_ids, input_ids, inputs_embeds, attention_mask, cache, has_media, image_grid_thw, video_grid_thw
    ):
        """(text positions [batch or 1, seq] for the masks, rotary positions [batch or 1, seq] or [3, batch, seq]).

        Given ``position_ids`` are split if they have 4 rows ([text; t; h; w], as Qwen3-VL's generate() passes them).
        Defaults: text-only keeps Qwen3's 1-D ids; a media prefill gets M-RoPE ids (and sets ``rope_deltas``); a
        decoding step after a media prefill gets 1-D ids shifted by ``rope_deltas`` on the three M-RoPE rows.
        """
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            positions = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
            if has_media and past == 0:
                mrope, self.rope_deltas = self.get_rope_index(
                    input_ids, image_grid_thw, video_grid_thw, attention_mask
                )
                position_ids = torch.cat([positions[None].expand(1, inputs_embeds.shape[0], -1), mrope])
            else:
                # arange(n) + past, as Qwen3Model: the length stays static when ``past`` is a tensor (StaticCache)
                position_ids = (positions + past)[None]
                if self.rope_deltas is not None and past > 0:
                    mrope = (position_ids + self.rope_deltas)[None].expand(3, -1, -1)
                    position_ids = torch.cat([position_ids[None], mrope])
        if position_ids.ndim == 3 and position_ids.shape[0] == 4:
            return position_ids[0], position_ids[1:]
        return position_ids, position_ids

    def mask_mapping_for(self, attention_mask, inputs_embeds, cache, text_position_ids):
        """One attention mask per layer type, built by transformers' mask helpers (a dict passes through)."""
        if isinstance(attention_mask, dict):
            return attention_mask
        mask_kwargs = {
            "config": self.config.text_config,
            "inputs_embeds": inputs_embeds,
            "attention_mask": attention_mask,
            MASK_CACHE_KEYWORD: cache,
            "position_ids": text_position_ids,
        }
        mask_mapping = {"full_attention": create_causal_mask(**mask_kwargs)}
        if self.has_sliding_layers:
            mask_mapping["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)
        return mask_mapping

    # ---- media -------------------------------------------------------------------------------------------------

    def merge_visual_embeddings(
        self, input_ids, inputs_embeds, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw
    ):
        """Scatter the vision tower's output for images and videos into their placeholder positions.

        Returns ``(inputs_embeds, visual_mask [batch, seq] or None, deepstack)``: ``deepstack`` holds, per deepstack
        layer, the tower's features [n visual tokens, hidden] in sequence order (images and videos merged).
        """
        visual_mask, deepstack = None, None
        for pixels, grid, token_id, encode, what in (
            (pixel_values, image_grid_thw, self.config.image_token_id, self.get_image_features, "images"),
            (pixel_values_videos, video_grid_thw, self.config.video_token_id, self.get_video_features, "videos"),
        ):
            if pixels is None:
                continue
            features = encode(pixels, grid, return_dict=True)
            stack = [torch.cat(per_layer) for per_layer in features.deepstack_features]
            mask = input_ids == token_id
            inputs_embeds = scatter_features(inputs_embeds, mask, torch.cat(features.pooler_output), what)
            if visual_mask is None:
                visual_mask, deepstack = mask, list(stack)
            else:
                visual_mask, deepstack = merge_deepstack(visual_mask, deepstack, mask, stack)
        return inputs_embeds, visual_mask, deepstack

    def merge_audio_embeddings(self, input_ids, inputs_embeds, input_features, feature_attention_mask):
        """Scatter the audio tower's output into the audio placeholder positions (no deepstack for audio)."""
        if input_features is None:
            return inputs_embeds
        if feature_attention_mask is None:
            feature_attention_mask = torch.ones(input_features.shape[::2], dtype=torch.long)
        audio_embeds = self.get_audio_features(
            input_features, feature_attention_mask.to(input_features.device), return_dict=True
        ).last_hidden_state
        return scatter_features(inputs_embeds, input_ids == self.config.audio_token_id, audio_embeds, "audio")

    # ---- forward -----------------------------------------------------------------------------------------------

    @merge_with_config_defaults
    @capture_outputs
    @bridge_cache_keyword
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        input_features: torch.Tensor | None = None,
        feature_attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        has_media = pixel_values is not None or pixel_values_videos is not None or input_features is not None
        if has_media and input_ids is None:
            raise ValueError("Media inputs need input_ids (the placeholder tokens say where the media go).")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config.text_config)

        inputs_embeds, visual_mask, deepstack = self.merge_visual_embeddings(
            input_ids, inputs_embeds, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw
        )
        inputs_embeds = self.merge_audio_embeddings(input_ids, inputs_embeds, input_features, feature_attention_mask)
        text_position_ids, rope_position_ids = self.positions_for(
            position_ids, input_ids, inputs_embeds, attention_mask, cache, has_media, image_grid_thw, video_grid_thw
        )
        mask_mapping = self.mask_mapping_for(attention_mask, inputs_embeds, cache, text_position_ids)

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, rope_position_ids)
        for layer_idx, decoder_layer in enumerate(self.layers):
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=mask_mapping[self.config.text_config.layer_types[layer_idx]],
                position_embeddings=position_embeddings,
                position_ids=text_position_ids,
                use_cache=use_cache,
                **{LAYER_CACHE_KEYWORD: cache},
                **kwargs,
            )
            if deepstack is not None and layer_idx < len(deepstack):
                # DeepStack: the vision tower's intermediate features join the first decoder layers' output
                hidden_states = hidden_states.clone()
                hidden_states[visual_mask] = hidden_states[visual_mask] + deepstack[layer_idx].to(hidden_states)

        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states, **{OUTPUT_CACHE_FIELD: cache if use_cache else None}
        )


# --------------------------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------------------------


class Qwen3MultimodalForConditionalGeneration(Qwen3MultimodalPreTrainedModel, GenerationMixin):
    # Qwen3ForCausalLM's own tables: our parameter names are its names.
    _tied_weights_keys = Qwen3ForCausalLM._tied_weights_keys
    _tp_plan = Qwen3ForCausalLM._tp_plan
    _pp_plan = Qwen3ForCausalLM._pp_plan
    _fsdp_plan = Qwen3ForCausalLM._fsdp_plan

    def __init__(self, config: Qwen3MultimodalConfig):
        super().__init__(config)
        self.model = Qwen3MultimodalModel(self.config)
        self.vocab_size = config.text_config.vocab_size
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_image_features(self, pixel_values, image_grid_thw=None, **kwargs):
        return self.model.get_image_features(pixel_values, image_grid_thw, **kwargs)

    def get_video_features(self, pixel_values_videos, video_grid_thw=None, **kwargs):
        return self.model.get_video_features(pixel_values_videos, video_grid_thw, **kwargs)

    def get_audio_features(self, input_features, feature_attention_mask=None, audio_feature_lengths=None, **kwargs):
        return self.model.get_audio_features(input_features, feature_attention_mask, audio_feature_lengths, **kwargs)

    @bridge_cache_keyword
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        input_features: torch.Tensor | None = None,
        feature_attention_mask: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> tuple | CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
            input_features=input_features,
            feature_attention_mask=feature_attention_mask,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{OUTPUT_CACHE_FIELD: getattr(outputs, OUTPUT_CACHE_FIELD)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    # No prepare_inputs_for_generation override: transformers' own forwards media only in the prefill step when a
    # cache holds them (every step without a cache), and its signature tells generate() that inputs_embeds work.

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        # Text-only prompts: Qwen3's 1-D positions (from the attention mask, so left padding works). Prompts with
        # images/videos: Qwen3-VL's 4-row [text; t; h; w] ids, which generate() then extends one step at a time.
        text_positions = super()._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)
        input_ids = model_kwargs.get("input_ids", inputs_tensor)
        has_grid = model_kwargs.get("image_grid_thw") is not None or model_kwargs.get("video_grid_thw") is not None
        if not has_grid or input_ids.ndim != 2:
            return text_positions
        mrope, self.model.rope_deltas = self.model.get_rope_index(
            input_ids,
            model_kwargs.get("image_grid_thw"),
            model_kwargs.get("video_grid_thw"),
            model_kwargs.get("attention_mask"),
        )
        return torch.cat([text_positions[None], mrope])


class Qwen3MultimodalForSequenceClassification(GenericForSequenceClassification, Qwen3MultimodalPreTrainedModel):
    """Score head on the last non-padding token, as transformers' Qwen3ForSequenceClassification (same keys)."""

    def __init__(self, config):
        # Not GenericForSequenceClassification.__init__: it builds the base model through AutoModel.from_config,
        # which cannot resolve remote code. Same attributes, built directly; its forward (with the past_key_values
        # bridge and tuple returns) is reused as is.
        Qwen3MultimodalPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = Qwen3MultimodalModel(self.config)
        self.score = nn.Linear(config.text_config.hidden_size, self.num_labels, bias=False)
        self.post_init()


__all__ = [
    "Qwen3MultimodalPreTrainedModel",
    "Qwen3MultimodalModel",
    "Qwen3MultimodalForConditionalGeneration",
    "Qwen3MultimodalForSequenceClassification",
]
