"""Configuration of Qwen3-Multimodal: one dense Qwen3 decoder reading text, images, video and audio.

The composite config nests three typed sub-configs:

- ``text_config``: every field of transformers' ``Qwen3Config`` (inherited, not copied), so a real Qwen3
  checkpoint's config maps onto it one to one. The rope parameters may additionally carry Qwen3-VL's
  ``mrope_section`` / ``mrope_interleaved`` (multimodal rotary); text-only checkpoints leave them out.
- ``vision_config``: transformers' ``Qwen3VLVisionConfig`` as is (the tower is Qwen3-VL's), or ``None``.
- ``audio_config``: transformers' ``Qwen3OmniMoeAudioEncoderConfig`` as is (the tower is Qwen3-Omni's), or ``None``.

``None`` towers mean a text-only model: it has exactly Qwen3ForCausalLM's parameters.

Like ``Qwen3VLConfig``, the composite keeps the decoder's fields (``vocab_size``, ``rope_parameters``,
``max_position_embeddings`` ...) on ``text_config`` only; generic code (generate, caches, ``resize_token_embeddings``,
peft) reads them through ``get_text_config()``. Two deviations, both because our composite *model* runs the decoder
itself (Qwen3-VL delegates to a text model built on ``text_config``):

- ``use_cache`` sits on the composite config too (mirrored from ``text_config``): ``merge_with_config_defaults`` and
  Trainer read and write ``model.config.use_cache``.
- The decoder's parallelism plans (``base_model_tp_plan`` / ``_pp_plan`` / ``_fsdp_plan``) are the text config's,
  exposed at the top level where transformers looks for the base model's plans.

This file ships to the Hub as remote code: it imports only the standard library and transformers. (Unlike
transformers' own configs we do not decorate with huggingface_hub's ``@strict``: remote code may import only
transformers, and the inherited Qwen3 fields keep their validation.)
"""

import transformers.configuration_utils as configuration_utils
from transformers.utils.versions import require_version

# One clear message instead of an ImportError deep inside transformers: our Hub files compose transformers' own
# Qwen3 / Qwen3-VL / Qwen3-Omni modules, and 5.19 is the oldest release the parity suite passes on. What moved since
# (``SubConfigSpec`` in 5.20, the ``cache`` keyword in 5.24) is bridged by feature tests, not by version
# (docs/compatibility.md).
require_version("transformers>=5.19.0", "Qwen3-Multimodal's remote code needs transformers 5.19 or newer")

from transformers.configuration_utils import PreTrainedConfig  # noqa: E402
from transformers.models.qwen3.configuration_qwen3 import Qwen3Config  # noqa: E402
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig  # noqa: E402
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig  # noqa: E402

from .tokens_qwen3_multimodal import (  # noqa: E402
    AUDIO_END_ID,
    AUDIO_START_ID,
    AUDIO_TOKEN_ID,
    IMAGE_TOKEN_ID,
    VIDEO_TOKEN_ID,
    VISION_END_ID,
    VISION_START_ID,
)


def _check_widths(value):
    """``intermediate_size``: one FFN width for every layer (Qwen3's int), or one per layer (a compressed model)."""
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        raise TypeError(f"intermediate_size must be an int or a list of ints, got {type(value).__name__}")
    widths = value if isinstance(value, list) else [value]
    if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"intermediate_size must hold positive ints, got {value!r}")


class Qwen3MultimodalTextConfig(Qwen3Config):
    """The decoder: Qwen3's fields and semantics (sliding window, layer_types, YaRN ...) unchanged.

    Differs from ``Qwen3Config`` in its ``model_type`` (so a nested config never resolves to the native class), in
    accepting Qwen3-VL's M-RoPE keys inside ``rope_parameters``, and in two things a compressed model (issue 11,
    docs/compression.md) needs, both absent from a plain config so that it serializes exactly as Qwen3's:

    - ``intermediate_size`` may be a list, one FFN width per decoder layer (the layer's neurons are ordered by
      importance, so a narrower layer kept the most important ones). transformers 5.24's ``per_layer_config`` would
      say the same, but our floor (5.19) has no such mechanism and 5.24 has it for configs only, not for modeling.
    - ``skipped_layers``: the original indices of the decoder layers a compressed model dropped. Provenance only:
      the layers kept are renumbered from 0 and ``num_hidden_layers`` / ``layer_types`` describe them, so every
      runtime (llama.cpp included) sees an ordinary shallower model.
    """

    model_type = "qwen3_multimodal_text"
    base_config_key = "text_config"
    ignore_keys_at_rope_validation = {"mrope_section", "mrope_interleaved"}
    intermediate_size: int | list[int] = 22016
    if hasattr(Qwen3Config, "__validators__"):
        # a huggingface_hub strict dataclass: its per-field type validators are a class attribute, read per instance
        __validators__ = {**Qwen3Config.__validators__, "intermediate_size": [_check_widths]}

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _check_widths(self.intermediate_size)
        if isinstance(self.intermediate_size, list) and len(self.intermediate_size) != self.num_hidden_layers:
            raise ValueError(
                f"intermediate_size lists {len(self.intermediate_size)} widths for {self.num_hidden_layers} layers"
            )

    def ffn_width(self, layer_idx: int) -> int:
        """The FFN width of decoder layer ``layer_idx``."""
        widths = self.intermediate_size
        return widths if isinstance(widths, int) else widths[layer_idx]


# Sub-config classes; the towers may be None (a text-only model).
SUB_CONFIGS = {
    "text_config": Qwen3MultimodalTextConfig,
    "vision_config": Qwen3VLVisionConfig,
    "audio_config": Qwen3OmniMoeAudioEncoderConfig,
}
OPTIONAL_SUB_CONFIGS = ("vision_config", "audio_config")
# transformers >= 5.20 builds sub-configs from ``sub_configs_defaults`` (SubConfigSpec); older releases leave that to
# the composite's __post_init__, as their own Qwen3VLConfig does. None means the older machinery.
SubConfigSpec = getattr(configuration_utils, "SubConfigSpec", None)


class Qwen3MultimodalConfig(PreTrainedConfig):
    """Composite config. ``vision_config`` / ``audio_config`` = ``None`` gives a text-only model.

    Special token ids default to the real Qwen3 / Qwen3-VL / Qwen3-Omni vocabulary.
    """

    model_type = "qwen3_multimodal"
    if SubConfigSpec is not None:
        # Every entry is a spec: 5.20.x accepts nothing else (5.21+ would also take a plain class).
        sub_configs_defaults = {
            key: SubConfigSpec(config_class, optional=key in OPTIONAL_SUB_CONFIGS)
            for key, config_class in SUB_CONFIGS.items()
        }
    else:
        sub_configs = SUB_CONFIGS
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    # Our base model holds the Qwen3 decoder under Qwen3Model's names, so Qwen3's plans apply unchanged.
    base_model_tp_plan = Qwen3MultimodalTextConfig.base_model_tp_plan
    base_model_pp_plan = Qwen3MultimodalTextConfig.base_model_pp_plan
    base_model_fsdp_plan = Qwen3MultimodalTextConfig.base_model_fsdp_plan

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    image_token_id: int = IMAGE_TOKEN_ID
    video_token_id: int = VIDEO_TOKEN_ID
    audio_token_id: int = AUDIO_TOKEN_ID
    vision_start_token_id: int = VISION_START_ID
    vision_end_token_id: int = VISION_END_ID
    audio_start_token_id: int = AUDIO_START_ID
    audio_end_token_id: int = AUDIO_END_ID
    # Tying lives on the composite config because PreTrainedModel reads it there; it mirrors the text config's.
    tie_word_embeddings: bool | None = None
    # Likewise use_cache: the model's forward defaults to config.use_cache (merge_with_config_defaults), and Trainer
    # sets model.config.use_cache. None takes the text config's value.
    use_cache: bool | None = None

    def __post_init__(self, **kwargs):
        if SubConfigSpec is None:
            self._build_sub_configs()
        super().__post_init__(**kwargs)
        for name in ("tie_word_embeddings", "use_cache"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(self.text_config, name))
            setattr(self.text_config, name, getattr(self, name))

    def _build_sub_configs(self):
        """What ``SubConfigSpec`` does from transformers 5.20 on: a dict becomes its config class, a missing text
        config the default one; a missing tower stays None."""
        for key, config_class in SUB_CONFIGS.items():
            value = getattr(self, key)
            if isinstance(value, dict):
                setattr(self, key, config_class(**value))
            elif value is None and key not in OPTIONAL_SUB_CONFIGS:
                setattr(self, key, config_class())


__all__ = ["Qwen3MultimodalConfig", "Qwen3MultimodalTextConfig"]
