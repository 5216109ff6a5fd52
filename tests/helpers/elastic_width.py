"""Elastic FFN width (ggml_patches/0004) on the transformers side: the oracle llama.cpp's ``--ffn-width`` /
``Llama(ffn_width=...)`` is compared with. A width w keeps a layer's first w FFN neurons: the first w rows of
gate_proj/up_proj ([n_ff, n_embd]) and the first w columns of down_proj ([n_embd, n_ff]).
Used by tests/test_elastic_width.py (x86) and tests/riscv/test_riscv_elastic_width.py (qemu RVV)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MLP_PROJ = ("gate_proj", "up_proj", "down_proj")
MLP_WEIGHTS = tuple(f"mlp.{proj}.weight" for proj in MLP_PROJ)


def slice_ffn(weight: torch.Tensor, name: str, width: int) -> torch.Tensor:
    """The first ``width`` neurons of one FFN weight ``name`` (…gate_proj.weight, …up_proj.weight, …down_proj.weight)."""
    return weight[:, :width].contiguous() if name.endswith("down_proj.weight") else weight[:width].contiguous()


def narrow_mlps(model, widths: list[int]):
    """``model`` (transformers' Qwen3ForCausalLM) with layer i's MLP cut to ``widths[i]`` neurons, in place:
    Qwen3MLP computes with whatever Linear layers it holds. Returns ``model``."""
    for layer, width in zip(model.model.layers, widths, strict=True):
        for proj in MLP_PROJ:
            weight = slice_ffn(getattr(layer.mlp, proj).weight.data, f"{proj}.weight", width)
            narrow = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
            narrow.weight.data = weight
            setattr(layer.mlp, proj, narrow)
    return model


def sliced_checkpoint(src: Path, dst: Path, width: int) -> Path:
    """``src`` (a Qwen3 checkpoint folder) with every layer's FFN cut to its first ``width`` neurons, written to
    ``dst`` as an ordinary checkpoint (once: an existing ``dst`` is reused). Its GGUF at a quantized type holds the
    same quantization blocks as the full GGUF's leading rows / columns, so it is the oracle of a sliced run."""
    if not dst.is_dir():
        tmp = dst.with_name(f"{dst.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        for shard in tmp.glob("*.safetensors"):
            tensors = load_file(shard)
            tensors = {k: slice_ffn(v, k, width) if k.endswith(MLP_WEIGHTS) else v for k, v in tensors.items()}
            save_file(tensors, shard, metadata={"format": "pt"})
        config = json.loads((tmp / "config.json").read_text())
        config["intermediate_size"] = width
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tmp.rename(dst)
    return dst
