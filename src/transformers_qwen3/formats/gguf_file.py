"""Reading GGUF files: the one place this package opens gguf-py's ``GGUFReader``.

gguf-py trusts the file's counts and offsets, so a truncated or damaged file fails deep in numpy or struct; here it
is one `GGUFFileError` naming the file. The converter (what it wrote), the model card (sizes and types per file)
and ``verify`` read through these functions.
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path

import gguf

from .errors import GGUFFileError

FIX = "convert the checkpoint again (`transformers-qwen3 convert`)"


def read_gguf(path: str | Path) -> gguf.GGUFReader:
    """gguf-py's reader over ``path``; a missing, truncated or corrupt file is one `GGUFFileError`."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        size = path.stat().st_size
    except OSError as e:
        raise GGUFFileError(f"{path}: cannot read it ({e.strerror or e})") from e
    if magic != b"GGUF":
        raise GGUFFileError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF'); {FIX}")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError, MemoryError, EOFError, struct.error) as e:
        raise GGUFFileError(f"{path}: truncated or corrupt GGUF ({size} bytes; gguf-py: {e}); {FIX}") from e


def read_gguf_cached(path: str | Path) -> gguf.GGUFReader:
    """`read_gguf`, cached per file version: parsing a 150k-token vocabulary takes seconds, and ``verify``'s checks
    read the same files. The cached reader keeps its memory map open, so the converter does not use this."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as e:
        raise GGUFFileError(f"{path}: cannot read it ({e.strerror or e})") from e
    return _read_gguf_version(path.resolve(), stat.st_mtime_ns, stat.st_size)


@functools.cache
def _read_gguf_version(path: Path, mtime_ns: int, size: int) -> gguf.GGUFReader:
    return read_gguf(path)


def architecture(reader: gguf.GGUFReader) -> str | None:
    """``general.architecture`` (``qwen3``, ``qwen3vl``, ``clip`` for an mmproj), None when absent."""
    field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    return str(field.contents()) if field is not None else None


def file_type_name(reader: gguf.GGUFReader) -> str | None:
    """``general.file_type`` as llama.cpp names it in file names (``Q4_K_M``, ``F16``); None when absent or not a
    value this gguf-py knows."""
    field = reader.get_field(gguf.Keys.General.FILE_TYPE)
    if field is None:
        return None
    try:
        return gguf.LlamaFileType(int(field.contents())).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return None


def tensor_types(path: str | Path) -> dict[str, str]:
    """Tensor name → ggml type name, as stored in the GGUF file."""
    return {t.name: t.tensor_type.name for t in read_gguf(path).tensors}
