"""Qwen3-Multimodal in vLLM, composed of vLLM's own modules (imported by vLLM through the plugin; needs vLLM).

- Decoder, vision tower, deepstack, M-RoPE: vLLM's ``Qwen3VLForConditionalGeneration`` (its Qwen3 decoder layers
  and ``Qwen3_VisionTransformer``), which this class extends. Our checkpoints keep the decoder under Qwen3's flat
  names (``model.layers``), so only the weight-name map differs (:data:`~transformers_qwen3.formats.keys`).
- Audio tower: vLLM's ``Qwen3OmniMoeAudioEncoder`` from its qwen3_omni_moe_thinker module, fed as Qwen3-Omni's
  thinker feeds it (clips concatenated along time, with their frame counts).
- Positions: audio tokens take 1-D positions like text (all three M-RoPE components advance together), as in our
  transformers model, so Qwen3-VL's M-RoPE index runs over the images (and videos) alone.
- Deepstack adds nothing at audio positions: audio embeddings are padded with zeros where Qwen3-VL's embeddings
  carry their deepstack features, so vLLM's deepstack plumbing is used unchanged.
- Multimodal processor: our own Hub processor (``Qwen3MultimodalProcessor``, loaded by AutoProcessor) turns images
  and audio into the same tensors as for transformers; vLLM expands each placeholder to its token count.

Video is not wired (the processor's video path is ours, not Qwen3-VL's; see docs/vllm.md).
"""

from collections.abc import Iterable, Mapping, Sequence

import torch
from transformers import BatchFeature
from vllm.config import VllmConfig
from vllm.model_executor.models.qwen3_omni_moe_thinker import Qwen3OmniMoeAudioEncoder
from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)

from ..formats.keys import AUDIO_PREFIX, VISION_PREFIX
from ..remote.media_qwen3_multimodal import MediaError, MediaPolicy
from ..remote.processing_qwen3_multimodal import _get_feat_extract_output_lengths
from ..remote.tokens_qwen3_multimodal import (
    AUDIO_END,
    AUDIO_START,
    AUDIO_TOKEN,
    IMAGE_TOKEN,
    VIDEO_TOKEN,
    VISION_END,
    VISION_START,
)

IMAGE_PLACEHOLDER = VISION_START + IMAGE_TOKEN + VISION_END  # what our chat template writes for an image part
VIDEO_PLACEHOLDER = VISION_START + VIDEO_TOKEN + VISION_END
AUDIO_PLACEHOLDER = AUDIO_START + AUDIO_TOKEN + AUDIO_END
# The longest clip the dummy profile run encodes: Whisper's 30 s window (longer clips are encoded too, in more tokens)
DUMMY_AUDIO_SECONDS = 30


# --------------------------------------------------------------------------------------------------------------------
# Multimodal processing: our Hub processor, called on the media alone
# --------------------------------------------------------------------------------------------------------------------


class Qwen3MultimodalProcessingInfo(BaseProcessingInfo):
    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        # vLLM tokenizes prompts itself and takes media only as multi_modal_data: inline <image>SRC</image> tags in a
        # prompt stay plain text, as any other text a client sends (our tokenizer would read them from the server's
        # disk). The tokenizer is vLLM's cached one, which its renderer shares.
        if hasattr(type(ctx.tokenizer), "media_tags"):
            ctx.tokenizer.media_tags = False

    def get_hf_processor(self, **kwargs: object):
        return self.ctx.get_hf_processor(**kwargs)  # AutoProcessor: our Qwen3MultimodalProcessor

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        config = self.get_hf_config()
        limits = {}
        if config.vision_config is not None:
            limits["image"] = None
        if config.audio_config is not None:
            limits["audio"] = None
        return limits

    def get_data_parser(self) -> MultiModalDataParser:
        # soxr: the resampler our own media loader uses (anti-aliased); torchaudio may not load beside vLLM's torch
        return MultiModalDataParser(
            target_sr=self.get_hf_processor().feature_extractor.sampling_rate,
            target_channels=1,
            audio_resample_method="soxr",
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )

    def max_image_side(self) -> int:
        """The side of the square image with the most tokens the image processor allows."""
        image_processor = self.get_hf_processor().image_processor
        unit = image_processor.patch_size * image_processor.merge_size
        max_pixels = image_processor.size["longest_edge"]
        return int((max_pixels // unit**2) ** 0.5) * unit

    def audio_tokens(self, n_frames: int) -> int:
        n_window = self.get_hf_processor().n_window
        return int(_get_feat_extract_output_lengths(torch.tensor(n_frames), n_window))


class Qwen3MultimodalDummyInputsBuilder(BaseDummyInputsBuilder[Qwen3MultimodalProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return IMAGE_PLACEHOLDER * mm_counts.get("image", 0) + AUDIO_PLACEHOLDER * mm_counts.get("audio", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options=None):
        mm_options = mm_options or {}
        side = self.info.max_image_side()
        sampling_rate = self.info.get_hf_processor().feature_extractor.sampling_rate
        return {
            "image": self._get_dummy_images(
                width=side, height=side, num_images=mm_counts.get("image", 0), overrides=mm_options.get("image")
            ),
            "audio": self._get_dummy_audios(
                length=DUMMY_AUDIO_SECONDS * sampling_rate,
                num_audios=mm_counts.get("audio", 0),
                overrides=mm_options.get("audio"),
            ),
        }


def _audio_fields(processed: BatchFeature) -> BatchFeature:
    """Padded clips [n, mel, frames] + frame mask → clips concatenated along time [mel, total] + frame counts,
    the layout vLLM's Qwen3-Omni audio encoder takes (and what our transformers model builds from the same mask)."""
    features, mask = processed.pop("input_features", None), processed.pop("feature_attention_mask", None)
    if features is not None:
        mask = mask.bool()
        processed["input_audio_features"] = features.permute(0, 2, 1)[mask].permute(1, 0)
        processed["audio_feature_lengths"] = mask.sum(-1)
    return processed


def check_media(mm_items: MultiModalDataItems, sampling_rate: int, policy: MediaPolicy | None = None) -> None:
    """The media policy's caps on a request's decoded media (:class:`MediaPolicy`, the caps our own loader and the
    llama.cpp server apply): items, pixels per image and in total, seconds per clip and in total. vLLM decoded the
    data URLs itself; without this an image of any size would be resized down to the processor's maximum and
    served. A :class:`MediaError` (a ValueError) becomes vLLM's 400 with our message."""
    policy = policy or MediaPolicy()
    images = mm_items.get("image") if "image" in mm_items else None
    audios = mm_items.get("audio") if "audio" in mm_items else None
    sizes = [images.get_image_size(i) for i in range(images.get_count())] if hasattr(images, "get_image_size") else []
    lengths = (
        [audios.get_audio_length(i) for i in range(audios.get_count())] if hasattr(audios, "get_audio_length") else []
    )
    if len(sizes) + len(lengths) > policy.max_items:
        raise MediaError(
            "request", None, f"{len(sizes) + len(lengths)} media items, over the {policy.max_items}-item cap"
        )
    for size in sizes:
        if size.width * size.height > policy.max_image_pixels:
            raise MediaError(
                "image_url", None, f"image is {size.width}x{size.height}, over the {policy.max_image_pixels}-pixel cap"
            )
    if sum(s.width * s.height for s in sizes) > policy.max_total_pixels:
        raise MediaError("request", None, f"images over the {policy.max_total_pixels}-pixel cap for one request")
    for n in lengths:
        if n / sampling_rate > policy.max_audio_seconds:
            raise MediaError(
                "input_audio", None, f"audio is {n / sampling_rate:.1f} s, over the {policy.max_audio_seconds:g} s cap"
            )
    if sum(lengths) / sampling_rate > policy.max_total_audio_seconds:
        raise MediaError("request", None, f"audio over the {policy.max_total_audio_seconds:g} s cap for one request")


class Qwen3MultimodalMultiModalProcessor(BaseMultiModalProcessor[Qwen3MultimodalProcessingInfo]):
    def apply(self, inputs, timing_ctx):
        # before the processor resizes anything, and for every item (cached ones too)
        check_media(inputs.mm_data_items, self.info.get_hf_processor().feature_extractor.sampling_rate)
        return super().apply(inputs, timing_ctx)

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        # vLLM tokenizes the prompt itself; the processor sees the media only (its text=None path).
        processor = self.info.get_hf_processor()
        audio = hf_data.get("audio")
        processed = processor(
            images=hf_data.get("images") or None,
            audio=audio or None,
            sampling_rate=processor.feature_extractor.sampling_rate if audio else None,
            return_tensors="pt",
        )
        return _audio_fields(processed)

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        image_grid_thw = hf_inputs.get("image_grid_thw", torch.empty((0, 3)))
        audio_lengths = hf_inputs.get("audio_feature_lengths", torch.empty((0,)))
        return {
            "pixel_values": MultiModalFieldConfig.flat_from_sizes("image", image_grid_thw.prod(-1)),
            "image_grid_thw": MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            "input_audio_features": MultiModalFieldConfig.flat_from_sizes("audio", audio_lengths, dim=1),
            "audio_feature_lengths": MultiModalFieldConfig.batched("audio", keep_on_cpu=True),
        }

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        config = self.info.get_hf_config()
        updates = []
        if config.vision_config is not None:
            merge = config.vision_config.spatial_merge_size**2

            def image_tokens(i: int) -> list[int]:
                grid = out_mm_kwargs["image"][i]["image_grid_thw"].data
                return [config.image_token_id] * (int(grid.prod()) // merge)

            updates.append(
                PromptReplacement(modality="image", target=[config.image_token_id], replacement=image_tokens)
            )
        if config.audio_config is not None:

            def audio_tokens(i: int) -> list[int]:
                frames = int(out_mm_kwargs["audio"][i]["audio_feature_lengths"].data)
                return [config.audio_token_id] * self.info.audio_tokens(frames)

            updates.append(
                PromptReplacement(modality="audio", target=[config.audio_token_id], replacement=audio_tokens)
            )
        return updates


# --------------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------------


@MULTIMODAL_REGISTRY.register_processor(
    Qwen3MultimodalMultiModalProcessor,
    info=Qwen3MultimodalProcessingInfo,
    dummy_inputs=Qwen3MultimodalDummyInputsBuilder,
)
class Qwen3MultimodalForConditionalGeneration(Qwen3VLForConditionalGeneration):
    """vLLM's Qwen3-VL (decoder, vision tower, deepstack, M-RoPE) plus vLLM's Qwen3-Omni audio encoder."""

    # Our processor rescales and normalises the pixels itself, as for transformers (vLLM's Qwen3-VL moves that step
    # onto the device and asks its processor not to)
    supports_mm_device_do_normalize = False

    # Our checkpoint names (formats/keys.py) → the modules of this class. Applied in order, each at most once.
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            VISION_PREFIX: "visual.",
            AUDIO_PREFIX: "audio_tower.",
            "lm_head.": "language_model.lm_head.",
            "model.": "language_model.model.",
        }
    )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return IMAGE_PLACEHOLDER
        if modality.startswith("audio"):
            return AUDIO_PLACEHOLDER
        raise ValueError(f"Qwen3-Multimodal in vLLM reads images and audio, not {modality}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "model"):
        config = vllm_config.model_config.hf_config
        if config.vision_config is None:
            raise ValueError(
                "This Qwen3-Multimodal checkpoint has no vision tower; vLLM serves it as a plain Qwen3 model: "
                "set architectures to Qwen3ForCausalLM (docs/vllm.md)"
            )
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.audio_tower = None
        if config.audio_config is not None:
            with self._mark_tower_model(vllm_config, "audio"):
                self.audio_tower = Qwen3OmniMoeAudioEncoder(
                    config.audio_config, prefix=maybe_prefix(prefix, "audio_tower")
                )

    # ---- media ---------------------------------------------------------------------------------------------------

    def embed_multimodal(self, **kwargs: object):
        audio_features = kwargs.pop("input_audio_features", None)
        audio_lengths = kwargs.pop("audio_feature_lengths", None)
        embeddings = list(super().embed_multimodal(**kwargs) or ())
        if audio_features is not None:
            embeddings.extend(self._embed_audio(audio_features, audio_lengths))
        return tuple(embeddings)

    def _embed_audio(self, features, lengths) -> list[torch.Tensor]:
        """One [n_tokens, hidden (+ zero deepstack slots)] tensor per clip."""
        if isinstance(features, (list, tuple)):
            features = torch.cat(list(features), dim=-1)
        lengths = torch.as_tensor(lengths).flatten().to(torch.long)
        device = self.audio_tower.device
        lengths = lengths.to(device)
        out_lengths = _get_feat_extract_output_lengths(lengths, self.audio_tower.n_window)
        hidden = self.audio_tower(
            features.to(device, self.audio_tower.dtype), feature_lens=lengths, aftercnn_lens=out_lengths
        )
        if self.use_deepstack:  # deepstack adds nothing at audio positions
            hidden = torch.cat([hidden, hidden.new_zeros(hidden.shape[0], self.multiscale_dim)], dim=-1)
        return list(hidden.split(out_lengths.tolist()))

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features: list) -> tuple[torch.Tensor, int]:
        # Audio is positioned as text: Qwen3-VL's index over the visual items alone
        visual = [f for f in mm_features if f.modality in ("image", "video")]
        return self._get_mrope_input_positions(input_tokens=input_tokens, mm_features=visual, config=self.config)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        ignore = ["audio_tower."] if self.audio_tower is None else None
        loader = AutoWeightsLoader(self, ignore_unexpected_prefixes=ignore)
        return loader.load_weights(weights, mapper=self.hf_to_vllm_mapper)


__all__ = ["Qwen3MultimodalForConditionalGeneration"]
