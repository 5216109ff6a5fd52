"""Read a checkpoint folder: its config (three supported layouts) and a lazy index over its safetensors.

Layouts are an explicit registry keyed by `config.json`'s ``model_type``, never guessed from names or READMEs:

- ``qwen3_multimodal``: ours; ``text_config`` + optional ``vision_config`` / ``audio_config``, keys as documented in
  `tensor_map`.
- ``qwen3``: a native ``Qwen3ForCausalLM`` (flat config, text only).
- ``qwen3_vl``: a native ``Qwen3VLForConditionalGeneration``; its ``model.language_model.`` prefix folds into
  ``model.``, so its text keys become Qwen3ForCausalLM's.

Nothing here reads tensor data until `Checkpoint.load` is called for one tensor.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .errors import ConversionError


@dataclass(frozen=True)
class Layout:
    description: str
    key_renames: tuple[tuple[str, str], ...] = ()  # stored prefix → our prefix
    towers_allowed: bool = True


LAYOUTS: dict[str, Layout] = {
    "qwen3_multimodal": Layout("Qwen3-Multimodal (transformers-qwen3)"),
    "qwen3": Layout("Qwen3ForCausalLM", towers_allowed=False),
    "qwen3_vl": Layout("Qwen3VLForConditionalGeneration", key_renames=(("model.language_model.", "model."),)),
}

# Tower configs we can convert, by their `model_type`: what llama.cpp's qwen3vl_merger / qwen3a projectors implement.
VISION_MODEL_TYPES = {"qwen3_vl_vision": "Qwen3-VL vision tower (Qwen3VLVisionModel)"}
AUDIO_MODEL_TYPES = {"qwen3_omni_moe_audio_encoder": "Qwen3-Omni audio encoder (Qwen3OmniMoeAudioEncoder)"}

SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def supported_summary() -> str:
    layouts = ", ".join(f"{mt!r} ({lay.description})" for mt, lay in LAYOUTS.items())
    towers = ", ".join(f"{mt!r}" for mt in (*VISION_MODEL_TYPES, *AUDIO_MODEL_TYPES))
    return f"supported model_type values: {layouts}; supported tower configs: {towers}"


@dataclass(frozen=True)
class SourceTensor:
    name: str  # our key (after the layout's prefix renames)
    file: Path
    stored_name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype string: "F32", "BF16", ...
    offset: int  # absolute byte offset of the data in `file`

    @property
    def row_nbytes(self) -> int:
        return math.prod(self.shape[1:]) * SAFETENSORS_DTYPES[self.dtype].itemsize


@dataclass
class Checkpoint:
    folder: Path
    config: dict[str, Any]
    model_type: str
    text: dict[str, Any]
    vision: dict[str, Any] | None
    audio: dict[str, Any] | None
    tie_word_embeddings: bool
    tensors: dict[str, SourceTensor] = field(default_factory=dict)

    @property
    def has_towers(self) -> bool:
        return self.vision is not None or self.audio is not None

    def load(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows `start:stop` of one tensor (all of it by default), read now.

        Plain reads at the offsets of the safetensors header, not safe_open's memory map: every page of a mapped
        file that has been read counts in the process's resident memory until the map closes, so streaming a
        large embedding through a map costs its whole size; reads cost one block."""
        src = self.tensors[name]
        rows = src.shape[0] if src.shape else 1
        stop = rows if stop is None else min(stop, rows)
        nbytes = (stop - start) * src.row_nbytes
        buf = bytearray(nbytes)
        with open(src.file, "rb", buffering=0) as f:
            f.seek(src.offset + start * src.row_nbytes)
            if f.readinto(buf) != nbytes:
                raise ConversionError(f"{src.file}: truncated data for tensor {src.stored_name!r}")
        t = torch.frombuffer(buf, dtype=SAFETENSORS_DTYPES[src.dtype]) if nbytes else torch.empty(0)
        return t.reshape((stop - start, *src.shape[1:]) if src.shape else ())

    def widest_float_dtype(self) -> str:
        """The source precision: "F32" if any tensor is F32, else "BF16" / "F16"."""
        dtypes = {t.dtype for t in self.tensors.values()}
        for candidate in ("F32", "BF16", "F16"):
            if candidate in dtypes:
                return candidate
        return "F32"

    def read_json(self, filename: str) -> dict[str, Any] | None:
        path = self.folder / filename
        if not path.is_file():
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not folder.is_dir():
        raise ConversionError(
            f"{folder}: not a folder; pass the checkpoint folder (with config.json and *.safetensors)"
        )
    if not path.is_file():
        raise ConversionError(f"{folder}: no config.json; pass a Hugging Face checkpoint folder")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from e


def _split_config(config: dict[str, Any]) -> tuple[str, dict, dict | None, dict | None]:
    model_type = config.get("model_type")
    if model_type not in LAYOUTS:
        arch = (config.get("architectures") or ["?"])[0]
        raise ConversionError(
            f"model_type {model_type!r} ({arch}) cannot be converted: llama.cpp's qwen3 / qwen3vl text model and "
            f"the qwen3vl_merger / qwen3a projectors implement only this family; {supported_summary()}"
        )
    if model_type == "qwen3":
        return model_type, config, None, None
    text = config.get("text_config")
    if not isinstance(text, dict):
        raise ConversionError(f"config.json of model_type {model_type!r} has no text_config")
    vision = config.get("vision_config")
    audio = config.get("audio_config") if model_type == "qwen3_multimodal" else None
    for kind, sub, allowed in (
        ("vision_config", vision, VISION_MODEL_TYPES),
        ("audio_config", audio, AUDIO_MODEL_TYPES),
    ):
        if sub is None:
            continue
        sub_type = sub.get("model_type")
        if sub_type not in allowed:
            raise ConversionError(
                f"{kind} has model_type {sub_type!r}, a tower variant llama.cpp's mmproj cannot run here; "
                f"{supported_summary()}"
            )
    return model_type, text, vision, audio


def _index_safetensors(folder: Path, layout: Layout) -> dict[str, SourceTensor]:
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        with open(index_path, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        paths = [folder / name for name in files]
    else:
        paths = sorted(folder.glob("*.safetensors"))
    if not paths:
        hint = " (only PyTorch .bin files: re-save with safe_serialization)" if any(folder.glob("*.bin")) else ""
        raise ConversionError(f"{folder}: no *.safetensors files{hint}")
    tensors: dict[str, SourceTensor] = {}
    for path in paths:
        if not path.is_file():
            raise ConversionError(f"{path}: listed in model.safetensors.index.json but missing")
        offsets = _data_offsets(path)
        with safe_open(path, framework="pt") as f:
            for stored in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                sl = f.get_slice(stored)
                name = stored
                for old, new in layout.key_renames:
                    if name.startswith(old):
                        name = new + name[len(old) :]
                        break
                if name in tensors:
                    raise ConversionError(f"tensor {name!r} appears twice ({tensors[name].file.name}, {path.name})")
                shape, dtype = tuple(sl.get_shape()), sl.get_dtype()
                tensors[name] = SourceTensor(name, path, stored, shape, dtype, offsets[stored])
    return tensors


def _data_offsets(path: Path) -> dict[str, int]:
    """Absolute file offset of each tensor's data: the header is an u64 length and that much JSON, holding
    `data_offsets` relative to the end of the header (the safetensors format)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: 8 + n + v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


def open_checkpoint(folder: str | Path) -> Checkpoint:
    folder = Path(folder)
    config = _read_config(folder)
    model_type, text, vision, audio = _split_config(config)
    layout = LAYOUTS[model_type]
    tie = config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
    ckpt = Checkpoint(
        folder=folder,
        config=config,
        model_type=model_type,
        text=text,
        vision=vision,
        audio=audio,
        tie_word_embeddings=bool(tie),
        tensors=_index_safetensors(folder, layout),
    )
    for t in ckpt.tensors.values():
        if t.dtype not in SAFETENSORS_DTYPES:
            raise ConversionError(
                f"tensor {t.name!r} is stored as {t.dtype}; only F32 / BF16 / F16 checkpoints convert "
                "(dequantize FP8 / int checkpoints first)"
            )
    return ckpt
