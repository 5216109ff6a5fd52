"""The tensor plan of one GGUF file: every output tensor's name, source, reshaping step, shape, type and size.

Built from safetensors headers only (shapes come from running the reshaping step on meta tensors), so a dry run
and the GGUF header need no tensor data. `materialize` then produces one tensor's bytes at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import gguf
import numpy as np
import torch

from ..formats.folder import SAFETENSORS_DTYPES, Checkpoint
from ..formats.keys import AUDIO_PREFIX, TEXT_PREFIXES, VISION_PREFIX
from .errors import ConversionError
from .tensor_map import (
    AUDIO_POSITION_EMBD,
    AUDIO_TENSORS,
    RESHAPES,
    TEXT_TENSORS,
    VISION_TENSORS,
    Rule,
    gguf_base_name,
    match,
    storage_rule,
)

QT = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class PlannedTensor:
    name: str  # GGUF name
    source: str | None  # checkpoint tensor (None: generated)
    reshape: str  # key into RESHAPES
    part: int  # which output of the reshaping step
    shape: tuple[int, ...]  # torch order; GGUF stores it reversed
    qtype: QT
    nbytes: int
    generate: Callable[[], torch.Tensor] | None = None

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


def tensor_nbytes(shape: tuple[int, ...], qtype: QT) -> int:
    return int(np.prod(gguf.quant_shape_to_byte_shape(shape, qtype)))


def storage_type(gguf_name: str, shape: tuple[int, ...], outtype: QT) -> QT:
    rule = storage_rule(gguf_name, len(shape))
    if rule == "f32":
        return QT.F32
    if rule == "f16":
        return QT.F16
    if rule == "f16_or_f32":
        return QT.F16 if outtype == QT.F16 else QT.F32
    block, _ = gguf.GGML_QUANT_SIZES[outtype]
    if shape[-1] % block != 0:
        # llama.cpp's converter falls back to F16 when rows do not split into whole blocks
        return QT.F16
    return outtype


def _plan_source(ckpt: Checkpoint, hf_name: str, table: dict[str, Rule], outtype: QT) -> list[PlannedTensor]:
    m = match(table, hf_name)
    if m is None:
        raise ConversionError(f"tensor {hf_name!r} has no GGUF name in convert/tensor_map.py")
    deepstack = (ckpt.vision or {}).get("deepstack_visual_indexes")
    base = gguf_base_name(m, deepstack) + m.suffix
    src = ckpt.tensors[hf_name]
    meta = torch.empty(src.shape, dtype=SAFETENSORS_DTYPES[src.dtype], device="meta")
    out = []
    for part, (extra, t) in enumerate(RESHAPES[m.rule.reshape](meta)):
        shape = tuple(t.shape)
        qtype = storage_type(base + extra, shape, outtype)
        out.append(
            PlannedTensor(base + extra, hf_name, m.rule.reshape, part, shape, qtype, tensor_nbytes(shape, qtype))
        )
    return out


def _audio_positions(ckpt: Checkpoint) -> Callable[[], torch.Tensor]:
    def generate() -> torch.Tensor:
        # transformers' own sinusoid table (a non-persistent buffer, so not in the checkpoint)
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import SinusoidsPositionEmbedding

        a = ckpt.audio
        return SinusoidsPositionEmbedding(a.get("max_source_positions", 1500), a["d_model"]).positional_embedding

    return generate


def plan_text(ckpt: Checkpoint, outtype: QT) -> list[PlannedTensor]:
    plan: list[PlannedTensor] = []
    for name in ckpt.tensors:
        if not name.startswith(TEXT_PREFIXES):
            continue
        if name == "lm_head.weight" and ckpt.tie_word_embeddings:
            continue  # tied: llama.cpp reuses token_embd when `output` is absent
        plan.extend(_plan_source(ckpt, name, TEXT_TENSORS, outtype))
    return plan


def plan_mmproj(ckpt: Checkpoint, outtype: QT) -> list[PlannedTensor]:
    plan: list[PlannedTensor] = []
    if ckpt.audio is not None:
        shape = (ckpt.audio.get("max_source_positions", 1500), ckpt.audio["d_model"])
        qtype = storage_type(AUDIO_POSITION_EMBD, shape, outtype)
        plan.append(
            PlannedTensor(
                AUDIO_POSITION_EMBD,
                None,
                "none",
                0,
                shape,
                qtype,
                tensor_nbytes(shape, qtype),
                generate=_audio_positions(ckpt),
            )
        )
    for name in ckpt.tensors:
        if ckpt.vision is not None and name.startswith(VISION_PREFIX):
            plan.extend(_plan_source(ckpt, name, VISION_TENSORS, outtype))
        elif ckpt.audio is not None and name.startswith(AUDIO_PREFIX):
            plan.extend(_plan_source(ckpt, name, AUDIO_TENSORS, outtype))
    return plan


# Tensors larger than this are converted and written in blocks of rows of about this size (rows are independent
# for every type we write: F32 / F16 / BF16 are element-wise, Q8_0 blocks run along a row).
CHUNK_BYTES = 32 * 1024 * 1024


# IEEE casts run in torch (one vectorised pass, bf16 → f16 without a float32 copy); they round exactly as numpy's
# astype in gguf.quants does (round to nearest even). Other types go through gguf.quants from float32, as llama.cpp's
# converter does.
_TORCH_CASTS = {QT.F32: torch.float32, QT.F16: torch.float16}


def _to_array(t: torch.Tensor, qtype: QT) -> np.ndarray:
    if qtype in _TORCH_CASTS:
        return t.to(_TORCH_CASTS[qtype]).contiguous().numpy()
    if t.dtype not in (torch.float16, torch.float32):
        t = t.to(torch.float32)  # bf16 → f32 is exact; F16 sources stay F16 like llama.cpp's converter
    return gguf.quants.quantize(np.ascontiguousarray(t.numpy()), qtype)


class RowBlocks:
    """A tensor GGUFWriter.write_tensor_data can write (it needs `nbytes` and `tofile`) that reads, converts and
    writes one block of rows at a time: peak memory is one block, not the tensor."""

    def __init__(self, ckpt: Checkpoint, item: PlannedTensor):
        self.ckpt, self.item = ckpt, item
        self.nbytes = item.nbytes
        src = ckpt.tensors[item.source]
        self.rows = src.shape[0]
        row_elements = math.prod(src.shape[1:])
        self.step = max(1, CHUNK_BYTES // (4 * row_elements))  # rows per block, counted in float32

    def tofile(self, fp) -> None:
        written = 0
        for start in range(0, self.rows, self.step):
            block = _to_array(self.ckpt.load(self.item.source, start, start + self.step), self.item.qtype)
            block.tofile(fp)
            written += block.nbytes
        if written != self.nbytes:
            raise ConversionError(f"{self.item.name}: wrote {written} bytes, planned {self.nbytes}")


def materialize(ckpt: Checkpoint, item: PlannedTensor, cache: dict[str, list[torch.Tensor]]):
    """The data of one planned tensor, as GGUFWriter writes it: an array, or `RowBlocks` for a large tensor.

    A reshaping step with several outputs (the Conv3d split) reads its source once: the other outputs wait in
    `cache` until their turn, which comes right after."""
    if item.generate is not None:
        data = item.generate()
    else:
        src = ckpt.tensors[item.source]
        if item.reshape == "none" and len(src.shape) >= 2 and src.shape[0] * src.row_nbytes > CHUNK_BYTES:
            return RowBlocks(ckpt, item)
        parts = cache.pop(item.source, None)
        if parts is None:
            parts = [p for _, p in RESHAPES[item.reshape](ckpt.load(item.source))]
        data = parts[item.part]
        if item.part + 1 < len(parts):
            cache[item.source] = parts
    if tuple(data.shape) != item.shape:
        raise ConversionError(f"{item.name}: produced shape {tuple(data.shape)}, planned {item.shape}")
    return _to_array(data, item.qtype)


def format_plan(plan: list[PlannedTensor], title: str) -> str:
    """One line per tensor (GGUF name, shape in ggml order, type, bytes) and the totals."""
    width = max((len(p.name) for p in plan), default=10)
    lines = [f"{title}", f"  {'tensor':<{width}}  {'shape (ggml order)':<24} {'type':<6} {'bytes':>12}"]
    for p in plan:
        shape = "{" + ", ".join(str(d) for d in reversed(p.shape)) + "}"
        lines.append(f"  {p.name:<{width}}  {shape:<24} {p.qtype.name:<6} {p.nbytes:>12,}")
    total = sum(p.nbytes for p in plan)
    params = sum(p.n_elements for p in plan)
    by_type: dict[str, int] = {}
    for p in plan:
        by_type[p.qtype.name] = by_type.get(p.qtype.name, 0) + 1
    types = ", ".join(f"{k}×{v}" for k, v in sorted(by_type.items()))
    lines.append(f"  total: {len(plan)} tensors, {params:,} parameters, {total:,} bytes ({types})")
    return "\n".join(lines)
