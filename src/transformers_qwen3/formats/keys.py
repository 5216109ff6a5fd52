"""Where each part of the model lives in a checkpoint: the one home of the state-dict key prefixes.

Ours are transformers' Qwen3ForCausalLM names for the text model, Qwen3-VL's for the vision tower (``model.visual.``)
and our own ``model.audio_tower.`` for Qwen3-Omni's audio encoder, which Qwen3-Omni releases store under
``thinker.audio_tower.`` (:data:`OMNI_AUDIO_PREFIX`).
"""

import re

TEXT_PREFIXES = ("model.embed_tokens.", "model.norm.", "model.layers.", "lm_head.")
VISION_PREFIX = "model.visual."
AUDIO_PREFIX = "model.audio_tower."
OMNI_AUDIO_PREFIX = "thinker.audio_tower."

# Qwen3-VL keeps the decoder under ``model.language_model.``; ours is flat like Qwen3ForCausalLM. (stored, ours)
QWEN3_VL_RENAMES = (("model.language_model.", "model."),)


def renamed(key: str, renames=QWEN3_VL_RENAMES) -> str:
    """``key`` with the first matching stored prefix replaced by ours."""
    for stored, ours in renames:
        if key.startswith(stored):
            return ours + key[len(stored) :]
    return key


def key_mapping(renames=QWEN3_VL_RENAMES) -> dict[str, str]:
    """The renames as transformers' ``from_pretrained(key_mapping=...)`` regex table."""
    return {"^" + re.escape(stored): ours for stored, ours in renames}
