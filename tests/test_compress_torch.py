"""A plan in transformers (issue 11, item 4b): ``compress(model, plan)`` and ``from_pretrained(..., memory_budget=)``.

Oracles: the structure part against K1's applier (``compress.apply.apply_structure``) on the same weights; the types
against transformers' own bitsandbytes load of the same modules (``BitsAndBytesConfig`` written out by hand here),
and the planner's byte count (gguf-py's block table) for the bytes; quality against the fp32 model through
``runtime/metrics.py``.
"""

import copy
import json

import numpy as np
import pytest
import torch

pytest.importorskip("bitsandbytes", reason="bitsandbytes is the torch runtime's 8-bit type ([bench] extra)")

from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

from transformers_qwen3 import Qwen3MultimodalConfig, Qwen3MultimodalForConditionalGeneration  # noqa: E402
from transformers_qwen3.checkpoint.hub_folder import save_hub_folder  # noqa: E402
from transformers_qwen3.checkpoint.presets import text_config  # noqa: E402
from transformers_qwen3.compress import compress, write_budget_plans  # noqa: E402
from transformers_qwen3.compress.apply import apply_structure  # noqa: E402
from transformers_qwen3.compress.quants import round_trip, tensor_bytes  # noqa: E402
from transformers_qwen3.compress.torch_types import planned_linear_bytes, torch_linear_bytes  # noqa: E402
from transformers_qwen3.formats.compression import SCHEMA, PlanError  # noqa: E402
from transformers_qwen3.runtime.metrics import compare_logits  # noqa: E402

FULL, N_LAYERS = 256, 3
IDS = torch.randint(0, 256, (2, 13), generator=torch.Generator().manual_seed(5))
# Quality bound: LLM.int8's KL to fp32 within KL_FACTOR of llama.cpp's own Q8_0 round trip of the same weights (the
# GGUF side of the same plan; ggml's quantizer, compress/quants.py). Measured here: 3.2x (LLM.int8 scales a whole row,
# Q8_0 every 32 weights, and bitsandbytes casts the inputs to float16).
KL_FACTOR = 5.0


def tiny_model(seed=0):
    torch.manual_seed(seed)
    text = {**text_config("tiny"), "num_hidden_layers": N_LAYERS, "intermediate_size": FULL, "head_dim": 16}
    model = Qwen3MultimodalForConditionalGeneration(Qwen3MultimodalConfig(text_config=text)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    return model


def make_plan(model, types, widths=None, skip=(), seed=0, orders=True):
    """A torch plan as `transformers-qwen3 plan --runtime torch` writes it: bytes from the planner's table."""
    g = torch.Generator().manual_seed(seed)
    widths = widths or [FULL] * N_LAYERS
    layers = [
        {
            "index": i,
            "skip": i in skip,
            "new_index": None,
            "ffn_width": widths[i],
            "ffn_full": FULL,
            "ffn_order": torch.randperm(FULL, generator=g).tolist() if orders else None,
            "kl": 0.0,
        }
        for i in range(N_LAYERS)
    ]
    tensors = {}
    for name, p in model.named_parameters():
        if p.dim() != 2 or not name.startswith("model.layers."):
            continue
        layer = int(name.split(".")[2])
        if layer in skip:
            continue
        shape = list(p.shape)
        if ".mlp." in name:
            shape[1 if name.endswith("down_proj.weight") else 0] = widths[layer]
        t = types(name)
        tensors[name] = {"type": t, "bytes": tensor_bytes(t, tuple(shape)), "kl": 0.0}
    total = sum(t["bytes"] for t in tensors.values())
    return {"schema": SCHEMA, "version": 1, "model_sha256": "0" * 64, "runtime": "torch", "layers": layers,
            "tensors": tensors, "bytes": total, "weight_bytes": total}  # fmt: skip


def mixed(name):
    """Q8_0 everywhere but the attention's output projections and layer 2's MLP (kept wide)."""
    return "F16" if name.endswith("o_proj.weight") or ".layers.2.mlp." in name else "Q8_0"


def assert_quality(wide, plan, got):
    """KL(fp32 ‖ got) > 0 and within KL_FACTOR of ggml's Q8_0 round trip of the plan's Q8_0 weights in ``wide``
    (the model with the plan's structure, full precision)."""
    gguf = copy.deepcopy(wide)
    with torch.no_grad():
        for name, p in gguf.named_parameters():
            if plan["tensors"].get(name, {}).get("type") == "Q8_0":
                p.copy_(round_trip(p, "Q8_0"))
    ref = flat(logits(wide))
    m, g = compare_logits(ref, flat(logits(got))), compare_logits(ref, flat(logits(gguf)))
    print(f"KL to fp32: bitsandbytes int8 {m['kl_mean']:.2e} (top-1 {m['top1_agreement']:.3f}), ggml Q8_0 "
          f"{g['kl_mean']:.2e} (top-1 {g['top1_agreement']:.3f})")  # fmt: skip
    assert 0 < m["kl_mean"] < KL_FACTOR * g["kl_mean"], (m, g)


def flat(x):
    return x.reshape(-1, x.shape[-1]).numpy()


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def n_linear_params(model):
    return sum(m.weight.numel() for n, m in model.named_modules() if n.startswith("model.layers.") and _is_linear(m))


def _is_linear(m):
    return type(m).__name__ in ("Linear", "Linear8bitLt")


def test_types_follow_the_plan_and_quality_holds():
    """Q8_0 modules become bitsandbytes' Linear8bitLt, F16 ones stay nn.Linear, exactly as a hand-written
    BitsAndBytesConfig with transformers' loader gives; parameter count unchanged, bytes within the planner's
    count, KL to fp32 within the bound."""
    model = tiny_model()
    plan = make_plan(model, mixed)
    out = compress(copy.deepcopy(model), plan)
    kinds = {n: type(m).__name__ for n, m in out.named_modules() if n.startswith("model.layers.") and _is_linear(m)}
    assert kinds and all((k == "Linear") == (mixed(n + ".weight") == "F16") for n, k in kinds.items()), kinds
    assert n_linear_params(out) == n_linear_params(model)
    # torch's bytes: int8 rows + one fp32 scale per row (<= ggml's Q8_0 8.5 bits), F16 at the fp32 model's 4 bytes
    wide = sum(t["bytes"] for t in plan["tensors"].values() if t["type"] == "F16")
    assert torch_linear_bytes(out) <= planned_linear_bytes(plan) + wide
    assert torch_linear_bytes(out) >= 0.9 * (planned_linear_bytes(plan) + wide)
    assert_quality(model, plan, out)


def test_same_as_transformers_own_bnb_load(tmp_path):
    """The oracle: the model saved and loaded by transformers with the BitsAndBytesConfig written by hand."""
    model = tiny_model(seed=1)
    plan = make_plan(model, mixed, orders=False)  # neurons as stored: the same sums in the same order
    model.save_pretrained(tmp_path / "fp32")
    skip = ["lm_head"] + [f"model.layers.{i}.self_attn.o_proj" for i in range(N_LAYERS)] + ["model.layers.2.mlp"]
    oracle = AutoModelForCausalLM.from_pretrained(
        tmp_path / "fp32",
        quantization_config=BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip),
        device_map="cpu",
        dtype=torch.float32,
    )
    assert torch.equal(logits(compress(model, plan)), logits(oracle))


def test_structure_is_k1s_applier_and_the_result_reloads(tmp_path):
    """Widths [256, 128, 256→skip] and types: parameter count and (types all F16) logits identical to
    apply_structure; with Q8_0, save → from_pretrained(trust_remote_code) gives equal logits."""
    widths, skip = [FULL, 128, FULL], {2}
    base = tiny_model(seed=2)
    wide_plan = make_plan(base, lambda n: "F16", widths, skip)
    structured = apply_structure(copy.deepcopy(base), wide_plan)
    ours = compress(copy.deepcopy(base), wide_plan)
    assert torch.equal(logits(ours), logits(structured))

    plan = make_plan(base, mixed, widths, skip)
    out = compress(copy.deepcopy(base), plan)
    assert n_linear_params(out) == n_linear_params(structured)
    assert out.config.text_config.intermediate_size == [FULL, 128]
    assert_quality(structured, plan, out)

    from transformers_qwen3.checkpoint.tokenizer import build_qwen3_tokenizer

    folder = save_hub_folder(out, build_qwen3_tokenizer(), tmp_path / "q8")
    back = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, device_map="cpu")
    assert type(back.model.layers[0].mlp.up_proj).__name__ == "Linear8bitLt"
    assert torch.equal(logits(back), logits(out))


def test_a_type_torch_cannot_hold_is_refused_before_anything_changes():
    model = tiny_model()
    before = logits(model)
    plan = make_plan(model, lambda n: "Q4_K" if "mlp" in n else "Q8_0", [FULL, 128, FULL])
    with pytest.raises(PlanError, match=r"Q4_K.*--runtime torch"):
        compress(model, plan)
    assert torch.equal(logits(model), before) and len(model.model.layers) == N_LAYERS


# --- memory_budget: the folder carries the plans, the remote code picks and applies one ------------------------------
@pytest.fixture(scope="module")
def budget_folder(tmp_path_factory):
    from transformers_qwen3.checkpoint.tokenizer import build_qwen3_tokenizer

    model = tiny_model(seed=3)
    folder = save_hub_folder(model, build_qwen3_tokenizer(), tmp_path_factory.mktemp("budget") / "m")
    plans = [make_plan(model, lambda n: "F16"), make_plan(model, lambda n: "Q8_0"), make_plan(model, mixed)]
    write_budget_plans(folder, plans)
    return folder, model, sorted(p["bytes"] for p in plans)


def test_memory_budget_picks_the_largest_plan_that_fits(budget_folder):
    folder, model, (q8, mix, f16) = budget_folder
    ref = logits(model)
    kinds = {}
    for budget, expect in [(f"{f16}B", "F16"), (f"{f16 - 1}B", "mixed"), (f"{(q8 + mix) // 2}", "Q8_0")]:
        got = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, memory_budget=budget)
        kinds[expect] = {type(m).__name__ for n, m in got.named_modules() if n.startswith("model.layers.")}
        if expect == "F16":
            assert torch.equal(logits(got), ref)
        else:
            assert_quality(model, make_plan(model, mixed if expect == "mixed" else lambda n: "Q8_0"), got)
    assert "Linear8bitLt" not in kinds["F16"]
    assert {"Linear8bitLt", "Linear"} <= kinds["mixed"]
    assert "Linear8bitLt" in kinds["Q8_0"] and "Linear" not in kinds["Q8_0"]
    # a budget in GB parses too
    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, memory_budget="4GB")


def test_memory_budget_bad_input(budget_folder, tmp_path):
    folder, model, (q8, _, _) = budget_folder
    with pytest.raises(ValueError, match=rf"below the smallest plan this folder carries \({q8} bytes\)"):
        AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, memory_budget=f"{q8 - 1}")
    with pytest.raises(ValueError, match="give bytes with a unit"):
        AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, memory_budget="four gigs")
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in folder.iterdir():
        if f.name != "compression_plans.json":
            (bare / f.name).symlink_to(f)
    with pytest.raises(ValueError, match="pip install transformers-qwen3"):
        AutoModelForCausalLM.from_pretrained(bare, trust_remote_code=True, memory_budget="4GB")


def test_memory_budget_refuses_a_structural_plan_and_writing_refuses_bad_plans(tmp_path):
    from transformers_qwen3.checkpoint.tokenizer import build_qwen3_tokenizer

    model = tiny_model(seed=4)
    folder = save_hub_folder(model, build_qwen3_tokenizer(), tmp_path / "m")
    write_budget_plans(folder, [make_plan(model, lambda n: "Q8_0", [FULL, 128, FULL])])
    with pytest.raises(ValueError, match=r"cuts FFN widths or layers.*compress\(model, plan\)"):
        AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, memory_budget="1GB")
    before = json.loads((folder / "compression_plans.json").read_text())
    gguf_plan = {**make_plan(model, lambda n: "Q8_0"), "runtime": "gguf"}
    with pytest.raises(PlanError, match="memory_budget needs torch plans"):
        write_budget_plans(folder, [gguf_plan])
    with pytest.raises(PlanError, match="Q4_K"):
        write_budget_plans(folder, [make_plan(model, lambda n: "Q4_K" if "mlp" in n else "Q8_0")])
    assert json.loads((folder / "compression_plans.json").read_text()) == before  # nothing half-written
    assert np.isfinite(logits(model).numpy()).all()
