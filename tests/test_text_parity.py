"""Text-only parity against the oracle: transformers' own Qwen3ForCausalLM with the same weights.

Tolerances: fp32 logits max |diff| <= 1e-6 (we reuse Qwen3's layers, so we expect 0) or within native's own
eager-vs-SDPA spread where that is larger; bf16 must equal native bf16 under the same attention implementation.
"""

import inspect

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from transformers_qwen3 import Qwen3MultimodalConfig, Qwen3MultimodalForConditionalGeneration

# The KV-cache output field of this transformers release, read off the oracle (5.24 renamed it to ``cache``).
CACHE = "cache" if "cache" in inspect.signature(Qwen3ForCausalLM.forward).parameters else "past_key_values"
VOCAB = 512
BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    initializer_range=0.1,
)
CASES = {
    "tied_gqa2": dict(tie_word_embeddings=True),
    "untied_mha": dict(tie_word_embeddings=False, num_key_value_heads=4),
    "head_dim_ne_hidden_over_heads_gqa4": dict(head_dim=48, num_key_value_heads=1),
    "yarn": dict(
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=64)
    ),
    "sliding_window_layers": dict(use_sliding_window=True, sliding_window=5, max_window_layers=1, num_hidden_layers=3),
    "attention_bias": dict(attention_bias=True),
}


def make_pair(case, attn="sdpa", dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    native_config = Qwen3Config(**{**BASE, **CASES[case]})
    native = Qwen3ForCausalLM(native_config).to(dtype).eval()
    config = Qwen3MultimodalConfig(text_config=native_config.to_dict())
    ours = Qwen3MultimodalForConditionalGeneration(config).to(dtype).eval()
    ours.load_state_dict(native.state_dict(), strict=True)
    native.set_attn_implementation(attn)
    ours.set_attn_implementation(attn)
    return native, ours


def ids_and_mask(batch=2, length=17, pad=(0, 5), seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for row, n in enumerate(pad[:batch]):
        mask[row, :n] = 0  # left padding
    return ids, mask


def max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_fp32_logits_match_native(case, attn):
    native, ours = make_pair(case, attn)
    ids, mask = ids_and_mask()
    with torch.no_grad():
        expected = native(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    spread = 0.0
    if attn == "sdpa":
        native.set_attn_implementation("eager")
        with torch.no_grad():
            spread = max_diff(native(ids, attention_mask=mask).logits, expected)
    diff = max_diff(got, expected)
    assert diff <= max(1e-6, spread), f"{case}/{attn}: max |diff| {diff:.3g} (native eager-vs-sdpa {spread:.3g})"


@pytest.mark.parametrize("case", ["tied_gqa2", "untied_mha", "yarn"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_bf16_logits_equal_native_bf16(case, attn):
    native, ours = make_pair(case, attn, dtype=torch.bfloat16)
    ids, mask = ids_and_mask()
    with torch.no_grad():
        diff = max_diff(ours(ids, attention_mask=mask).logits, native(ids, attention_mask=mask).logits)
    assert diff == 0.0, f"{case}/{attn}: bf16 max |diff| {diff:.3g}"


@pytest.mark.parametrize("case", ["tied_gqa2", "head_dim_ne_hidden_over_heads_gqa4"])
def test_teacher_forced_top1_where_native_margin_is_clear(case):
    native, ours = make_pair(case)
    ids, _ = ids_and_mask(batch=3, length=33, pad=())
    with torch.no_grad():
        expected, got = native(ids).logits, ours(ids).logits
    top2 = expected.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 1e-4  # random weights make exact ties possible
    assert clear.float().mean() > 0.9
    assert torch.equal(expected.argmax(-1)[clear], got.argmax(-1)[clear])


@pytest.mark.parametrize("case", ["tied_gqa2", "sliding_window_layers"])
def test_left_padded_batch_matches_single_runs(case):
    native, ours = make_pair(case)
    ids, mask = ids_and_mask(batch=2, length=12, pad=(0, 4))
    with torch.no_grad():
        ours_batch = ours(ids, attention_mask=mask).logits
        native_batch = native(ids, attention_mask=mask).logits
        for row in range(2):
            keep = mask[row].bool()
            single_ids = ids[row, keep][None]
            ours_single = ours(single_ids).logits[0]
            native_single = native(single_ids).logits[0]
            native_spread = max_diff(native_batch[row, keep], native_single)
            diff = max_diff(ours_batch[row, keep], ours_single)
            assert diff <= max(1e-5, 2 * native_spread), f"row {row}: {diff:.3g} vs native spread {native_spread:.3g}"


@pytest.mark.parametrize("case", ["tied_gqa2", "sliding_window_layers", "yarn"])
def test_greedy_generation_and_cache_match_native(case):
    native, ours = make_pair(case)
    ids, mask = ids_and_mask(batch=2, length=9, pad=(0, 3))
    kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(native.generate(ids, **kwargs), ours.generate(ids, **kwargs))
    # incremental decoding with the cache equals one full forward pass
    with torch.no_grad():
        full = ours(ids[:1]).logits[:, -1]
        step = ours(ids[:1, :-1], use_cache=True)
        last = ours(ids[:1, -1:], cache=getattr(step, CACHE), use_cache=True).logits[:, -1]
    assert max_diff(full, last) <= 1e-5


def test_gradient_checkpointing_trains():
    _, ours = make_pair("tied_gqa2")
    ours.train()
    # 5.23 renamed gradient_checkpointing_enable (the old name warns there); older releases know only the old name
    enable = getattr(ours, "activation_checkpointing_enable", None) or ours.gradient_checkpointing_enable
    enable()
    ids, mask = ids_and_mask(pad=())
    loss = ours(ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for p in ours.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and all(torch.isfinite(g).all() for g in grads)


def test_weight_keys_are_qwen3_keys():
    native, ours = make_pair("untied_mha")
    assert list(ours.state_dict()) == list(native.state_dict())
