"""Applying a plan's structure: FFN neurons in importance order and cut to each layer's planned width, skipped
layers dropped and the rest renumbered, the config updated (docs/compression.md, "Applying a plan").

What a plan does to tensors and configs lives in ``formats/compression.py`` (pure functions over names, tensors and
config dicts), which ``convert --plan`` uses for the GGUF too: one home, so both runtimes get the same model.

- ``apply_structure(model, plan)``: in memory, on our ``Qwen3MultimodalForConditionalGeneration`` or a native
  ``Qwen3ForCausalLM`` (one width for every kept layer only: transformers' class has no per-layer widths).
- ``save_compressed(model, plan, out_dir, tokenizer=...)``: the same, written as our Hub folder.
- ``compress_folder(src, plan, out_dir)``: folder to folder through the checkpoint view the converter reads, the
  plan checked against the folder's sha256.

The in-memory path cannot check the plan's model hash (that is a hash of the stored tensors); it checks the layer
count, every layer's full FFN width and the deepstack rule against the model's config.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from ..checkpoint.hub_folder import save_hub_folder
from ..formats.compression import (
    PlanError,
    check_plan,
    checkpoint_sha256,
    planned_checkpoint,
    read_plan,
    structure,
)
from ..formats.folder import CONFIG_NAME, INDEX_NAME, LAYOUTS, validate_folder
from ..outputs import atomic_folder
from .importance import decoder_layers, text_config

__all__ = ["apply_structure", "compress_folder", "save_compressed"]


def _as_plan(plan, where: str = "plan", model_sha256: str | None = None) -> dict:
    if isinstance(plan, (str, Path)):
        return read_plan(plan, model_sha256)
    return check_plan(plan, where, model_sha256)


def _vision_dict(model) -> dict | None:
    vision = getattr(model.config, "vision_config", None)
    if vision is None:
        return None
    return vision.to_dict() if hasattr(vision, "to_dict") else dict(vision)


@torch.no_grad()
def apply_structure(model, plan) -> nn.Module:
    """The compressed model: ``model`` changed in place (and returned). ``plan``: a plan dict or its file."""
    plan = _as_plan(plan)
    config = text_config(model)
    text = config.to_dict()
    s = structure(plan, text, _vision_dict(model))
    new_text = s.text_config(text)
    if isinstance(new_text["intermediate_size"], list) and not hasattr(config, "ffn_width"):
        raise PlanError(
            f"the plan gives the kept layers different FFN widths; {type(model).__name__} has one width for all "
            "layers: load the model with transformers-qwen3's class (trust_remote_code=True) first"
        )
    layers = decoder_layers(model)
    for i in s.kept:
        mlp = layers[i].mlp
        for proj in ("gate_proj", "up_proj", "down_proj"):
            linear = getattr(mlp, proj)
            weight = s.sliced(f"model.layers.{i}.mlp.{proj}.weight", linear.weight.detach())
            linear.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
            linear.out_features, linear.in_features = weight.shape
        mlp.intermediate_size = s.widths[i]
    kept = nn.ModuleList([layers[i] for i in s.kept])
    for new, layer in enumerate(kept):
        layer.self_attn.layer_idx = new  # the KV cache's slot
    base = model.model if hasattr(model, "model") else model
    base.layers = kept
    for key in ("num_hidden_layers", "intermediate_size", "layer_types", "skipped_layers", "max_window_layers"):
        if key in new_text:
            setattr(config, key, new_text[key])
        elif hasattr(config, key) and key == "skipped_layers":
            delattr(config, key)
    return model


def save_compressed(model, plan, out_dir, *, tokenizer=None, processor=None, force: bool = False) -> Path:
    """``apply_structure(model, plan)`` written as our Hub folder at ``out_dir`` (atomically; loads with
    ``AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True)``)."""
    model = apply_structure(model, plan)
    return save_hub_folder(model, tokenizer, Path(out_dir), force=force, processor=processor)


def compress_folder(src, plan, out_dir, *, force: bool = False) -> Path:
    """Folder to folder: the checkpoint ``src`` with ``plan`` applied (refused when the plan was made for another
    model), written at ``out_dir`` with ``src``'s other files (tokenizer, processor, code) copied."""
    src, out_dir = Path(src), Path(out_dir)
    ckpt = validate_folder(src)
    plan = _as_plan(plan, model_sha256=checkpoint_sha256(ckpt))
    view = planned_checkpoint(ckpt, plan)
    from safetensors.torch import save_file

    renames = LAYOUTS[ckpt.model_type].key_renames
    with atomic_folder(out_dir, force=force, sources=[src]) as tmp:
        tensors = {}
        for name in view.tensors:
            stored = name
            for stored_prefix, ours in renames:  # back to the folder's own layout (Qwen3-VL: model.language_model.)
                if name.startswith(ours):
                    stored = stored_prefix + name[len(ours) :]
                    break
            tensors[stored] = view.load(name).clone()
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        import json

        (tmp / CONFIG_NAME).write_text(json.dumps(view.config, indent=2) + "\n")
        for path in sorted(src.iterdir()):
            if path.is_file() and path.name not in (CONFIG_NAME, INDEX_NAME) and path.suffix != ".safetensors":
                shutil.copyfile(path, tmp / path.name)
    return out_dir
