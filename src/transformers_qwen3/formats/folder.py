"""Read a checkpoint folder: its config (three supported layouts) and a lazy index over its safetensors, each file
checked as it is read; `validate_folder` is the one check every verb runs on a model folder before using it.

Layouts are an explicit registry keyed by `config.json`'s ``model_type``, never guessed from names or READMEs:

- ``qwen3_multimodal``: ours; ``text_config`` + optional ``vision_config`` / ``audio_config``, keys as documented in
  `tensor_map`.
- ``qwen3``: a native ``Qwen3ForCausalLM`` (flat config, text only).
- ``qwen3_vl``: a native ``Qwen3VLForConditionalGeneration``; its ``model.language_model.`` prefix folds into
  ``model.``, so its text keys become Qwen3ForCausalLM's.

Which files hold the weights (`weight_files`) follows transformers' own loader: ``model.safetensors`` if present,
else the shards ``model.safetensors.index.json`` lists. Unlike transformers (and safetensors, whose errors are
`SafetensorError`, `struct.error` or `MemoryError` on a bad file), everything here fails with one
`CheckpointFolderError` naming the file, the problem and the fix; an index may name only files inside the folder.

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

from .errors import CheckpointFolderError
from .keys import QWEN3_VL_RENAMES
from .validate import check_config, check_tensors

CONFIG_NAME = "config.json"
SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# safetensors refuses headers over 100 MB itself; a length beyond that is a corrupt file, not a big model
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class Layout:
    description: str
    key_renames: tuple[tuple[str, str], ...] = ()  # stored prefix → our prefix
    towers_allowed: bool = True


LAYOUTS: dict[str, Layout] = {
    "qwen3_multimodal": Layout("Qwen3-Multimodal (transformers-qwen3)"),
    "qwen3": Layout("Qwen3ForCausalLM", towers_allowed=False),
    "qwen3_vl": Layout("Qwen3VLForConditionalGeneration", key_renames=QWEN3_VL_RENAMES),
}

# Tower configs we can convert, by their `model_type`: what llama.cpp's qwen3vl_merger / qwen3a projectors implement.
# Qwen3-VL's released config.json names its vision tower "qwen3_vl" (transformers 5 writes "qwen3_vl_vision").
VISION_MODEL_TYPES = {
    "qwen3_vl_vision": "Qwen3-VL vision tower (Qwen3VLVisionModel)",
    "qwen3_vl": "Qwen3-VL vision tower, as Qwen3-VL's released config.json names it",
}
AUDIO_MODEL_TYPES = {"qwen3_omni_moe_audio_encoder": "Qwen3-Omni audio encoder (Qwen3OmniMoeAudioEncoder)"}

SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def supported_summary() -> str:
    layouts = ", ".join(f"{mt!r} ({lay.description})" for mt, lay in LAYOUTS.items())
    towers = ", ".join(f"{mt!r}" for mt in (*VISION_MODEL_TYPES, *AUDIO_MODEL_TYPES))
    return f"supported model_type values: {layouts}; supported tower configs: {towers}"


@dataclass(frozen=True)
class StoredTensor:
    """One entry of a safetensors header, checked against the file."""

    dtype: str  # "F32" / "F16" / "BF16"
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the file


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
            if f.readinto(buf) != nbytes:  # the file shrank after it was checked
                raise CheckpointFolderError(
                    f"{src.file}: truncated data for tensor {src.stored_name!r}; was it changed during conversion?"
                )
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
        return read_json_object(path, "re-save it or download it again")


# --- reading JSON ----------------------------------------------------------------------------------------------------
def read_json_object(path: Path, fix: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise CheckpointFolderError(f"{path}: not valid JSON ({e}); {fix}") from e
    if not isinstance(value, dict):
        raise CheckpointFolderError(f"{path}: must hold a JSON object {{...}}, not a {_json_type(value)}; {fix}")
    return value


def _json_type(value: Any) -> str:
    names = {list: "list", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _read_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise CheckpointFolderError(
            f"{folder}: not a folder; pass the checkpoint folder (with config.json and *.safetensors)"
        )
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointFolderError(f"{folder}: no config.json; pass a Hugging Face checkpoint folder")
    return read_json_object(path, "restore the checkpoint's config.json")


def _split_config(config: dict[str, Any], path: Path) -> tuple[str, dict, dict | None, dict | None]:
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in LAYOUTS:
        architectures = config.get("architectures")
        arch = architectures[0] if isinstance(architectures, list) and architectures else "?"
        raise CheckpointFolderError(
            f"{path}: model_type {model_type!r} ({arch}) is not a checkpoint of the Qwen3 family this tool reads (the "
            f"family llama.cpp's qwen3 / qwen3vl text models and qwen3vl_merger / qwen3a projectors implement); "
            f"{supported_summary()}"
        )
    if model_type == "qwen3":
        return model_type, config, None, None
    text = config.get("text_config")
    if not isinstance(text, dict):
        raise CheckpointFolderError(
            f"{path}: model_type {model_type!r} needs a text_config object (got {_json_type(text)}); "
            "restore the checkpoint's config.json"
        )
    vision = config.get("vision_config")
    audio = config.get("audio_config") if model_type == "qwen3_multimodal" else None
    for kind, sub, allowed in (
        ("vision_config", vision, VISION_MODEL_TYPES),
        ("audio_config", audio, AUDIO_MODEL_TYPES),
    ):
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise CheckpointFolderError(
                f"{path}: {kind} must be an object or null, not a {_json_type(sub)}; restore the checkpoint's "
                "config.json"
            )
        sub_type = sub.get("model_type", next(iter(allowed)))  # absent: the tower this layout defines
        if not isinstance(sub_type, str) or sub_type not in allowed:
            raise CheckpointFolderError(
                f"{path}: {kind} has model_type {sub_type!r}, a tower variant neither our model nor llama.cpp's "
                f"mmproj implements; "
                f"{supported_summary()}"
            )
    return model_type, text, vision, audio


# --- which files hold the weights --------------------------------------------------------------------------------------
def _inside(root: Path, path: Path) -> bool:
    """`path` resolves (symlinks followed) into the folder `root` (resolved), or, for a Hub cache snapshot
    (…/models--ORG--NAME/snapshots/REV/, whose files are symlinks into the repository's blobs/), into that blobs/."""
    target = path.resolve()
    if target.is_relative_to(root):
        return True
    return root.parent.name == "snapshots" and target.is_relative_to(root.parent.parent / "blobs")


def _weight_file(folder: Path, name: Any, listed_in: Path | None) -> Path:
    """The weight file `name` of `folder`, refused unless it is a plain file name of a regular file inside it."""
    where = f"{listed_in}: weight_map names" if listed_in else f"{folder}:"
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise CheckpointFolderError(
            f"{where} {name!r}, which is not a file name in the checkpoint folder (absolute paths, '..' and "
            "sub-folders are refused so an index cannot point at files elsewhere); list shard file names only"
        )
    path = folder / name
    if (path.exists() or path.is_symlink()) and not _inside(folder.resolve(), path):
        raise CheckpointFolderError(
            f"{path}: a symlink to {path.resolve()}, outside the checkpoint folder; copy the file into the folder"
        )
    if not path.is_file():
        if listed_in is not None:
            raise CheckpointFolderError(
                f"{path}: listed in {listed_in.name} but missing; download the complete checkpoint"
            )
        raise CheckpointFolderError(f"{path}: not a regular file; download the complete checkpoint")
    return path


def weight_files(folder: str | Path) -> list[Path]:
    """The safetensors files that hold the model's weights, each checked to be a file inside `folder`:
    ``model.safetensors``, else every shard ``model.safetensors.index.json`` lists (transformers' own order)."""
    folder = Path(folder)
    single, index_path = folder / SINGLE_NAME, folder / INDEX_NAME
    if single.exists() or single.is_symlink():
        return [_weight_file(folder, SINGLE_NAME, None)]
    if not (index_path.exists() or index_path.is_symlink()):
        others = sorted(p.name for p in folder.glob("*.safetensors"))
        if others:
            hint = (
                f" (found {', '.join(others[:3])}{' …' if len(others) > 3 else ''}: rename a single file to "
                f"{SINGLE_NAME}, or add the {INDEX_NAME} that lists the shards)"
            )
        elif any(folder.glob("*.bin")):
            hint = " (only PyTorch .bin files: re-save with safe_serialization)"
        else:
            hint = "; download the weights too"
        raise CheckpointFolderError(f"{folder}: no {SINGLE_NAME} or {INDEX_NAME}{hint}")
    if not _inside(folder.resolve(), index_path) or not index_path.is_file():
        raise CheckpointFolderError(f"{index_path}: not a regular file inside the checkpoint folder")
    weight_map = _weight_map(index_path)
    return [_weight_file(folder, name, index_path) for name in sorted(set(weight_map.values()))]


def _weight_map(index_path: Path) -> dict[str, str]:
    index = read_json_object(index_path, "download the checkpoint's index again")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointFolderError(
            f"{index_path}: no weight_map (an object from tensor name to shard file, got "
            f"{_json_type(weight_map) if 'weight_map' in index else 'nothing'}); download the checkpoint's index again"
        )
    for name, file in weight_map.items():
        if not isinstance(file, str):
            raise CheckpointFolderError(
                f"{index_path}: weight_map[{name!r}] must be a shard file name, not a {_json_type(file)}; "
                "download the checkpoint's index again"
            )
    return weight_map


# --- safetensors headers ---------------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_FIX = "download the file again (or re-save the checkpoint)"


def read_safetensors_header(path: Path) -> dict[str, StoredTensor]:
    """Every tensor of one safetensors file from its header, checked against the file the way safetensors itself
    does before trusting it: the u64 header length fits the file, the header is a JSON object, each dtype is one we
    read, each ``data_offsets`` pair spans exactly shape × dtype bytes, the pairs tile the data region without gaps
    or overlaps, and the file ends where the last tensor does."""
    size, raw = _header_bytes(path)
    data_start = 8 + len(raw)
    tensors, spans = {}, []
    for name, entry in _header_json(path, raw).items():
        begin, end = _checked_offsets(path, name, entry)
        spans.append((begin, end, name))
        tensors[name] = StoredTensor(entry["dtype"], tuple(entry["shape"]), data_start + begin)
    _check_tiling(path, spans, size, data_start)
    return tensors


def _header_bytes(path: Path) -> tuple[int, bytes]:
    """The file's size and its JSON header's bytes (after the u64 little-endian length)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointFolderError(
                    f"{path}: {size} bytes, too short for a safetensors file (it starts with an 8-byte header "
                    f"length): truncated; {_FIX}"
                )
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise CheckpointFolderError(
                    f"{path}: its header length field says {n} bytes but the file has {size}: truncated or not a "
                    f"safetensors file; {_FIX}"
                )
            if n > MAX_HEADER_BYTES:
                raise CheckpointFolderError(
                    f"{path}: header length {n} bytes is over safetensors' {MAX_HEADER_BYTES}-byte limit: corrupt; "
                    f"{_FIX}"
                )
            return size, f.read(n)
    except OSError as e:
        raise CheckpointFolderError(f"{path}: cannot read it ({e.strerror or e})") from e


def _header_json(path: Path, raw: bytes) -> dict[str, Any]:
    """The header's tensor entries (``__metadata__`` checked and dropped)."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError, JSONDecodeError
        raise CheckpointFolderError(f"{path}: the safetensors header is not valid JSON ({e}): corrupt; {_FIX}") from e
    if not isinstance(header, dict):
        raise CheckpointFolderError(f"{path}: the safetensors header is not a JSON object: corrupt; {_FIX}")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not isinstance(metadata, dict):
        raise CheckpointFolderError(f"{path}: the header's __metadata__ is not an object: corrupt; {_FIX}")
    return header


def _checked_offsets(path: Path, name: str, entry: Any) -> tuple[int, int]:
    """One header entry's ``data_offsets``, after its dtype, shape and byte count are checked."""
    if not isinstance(entry, dict):
        raise CheckpointFolderError(f"{path}: header entry {name!r} is not an object: corrupt; {_FIX}")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise CheckpointFolderError(
            f"{path}: tensor {name!r} is stored as {dtype!r}; only F32 / BF16 / F16 checkpoints can be used "
            "(dequantize FP8 / int checkpoints first)"
        )
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CheckpointFolderError(
            f"{path}: tensor {name!r} has shape {shape!r}, not a list of sizes: corrupt; {_FIX}"
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise CheckpointFolderError(f"{path}: tensor {name!r} has data_offsets {offsets!r}: corrupt; {_FIX}")
    begin, end = offsets
    nbytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
    if not 0 <= begin <= end or end - begin != nbytes:
        raise CheckpointFolderError(
            f"{path}: tensor {name!r} has data_offsets {offsets} but its shape {shape} of {dtype} takes {nbytes} "
            f"bytes: corrupt; {_FIX}"
        )
    return begin, end


def _check_tiling(path: Path, spans: list[tuple[int, int, str]], size: int, data_start: int) -> None:
    """The tensors' byte ranges tile the data region: no gap, no overlap, nothing after the last one."""
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise CheckpointFolderError(
                f"{path}: tensor {name!r} starts at data byte {begin}, expected {position} (the data regions "
                f"overlap or leave a gap): corrupt; {_FIX}"
            )
        position = end
    data_size = size - data_start
    if position > data_size:
        raise CheckpointFolderError(
            f"{path}: truncated: its header describes {data_start + position} bytes but the file has {size}; {_FIX}"
        )
    if position < data_size:
        raise CheckpointFolderError(
            f"{path}: {data_size - position} bytes follow the last tensor (the header describes "
            f"{data_start + position} of {size}): corrupt or a different file; {_FIX}"
        )


def _index_safetensors(folder: Path, layout: Layout) -> dict[str, SourceTensor]:
    files = weight_files(folder)
    index_path = folder / INDEX_NAME if files != [folder / SINGLE_NAME] else None
    weight_map = _weight_map(index_path) if index_path is not None else None
    tensors: dict[str, SourceTensor] = {}
    for path in files:
        for stored, entry in read_safetensors_header(path).items():
            if weight_map is not None and weight_map.get(stored) != path.name:
                raise CheckpointFolderError(
                    f"{index_path}: {path.name} holds {stored!r}, which the weight_map "
                    f"{'puts in ' + repr(weight_map[stored]) if stored in weight_map else 'does not list'}; "
                    "download the checkpoint's index again"
                )
            name = stored
            for old, new in layout.key_renames:
                if name.startswith(old):
                    name = new + name[len(old) :]
                    break
            if name in tensors:
                raise CheckpointFolderError(
                    f"{path}: tensor {name!r} is stored twice ({tensors[name].file.name}, {path.name}); keep one copy"
                )
            tensors[name] = SourceTensor(name, path, stored, entry.shape, entry.dtype, entry.offset)
    if weight_map is not None:
        found = {t.stored_name for t in tensors.values()}
        absent = sorted(set(weight_map) - found)
        if absent:
            raise CheckpointFolderError(
                f"{index_path}: the weight_map lists {len(absent)} tensor(s) no shard holds ({', '.join(absent[:3])}"
                f"{' …' if len(absent) > 3 else ''}); download the complete checkpoint"
            )
    return tensors


# --- opening and validating ------------------------------------------------------------------------------------------
def open_checkpoint(folder: str | Path) -> Checkpoint:
    """Read `folder`'s config.json (checked against the schema in `validate.check_config`) and its safetensors
    headers (checked against their files and the index). Tensor names and shapes are checked by `validate_folder`."""
    folder = Path(folder)
    config = _read_config(folder)
    path = folder / CONFIG_NAME
    model_type, text, vision, audio = _split_config(config, path)
    check_config(path, config, text, vision, audio)
    tie = config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
    return Checkpoint(
        folder=folder,
        config=config,
        model_type=model_type,
        text=text,
        vision=vision,
        audio=audio,
        tie_word_embeddings=bool(tie),
        tensors=_index_safetensors(folder, LAYOUTS[model_type]),
    )


def validate_folder(folder: str | Path) -> Checkpoint:
    """The check every verb runs on a model folder before using it; returns the opened checkpoint.

    Raises one `CheckpointFolderError` (a `transformers_qwen3.errors.FolderError`) naming the file and the problem
    for: a config.json that is not an object or breaks the schema (types, ranges, heads dividing sizes, complete
    tower configs), an index whose weight_map is missing or names files outside the folder or absent, a safetensors
    file whose header does not fit the file, tensors missing, unexpected or shaped unlike the config implies, and
    tokenizer / processor files that do not load. Reads headers only: no tensor data, and transformers never sees
    the config before it passed."""
    ckpt = open_checkpoint(folder)
    check_tensors(ckpt)
    check_preprocessing_files(ckpt.folder)
    return ckpt


# The small JSON files a tokenizer or processor is built from; each must be a JSON object when present.
PREPROCESSING_JSON = ("tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


def check_preprocessing_files(folder: Path) -> None:
    """The tokenizer and processor files the folder has must load: the JSON configs are objects, and tokenizer.json
    loads in the tokenizers library (which every verb's tokenizer uses)."""
    for name in PREPROCESSING_JSON:
        if (folder / name).is_file():
            read_json_object(folder / name, "save the tokenizer / processor again (save_pretrained(folder))")
    path = folder / "tokenizer.json"
    if not path.is_file():
        return  # a folder may carry another tokenizer format; the verbs that need tokenizer.json say so
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for any malformed file
        reason = " ".join(str(e).split())[:160]
        raise CheckpointFolderError(
            f"{path}: not a tokenizer the tokenizers library can read ({reason}); save the tokenizer again "
            "(tokenizer.save_pretrained(folder))"
        ) from e
