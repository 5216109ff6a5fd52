"""Our classes behave like transformers' native ones for generic code (generate, Trainer, tensor parallelism, compile).

Oracles: Qwen3ForCausalLM / Qwen3Model / Qwen3ForSequenceClassification for the text path, Qwen3VLModel for image and
video features, Qwen3-Omni's thinker for audio features, Qwen3VLConfig for the composite config's surface. Each case
compares what generic code sees: output types and fields, tuples, caches, plans and generated tokens.

Tolerances (fp32): we run transformers' own layers on the same weights, so equal inputs give equal outputs; we allow
1e-6 for reduction-order noise and print the max |diff|.
"""

import contextlib
import copy
import inspect

import pytest
import torch
from helpers.tiny_models import (
    MROPE,
    TEXT,
    TOKEN_IDS,
    VISION,
    VOCAB,
    audio_thinker_for,
    log_mel,
    max_diff,
    patches,
    text_pair,
    vision_pair,
)
from transformers import (
    CompileConfig,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3ForSequenceClassification,
    Qwen3Model,
    Qwen3VLConfig,
)
from transformers.cache_utils import Cache, DynamicCache, StaticCache

from transformers_qwen3 import (
    Qwen3MultimodalConfig,
    Qwen3MultimodalForConditionalGeneration,
    Qwen3MultimodalForSequenceClassification,
)
from transformers_qwen3.remote.modeling_qwen3_multimodal import Qwen3MultimodalModel

TOL = 1e-6
# The KV-cache keyword and output field of this transformers release, read off the oracle: 5.24 renamed
# ``past_key_values`` to ``cache``. Our classes take both names on every release.
CACHE = "cache" if "cache" in inspect.signature(Qwen3ForCausalLM.forward).parameters else "past_key_values"


def ids_and_mask(batch=2, length=9, pad=(0, 3), seed=1):
    ids = torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    for row, n in enumerate(pad[:batch]):
        mask[row, :n] = 0  # left padding
    return ids, mask


def tensors_of(value):
    """Flatten an output field (tensor, cache, tuple/list of them) into a list of tensors for comparison."""
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Cache):
        return [t for layer in value.layers for t in (layer.keys, layer.values)]
    return [t for item in value for t in tensors_of(item)]


def assert_same_structure_and_values(got, expected, what, tol=TOL):
    """Same type and length, then every tensor within ``tol``; works on tuples and ModelOutputs alike."""
    assert type(got) is type(expected), f"{what}: {type(got).__name__} vs native {type(expected).__name__}"
    got_items = list(got.values()) if hasattr(got, "values") else list(got)
    expected_items = list(expected.values()) if hasattr(expected, "values") else list(expected)
    assert len(got_items) == len(expected_items), f"{what}: {len(got_items)} fields vs native {len(expected_items)}"
    if hasattr(got, "keys"):
        assert list(got.keys()) == list(expected.keys()), (
            f"{what}: fields {list(got.keys())} vs {list(expected.keys())}"
        )
    for i, (g, e) in enumerate(zip(got_items, expected_items, strict=True)):
        assert type(g) is type(e), f"{what}[{i}]: {type(g).__name__} vs native {type(e).__name__}"
        g_tensors, e_tensors = tensors_of(g), tensors_of(e)
        assert [t.shape for t in g_tensors] == [t.shape for t in e_tensors], f"{what}[{i}]: shapes differ"
        for g_t, e_t in zip(g_tensors, e_tensors, strict=True):
            diff = max_diff(g_t, e_t)
            assert diff <= tol, f"{what}[{i}]: max |diff| {diff:.3g} > {tol}"


# --------------------------------------------------------------------------------------------------------------------
# Cache keyword, tuples, Trainer-style keyword arguments
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keyword", ["cache", "past_key_values"])
@pytest.mark.parametrize("level", ["head", "base_model"])
def test_decode_step_with_either_cache_keyword_uses_the_cache_like_native(level, keyword):
    """Both names of the KV cache must reach the layers as the cache; native is called with its own name.

    On 5.24+ ``past_key_values=`` goes through transformers' deprecation bridge (a FutureWarning, as native gives);
    before 5.24 it is the native name and ``cache=`` is the one we add, both silent.
    """
    native, ours = text_pair()
    ids, _ = ids_and_mask(pad=())
    results = {}
    with torch.no_grad():
        for name, model, kw in (("native", native, CACHE), ("ours", ours, keyword)):
            model = model if level == "head" else model.model
            prefill = getattr(model(ids[:, :-1], use_cache=True), CACHE)
            deprecated = kw == "past_key_values" and CACHE == "cache"
            with pytest.warns(FutureWarning, match="past_key_values") if deprecated else contextlib.nullcontext():
                out = model(ids[:, -1:], **{kw: copy.deepcopy(prefill)})
            results[name] = out.logits if level == "head" else out.last_hidden_state
        # a step without the cache differs, so matching native proves the cache was used
        model = ours if level == "head" else ours.model
        without_cache = model(ids[:, -1:], use_cache=False)
        without_cache = without_cache.logits if level == "head" else without_cache.last_hidden_state
    assert max_diff(without_cache, results["native"]) > 1e-3
    diff = max_diff(results["ours"], results["native"])
    assert diff <= TOL, f"{keyword}= vs native's {CACHE}=: max |diff| {diff:.3g}"


@pytest.mark.parametrize("with_labels", [False, True], ids=["no_labels", "labels"])
def test_return_dict_false_gives_natives_tuple(with_labels):
    native, ours = text_pair()
    ids, mask = ids_and_mask()
    kwargs = dict(attention_mask=mask, labels=ids if with_labels else None, return_dict=False)
    with torch.no_grad():
        expected, got = native(ids, **kwargs), ours(ids, **kwargs)
    assert_same_structure_and_values(got, expected, "return_dict=False")


TRAINER_CASES = {
    "num_items_in_batch": dict(labels=True, num_items_in_batch=torch.tensor(5)),
    "output_hidden_states": dict(output_hidden_states=True),
    "output_attentions_eager": dict(output_attentions=True),
    "use_cache_false_logits_to_keep": dict(use_cache=False, logits_to_keep=1),
    "everything_as_tuple": dict(labels=True, output_hidden_states=True, output_attentions=True, return_dict=False),
}


@pytest.mark.parametrize("case", TRAINER_CASES)
def test_trainer_style_kwargs_give_natives_outputs(case):
    native, ours = text_pair(attn="eager")
    ids, mask = ids_and_mask()
    kwargs = dict(TRAINER_CASES[case])
    if kwargs.pop("labels", False):
        kwargs["labels"] = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        expected = native(ids, attention_mask=mask, **kwargs)
        got = ours(ids, attention_mask=mask, **kwargs)
    assert_same_structure_and_values(got, expected, case)


# --------------------------------------------------------------------------------------------------------------------
# Default cache, generate from embeddings, compile
# --------------------------------------------------------------------------------------------------------------------


def test_forward_returns_a_dynamic_cache_by_default_and_honours_config_use_cache():
    native, ours = text_pair()
    ids, mask = ids_and_mask()
    with torch.no_grad():
        expected = getattr(native(ids, attention_mask=mask), CACHE)
        got = getattr(ours(ids, attention_mask=mask), CACHE)
        assert type(got) is type(expected) is DynamicCache, f"default cache: {type(got).__name__}"
        for g, e in zip(tensors_of(got), tensors_of(expected), strict=True):
            assert max_diff(g, e) <= TOL, f"cache max |diff| {max_diff(g, e):.3g}"
        # Trainer turns caching off through model.config.use_cache; the composite config is that knob for us too
        native.config.use_cache = ours.config.use_cache = False
        assert getattr(native(ids), CACHE) is None and getattr(ours(ids), CACHE) is None


@pytest.mark.parametrize("text_use_cache", [True, False])
def test_config_use_cache_mirrors_the_text_config(text_use_cache, tmp_path):
    config = Qwen3MultimodalConfig(text_config={**TEXT, "use_cache": text_use_cache})
    assert config.use_cache is text_use_cache and config.text_config.use_cache is text_use_cache
    config.save_pretrained(tmp_path)
    again = Qwen3MultimodalConfig.from_pretrained(tmp_path)
    assert again.use_cache is text_use_cache and again.text_config.use_cache is text_use_cache


@pytest.mark.parametrize("with_ids", [False, True], ids=["embeds_only", "ids_and_embeds"])
def test_generate_from_inputs_embeds_matches_native(with_ids):
    native, ours = text_pair()
    ids, mask = ids_and_mask()
    embeds = native.get_input_embeddings()(ids).detach()
    kwargs = dict(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    if with_ids:
        kwargs["input_ids"] = ids
    expected, got = native.generate(**kwargs), ours.generate(**kwargs)
    assert torch.equal(got, expected), f"tokens {got.tolist()} vs native {expected.tolist()}"


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_with_an_image_matches_native_with_and_without_cache(use_cache):
    """generate() drops media after the prefill only when a cache holds them (transformers' own input preparation);
    without a cache every step re-reads the whole prompt, image included."""
    native, ours = vision_pair()
    grid = [1, 4, 6]
    start, image, end = (TOKEN_IDS[k] for k in ("vision_start_token_id", "image_token_id", "vision_end_token_id"))
    ids = torch.tensor([[7, 8, start] + [image] * 6 + [end, 9, 10]])  # [1, 4, 6] patches merge 2x2 into 6 tokens
    inputs = dict(input_ids=ids, pixel_values=patches(grid, seed=5), image_grid_thw=torch.tensor([grid]))
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, use_cache=use_cache)
    mm_token_type_ids = (ids == image).int()
    expected = native.generate(**inputs, mm_token_type_ids=mm_token_type_ids, **kwargs)
    got = ours.generate(**inputs, **kwargs)
    assert torch.equal(got, expected), f"tokens {got.tolist()} vs native {expected.tolist()}"


def test_text_path_compiles_fullgraph_and_generates_like_eager():
    """Static-cache decoding under ``torch.compile(fullgraph=True)``: any graph break in our text path raises.

    The "eager" backend traces with dynamo (where graph breaks are found) without inductor's C++ codegen, which keeps
    this fast on CPU.
    """
    native, ours = text_pair()
    assert ours._can_compile_fullgraph is native._can_compile_fullgraph is True
    ids, mask = ids_and_mask()
    kwargs = dict(
        attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0, cache_implementation="static"
    )
    eager = ours.generate(ids, **kwargs)
    compile_config = CompileConfig(fullgraph=True, backend="eager", mode=None)
    compile_config._compile_all_devices = True  # generate() compiles on accelerators only, unless told
    compiled = ours.generate(ids, compile_config=compile_config, **kwargs)
    assert hasattr(ours, "_compiled_call"), "generate() did not compile the decoding step"
    expected = native.generate(ids, **kwargs)
    assert torch.equal(compiled, eager), f"compiled {compiled.tolist()} vs eager {eager.tolist()}"
    assert torch.equal(eager, expected), f"ours {eager.tolist()} vs native {expected.tolist()}"


def test_text_forward_with_static_cache_compiles_fullgraph():
    """A text-only prefill and a decoding step, each compiled whole, give the eager logits."""
    _, ours = text_pair()
    ids, mask = ids_and_mask(pad=())
    compiled = torch.compile(ours, fullgraph=True, backend="eager")
    logits = {}
    with torch.no_grad():
        for name, model in (("eager", ours), ("compiled", compiled)):
            cache = StaticCache(config=ours.config, max_cache_len=16)
            prefill = model(ids[:, :-1], cache=cache, use_cache=True).logits
            step = model(ids[:, -1:], cache=cache, use_cache=True).logits
            logits[name] = (prefill, step)
    for what, got, expected in zip(("prefill", "step"), logits["compiled"], logits["eager"], strict=True):
        assert max_diff(got, expected) <= TOL, f"{what}: compiled vs eager max |diff| {max_diff(got, expected):.3g}"


# --------------------------------------------------------------------------------------------------------------------
# Parallelism plans
# --------------------------------------------------------------------------------------------------------------------

PLAN_PAIRS = {
    "causal_lm": (Qwen3ForCausalLM, Qwen3MultimodalForConditionalGeneration),
    "base_model": (Qwen3Model, Qwen3MultimodalModel),
    "sequence_classification": (Qwen3ForSequenceClassification, Qwen3MultimodalForSequenceClassification),
}
TOWERS = ("model.visual.", "model.audio_tower.", "visual.", "audio_tower.")


@pytest.mark.parametrize("pair", PLAN_PAIRS)
@pytest.mark.parametrize("plan", ["tp_plan", "pp_plan", "fsdp_plan"])
def test_parallel_plans_equal_natives_for_the_decoder(pair, plan):
    native_cls, ours_cls = PLAN_PAIRS[pair]
    native = native_cls(Qwen3Config(**TEXT))
    text_only = ours_cls(Qwen3MultimodalConfig(text_config=TEXT))
    assert getattr(text_only, plan) == getattr(native, plan)
    # with towers, the decoder's plan is the same and the towers add nothing beyond what Qwen3-VL's tower adds
    if pair == "causal_lm":
        _, multimodal = vision_pair()
        decoder_plan = {k: v for k, v in getattr(multimodal, plan).items() if not k.startswith(TOWERS)}
        assert decoder_plan == getattr(native, plan)


def test_tensor_parallel_plan_shards_the_decoder_and_keeps_logits(tmp_path):
    """Real TP on CPU (2 gloo ranks, transformers' own sharding): the same logits as unsharded, decoder sharded."""
    from helpers.tensor_parallel import run_sharded

    _, ours = text_pair(tie_word_embeddings=True)
    ours.save_pretrained(tmp_path / "model")
    ids, _ = ids_and_mask(pad=())
    with torch.no_grad():
        expected = ours(ids).logits
    ranks = run_sharded(
        "transformers_qwen3.Qwen3MultimodalForConditionalGeneration", tmp_path / "model", ids, tmp_path
    )
    for rank, result in enumerate(ranks):
        diff = max_diff(result["logits"], expected)
        assert diff <= 1e-5, f"rank {rank}: sharded vs unsharded logits max |diff| {diff:.3g}"
        assert "model.embed_tokens.weight" in result["sharded"], result["sharded"]
        assert "model.layers.0.self_attn.q_proj.weight" in result["sharded"], result["sharded"]
        assert "model.layers.1.mlp.down_proj.weight" in result["sharded"], result["sharded"]


# --------------------------------------------------------------------------------------------------------------------
# Media features
# --------------------------------------------------------------------------------------------------------------------

IMAGE_GRIDS = [[1, 4, 4], [1, 2, 6]]  # two images of different shapes
VIDEO_GRIDS = [[2, 4, 4]]  # one video, two temporal patches


@pytest.mark.parametrize(
    "method,grids", [("get_image_features", IMAGE_GRIDS), ("get_video_features", VIDEO_GRIDS)], ids=["image", "video"]
)
@pytest.mark.parametrize("owner", ["model", "head"])
@pytest.mark.parametrize("return_dict", [True, False])
def test_visual_features_have_qwen3_vls_output_type_and_values(method, grids, owner, return_dict):
    native, ours = vision_pair()
    grid_thw = torch.tensor(grids)
    pixels = torch.cat([patches(g, seed=i) for i, g in enumerate(grids)])
    native_owner, ours_owner = (native.model, ours.model) if owner == "model" else (native, ours)
    with torch.no_grad():
        expected = getattr(native_owner, method)(pixels, grid_thw, return_dict=return_dict)
        got = getattr(ours_owner, method)(pixels, grid_thw, return_dict=return_dict)
    assert_same_structure_and_values(got, expected, f"{owner}.{method}")


@pytest.mark.parametrize("owner", ["model", "head"])
@pytest.mark.parametrize("return_dict", [True, False])
def test_audio_features_have_qwen3_omnis_output_type_and_values(owner, return_dict):
    _, ours = vision_pair()
    thinker = audio_thinker_for(ours)
    features, mask = log_mel([300, 170], seed=4)
    # before 5.22 the thinker has no base model of its own: get_audio_features lives on the thinker only
    native_model = thinker.model if hasattr(thinker.model, "get_audio_features") else thinker
    native_owner, ours_owner = (native_model, ours.model) if owner == "model" else (thinker, ours)
    with torch.no_grad():
        expected = native_owner.get_audio_features(features, mask, return_dict=return_dict)
        got = ours_owner.get_audio_features(features, mask, return_dict=return_dict)
    assert_same_structure_and_values(got, expected, f"{owner}.get_audio_features")


def test_audio_features_from_concatenated_clips_and_lengths_match_padded_input():
    """Qwen3-Omni's other calling convention: clips already concatenated [mel, frames] with their lengths."""
    _, ours = vision_pair()
    features, mask = log_mel([300, 170], seed=4)
    flat = features.permute(0, 2, 1)[mask.bool()].permute(1, 0)
    with torch.no_grad():
        padded = ours.model.get_audio_features(features, mask).last_hidden_state
        concatenated = ours.model.get_audio_features(flat, audio_feature_lengths=mask.sum(-1)).last_hidden_state
    assert max_diff(concatenated, padded) <= TOL, f"max |diff| {max_diff(concatenated, padded):.3g}"


# --------------------------------------------------------------------------------------------------------------------
# Composite config
# --------------------------------------------------------------------------------------------------------------------

TEXT_FIELDS = ("vocab_size", "rope_parameters", "max_position_embeddings", "hidden_size", "num_hidden_layers")
TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def test_config_surface_matches_qwen3_vl_config():
    """Generic code (generate, caches, resize, peft) reads text fields through get_text_config(), as for Qwen3-VL.

    Qwen3VLConfig keeps them on its text config only; ours does the same (``use_cache`` is the one top-level
    addition: our composite model runs the decoder itself, so it reads ``config.use_cache`` there).
    """
    text = {**TEXT, "rope_parameters": MROPE}  # explicit: Qwen3-VL's default rope_theta differs from Qwen3's
    ours = Qwen3MultimodalConfig(text_config=text, vision_config=VISION)
    native = Qwen3VLConfig(text_config=text, vision_config=VISION)
    for name in TEXT_FIELDS + TOKEN_FIELDS:
        assert hasattr(ours, name) == hasattr(native, name), f"top-level {name}: ours differs from Qwen3VLConfig"
    for kwargs in ({}, {"decoder": True}, {"encoder": True}):
        got, expected = ours.get_text_config(**kwargs), native.get_text_config(**kwargs)
        assert (got is ours.text_config) == (expected is native.text_config), kwargs
        for name in TEXT_FIELDS + TOKEN_FIELDS:
            assert getattr(got, name, None) == getattr(expected, name, None), (kwargs, name)
    assert set(ours.to_dict()) - set(native.to_dict()) == {
        "audio_config",
        "audio_token_id",
        "audio_start_token_id",
        "audio_end_token_id",
        "use_cache",
    }
