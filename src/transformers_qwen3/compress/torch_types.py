"""A plan in transformers (issue 11, item 4b): ``compress(model, plan)`` and the plans a folder carries for
``from_pretrained(..., memory_budget=...)``.

The torch types (measured in docs/compression.md, "Torch quantizers measured"): a plan's ggml type names, held in
transformers by its own quantization interface (``quantization_config``):

- ``F16``: the weight stays a plain ``nn.Linear`` in the model's dtype (2 bytes per weight when the model is loaded
  in bfloat16/float16, as the planner counts it; 4 in float32);
- ``Q8_0``: bitsandbytes LLM.int8 (``BitsAndBytesConfig(load_in_8bit=True)``): int8 rows with one float32 scale per
  output row, 8 + 32/in_features bits per weight, at most the 8.5 the planner counts for Q8_0.

Why these two only: transformers holds one quantizer per model, and only bitsandbytes' and torchao's choose per
module (by full module name); HQQ chooses per linear *tag* (``self_attn.q_proj``, the same for every layer), so a
plan's per-layer choice cannot be expressed; bitsandbytes' 4-bit reloads with drifting logits and torchao has no
CPU int4 path and, installed, makes every ``import transformers`` print warnings (see the measurements).

``compress``: the plan's structure (``compress.apply.apply_structure``: neuron order, widths, dropped layers), then
the compressed model saved and loaded again through ``from_pretrained(quantization_config=...)`` with the modules the
plan keeps wide in ``llm_int8_skip_modules`` (bitsandbytes matches a pattern from the start of the module name, so
full names: ``model.layers.3.mlp.up_proj``, ``model.visual``).

``memory_budget``: the remote code may import only torch and transformers, so it cannot calibrate or plan. Our
tools write the plans into the folder (``write_budget_plans``: ``compression_plans.json``, one torch plan per
budget); the remote ``from_pretrained(folder, memory_budget="4GB")`` takes the largest plan that fits and applies
its types through the same ``BitsAndBytesConfig``; a plan that also changes widths or depth needs this package
(``compress``), and the remote code says so.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from ..formats.compression import PlanError, check_plan, structure, tensor_types
from ..outputs import atomic_file
from ..remote.modeling_qwen3_multimodal import PLANS_FILE, plan_quantization_config
from .apply import apply_structure
from .importance import text_config

# ggml type name in a plan → what holds it in torch. Full precision types keep the module as it is.
WIDE = ("F32", "F16", "BF16")
TORCH_TYPES = {"F16": "nn.Linear (model dtype)", "Q8_0": "bitsandbytes Linear8bitLt (LLM.int8)"}
PLANS_SCHEMA = "transformers-qwen3/budget-plans"


def bits_per_weight(type_name: str, in_features: int, dtype: torch.dtype = torch.bfloat16) -> float:
    """What one weight of an ``in_features``-wide row costs in torch as ``type_name``."""
    if type_name == "Q8_0":
        return 8 + 32 / in_features
    if type_name in WIDE:
        return torch.empty((), dtype=dtype).element_size() * 8
    raise PlanError(f"type {type_name} has no torch form; torch plans use {', '.join(TORCH_TYPES)}")


def quantization_config(names: dict[str, str]):
    """The ``BitsAndBytesConfig`` holding ``names`` (compressed tensor name → ggml type), or None when every planned
    weight stays wide. The mapping's one home is the remote code (``plan_quantization_config``), which the
    ``memory_budget`` path uses without this package."""
    try:
        return plan_quantization_config(names)
    except ValueError as e:
        raise PlanError(str(e)) from e


def compress(model, plan, *, dtype: torch.dtype | None = None):
    """The compressed model for ``plan`` (a plan dict or its file): its structure applied to ``model`` (changed in
    place), then its torch types through transformers' ``quantization_config``. Returns a new model (loaded from a
    temporary save of the structured one); ``dtype`` defaults to ``model``'s."""
    from transformers import AutoModelForCausalLM

    from .apply import _as_plan

    plan = _as_plan(plan)
    dtype = dtype or model.dtype
    s = structure(plan, text_config(model).to_dict(), _vision_of(model))
    names = tensor_types(plan, s)
    qc = quantization_config(names)  # refuses a non-torch type before anything changes
    model = apply_structure(model, plan)
    if qc is None:
        return model
    with tempfile.TemporaryDirectory(prefix="tq3-compress-") as tmp:
        model.save_pretrained(tmp)
        out = AutoModelForCausalLM.from_pretrained(
            tmp, quantization_config=qc, device_map="cpu", dtype=dtype, trust_remote_code=True
        )
    return out.eval() if not model.training else out


def _vision_of(model):
    vision = getattr(model.config, "vision_config", None)
    if vision is None:
        return None
    return vision.to_dict() if hasattr(vision, "to_dict") else dict(vision)


def planned_linear_bytes(plan: dict) -> int:
    """The bytes the plan gives the decoder's planned weights (the planner's count: F16 at 2 bytes, Q8_0 at ggml's
    8.5 bits per weight), to compare with what torch holds."""
    return sum(int(t["bytes"]) for t in plan["tensors"].values())


def torch_linear_bytes(model) -> int:
    """What the decoder's linear weights take in ``model``: parameters and bitsandbytes' int8 weights and scales."""
    total = 0
    for name, module in model.named_modules():
        if not name.startswith("model.layers.") or not hasattr(module, "weight") or module.weight is None:
            continue
        if module.weight.ndim != 2:
            continue
        total += module.weight.numel() * module.weight.element_size()
        scb = getattr(module.weight, "SCB", None)
        if scb is not None:
            total += scb.numel() * scb.element_size()
    return total


# --- plans a folder carries, for the remote code's memory_budget ----------------------------------------------------------
def write_budget_plans(folder, plans: list[dict]) -> Path:
    """Write ``plans`` (torch plans for this folder's model, from ``transformers-qwen3 plan --runtime torch``) into
    ``folder/compression_plans.json``, where the remote ``from_pretrained(..., memory_budget=...)`` finds them."""
    folder = Path(folder)
    out = []
    for i, plan in enumerate(plans):
        plan = check_plan(plan, f"plans[{i}]")
        if plan.get("runtime") != "torch":
            raise PlanError(
                f"plans[{i}] was made for --runtime {plan.get('runtime')}; memory_budget needs torch plans"
            )
        quantization_config({n: t["type"] for n, t in plan["tensors"].items()})  # every type has a torch form
        out.append(plan)
    if not out:
        raise PlanError("no plans to write")
    doc = {"schema": PLANS_SCHEMA, "version": 1, "plans": sorted(out, key=lambda p: p["bytes"])}
    path = folder / PLANS_FILE
    with atomic_file(path) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1) + "\n")
    return path
