"""The planner on a synthetic calibration (no model needed): the floor is reachable and exact, the KV cache is
counted, and the greedy search is checked against exhaustive search on a problem small enough to enumerate."""

import itertools

import pytest
import torch

from transformers_qwen3.compress.calibrate import Calibration
from transformers_qwen3.compress.plan import PlanError, Shape, make_plan, minimum_bytes
from transformers_qwen3.compress.quants import tensor_bytes
from transformers_qwen3.formats.compression import structure

TEXT = dict(num_hidden_layers=2, hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64)
KL = {"F16": 0.0, "Q8_0": 1e-4, "Q4_K": 1e-2, "Q2_K": 0.2}


def synthetic(scale=(1.0, 3.0, 0.5)) -> Calibration:
    shapes = {"model.embed_tokens.weight": [1024, 256]}
    for i in range(2):
        shapes[f"model.layers.{i}.self_attn.q_proj.weight"] = [256, 256]
        shapes[f"model.layers.{i}.mlp.up_proj.weight"] = [512, 256]
        shapes[f"model.layers.{i}.mlp.down_proj.weight"] = [256, 512]
    tensor_kl = {n: {t: kl * scale[k % 3] for t, kl in KL.items()} for k, n in enumerate(shapes)}
    return Calibration(
        model_sha256="0" * 64,
        shapes=shapes,
        imatrix={},
        imatrix_tokens=1,
        tensor_kl=tensor_kl,
        neuron_scores=[torch.ones(512)] * 2,
        width_kl=[{256: 0.05}, {256: 0.5}],
        layer_kl=[2.0, 0.3],
        tokens=1,
        tied_embeddings=True,
    )


def test_kv_cache_is_counted():
    calib = synthetic()
    a = make_plan(calib, TEXT, 10**9, context=0)
    b = make_plan(calib, TEXT, 10**9, context=1000)
    kv = 2 * 2 * 2 * 64 * 1000 * 2  # K and V, 2 layers, 2 KV heads, head_dim 64, 1000 tokens, f16
    assert b["kv_cache_bytes"] == kv and b["bytes"] - a["bytes"] == kv


def test_the_floor_is_exact_and_reachable():
    calib = synthetic()
    floor = minimum_bytes(calib, Shape.from_text_config(TEXT), "gguf", 0, 1)
    plan = make_plan(calib, TEXT, floor, max_skip=1)
    assert plan["bytes"] == floor
    with pytest.raises(PlanError, match=rf"below the smallest model this plan can make.*\({floor} bytes"):
        make_plan(calib, TEXT, floor - 1, max_skip=1)


def test_deepstack_layers_are_never_skipped():
    """Qwen3-VL adds deepstack features after each of the first len(deepstack_visual_indexes) decoder layers. The
    appliers refuse a plan that skips one of them (it would move the features), or that leaves a deepstack layer
    last (llama.cpp's qwen3vl graph aborts on it: formats.compression.structure); the planner offers neither."""
    calib = synthetic()
    calib.layer_kl = [1e-6, 0.3]  # skipping layer 0 is nearly free: taken whenever it is allowed
    vision = {"deepstack_visual_indexes": [2]}  # one deepstack layer, of two
    text = {**TEXT, "intermediate_size": 512}
    shape = Shape.from_text_config(TEXT)
    floor = minimum_bytes(calib, shape, "gguf", 0, 1)
    free = make_plan(calib, TEXT, floor, max_skip=1)
    assert [x["skip"] for x in free["layers"]] == [True, False]
    with pytest.raises(PlanError, match="skips decoder layer.*deepstack"):
        structure(free, text, vision)
    kept_floor = minimum_bytes(calib, shape, "gguf", 0, 1, keep_first=1)
    assert kept_floor > floor  # neither layer may go: the floor keeps both
    with pytest.raises(PlanError, match="below the smallest model"):
        make_plan(calib, TEXT, floor, max_skip=1, vision_config=vision)
    plan = make_plan(calib, TEXT, kept_floor, max_skip=1, vision_config=vision)
    assert [x["skip"] for x in plan["layers"]] == [False, False] and plan["bytes"] == kept_floor
    structure(plan, text, vision)  # accepted
    plan["layers"][1]["skip"] = True  # a deepstack layer last: refused
    with pytest.raises(PlanError, match="keep at least 2"):
        structure(plan, text, vision)


def _exhaustive(calib, budget):
    """The best predicted KL over every combination of types, widths and skips (the planner's own loss model)."""
    shape = Shape.from_text_config(TEXT)
    names = list(calib.shapes)
    best = None
    for types in itertools.product(KL, repeat=len(names)):
        for widths in itertools.product((512, 256), repeat=2):
            for skip in ((False, False), (True, False), (False, True)):
                total, kl = shape.fixed_bytes, 0.0
                for name, t in zip(names, types, strict=True):
                    layer = int(name.split(".")[2]) if ".layers." in name else None
                    if layer is not None and skip[layer]:
                        continue
                    s = list(calib.shapes[name])
                    if layer is not None and ".mlp." in name:
                        s[1 if "down" in name else 0] = widths[layer]
                    total += tensor_bytes(t, tuple(s))
                    kl += calib.tensor_kl[name][t]
                for i in range(2):
                    kl += calib.layer_kl[i] if skip[i] else (calib.width_kl[i][256] if widths[i] == 256 else 0)
                if total <= budget and (best is None or kl < best):
                    best = kl
    return best


@pytest.mark.parametrize("fraction", [0.1, 0.35, 0.5, 0.7, 0.9])
def test_greedy_against_exhaustive_search(fraction):
    """Greedy is not optimal in general (a multiple-choice knapsack); on this problem it finds the optimum of the
    planner's own loss model at every budget tried (measured: equal at 10, 35, 50, 70 and 90 % of the range)."""
    calib = synthetic()
    widest = make_plan(calib, TEXT, 10**9, max_skip=1)["bytes"]
    floor = minimum_bytes(calib, Shape.from_text_config(TEXT), "gguf", 0, 1)
    budget = int(floor + fraction * (widest - floor))
    plan = make_plan(calib, TEXT, budget, max_skip=1)
    optimum = _exhaustive(calib, budget)
    assert plan["bytes"] <= budget
    assert plan["predicted_kl"] == pytest.approx(optimum, rel=1e-9), (plan["predicted_kl"], optimum)
