"""Tiny oracle/ours pairs with identical weights, fp32, eval mode.

The oracles are transformers' native classes: Qwen3ForCausalLM for text, Qwen3VLForConditionalGeneration for vision,
Qwen3-Omni's thinker for audio. Token ids are moved into the tiny vocabulary so media prompts fit it.
"""

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeThinkerConfig
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeThinkerForConditionalGeneration

from transformers_qwen3 import Qwen3MultimodalConfig, Qwen3MultimodalForConditionalGeneration
from transformers_qwen3.formats.keys import renamed

VOCAB = 256
TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=128,
    initializer_range=0.1,
)
MROPE = dict(rope_type="default", rope_theta=10000.0, mrope_section=[1, 1, 2], mrope_interleaved=True)
VISION = dict(
    depth=2,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    out_hidden_size=32,
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
    num_position_embeddings=64,
    deepstack_visual_indexes=[0, 1],
)
AUDIO = dict(
    num_mel_bins=128,
    encoder_layers=2,
    encoder_attention_heads=2,
    encoder_ffn_dim=64,
    d_model=32,
    output_dim=32,
    downsample_hidden_size=16,
    n_window=50,
    n_window_infer=800,
)
# The real ids (151652...) do not fit a 256-token vocabulary; the top of it stands in for them.
TOKEN_IDS = dict(
    image_token_id=250,
    video_token_id=251,
    vision_start_token_id=252,
    vision_end_token_id=253,
    audio_token_id=247,
    audio_start_token_id=248,
    audio_end_token_id=249,
)
VL_TOKEN_IDS = {k: v for k, v in TOKEN_IDS.items() if not k.startswith("audio")}


def max_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


def text_pair(attn="sdpa", seed=0, **overrides):
    """(native Qwen3ForCausalLM, our text-only model) with the same weights."""
    torch.manual_seed(seed)
    native = Qwen3ForCausalLM(Qwen3Config(**{**TEXT, **overrides})).eval()
    ours = Qwen3MultimodalForConditionalGeneration(Qwen3MultimodalConfig(text_config=native.config.to_dict())).eval()
    ours.load_state_dict(native.state_dict(), strict=True)
    native.set_attn_implementation(attn)
    ours.set_attn_implementation(attn)
    return native, ours


def vision_pair(seed=0):
    """(native Qwen3VLForConditionalGeneration, ours with vision and audio towers); shared weights but the audio."""
    torch.manual_seed(seed)
    text = {**TEXT, "rope_parameters": MROPE}
    native = Qwen3VLForConditionalGeneration(Qwen3VLConfig(text_config=text, vision_config=VISION, **VL_TOKEN_IDS))
    config = Qwen3MultimodalConfig(text_config=text, vision_config=VISION, audio_config=AUDIO, **TOKEN_IDS)
    ours = Qwen3MultimodalForConditionalGeneration(config).eval()
    state = {renamed(k): v for k, v in native.state_dict().items()}
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("model.audio_tower.") for k in missing), (missing, unexpected)
    return native.eval(), ours


def audio_thinker_for(ours):
    """A tiny native Qwen3-Omni thinker whose audio tower holds ``ours``' audio tower weights."""
    # the decoder is never run: one small MoE layer of the same widths as TEXT
    text = {**TEXT, "num_hidden_layers": 1, "moe_intermediate_size": 32, "num_experts": 2, "num_experts_per_tok": 1}
    thinker = Qwen3OmniMoeThinkerForConditionalGeneration(
        Qwen3OmniMoeThinkerConfig(audio_config=AUDIO, vision_config=VISION, text_config=text)
    ).eval()
    # transformers < 5.22 has no thinker base model: the audio tower sits on the thinker itself
    owner = thinker.model if hasattr(thinker.model, "audio_tower") else thinker
    owner.audio_tower.load_state_dict(ours.model.audio_tower.state_dict(), strict=True)
    return thinker


def patches(grid, seed):
    """Flattened patches [t*h*w, 3*2*16*16] for a (t, h, w) patch grid, as the image processor emits them."""
    t, h, w = grid
    return torch.randn(t * h * w, 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(seed))


def log_mel(lengths, seed, mel=128):
    """Padded random log-mel features [n, mel, max(lengths)] and their frame mask [n, max(lengths)]."""
    features = torch.randn(len(lengths), mel, max(lengths), generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return features, mask
