"""What ``serve`` runs for a model folder: the GGUF pair (text model + its one mmproj) of a GGUF folder, or of a
Hub-layout folder converted on first use and cached.

The cache is ``<cache root>/serve/<folder name>-<outtype>-<key>/`` (the cache root of the demo and the llama.cpp
wheel: ``$TRANSFORMERS_QWEN3_CACHE`` or ``~/.cache/transformers-qwen3``). The key hashes the folder's resolved
path, every file's name, size and modification time, and this package's version, so an edited checkpoint is
converted again. The conversion writes into a temporary folder that is renamed when complete
(:func:`~transformers_qwen3.outputs.atomic_folder`): an interrupted conversion leaves nothing a later run would use.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import FolderError

MMPROJ_PREFIX = "mmproj"  # the converter's name for the projector file; llama.cpp's converter uses it too


def is_hub_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def gguf_pair(folder: Path) -> tuple[Path, Path | None]:
    """(text GGUF, mmproj or None) of a folder of GGUF files; exactly one of each kind (the mmproj optional)."""
    files = sorted(p for p in folder.glob("*.gguf") if p.is_file())
    mmproj = [p for p in files if p.name.lower().startswith(MMPROJ_PREFIX)]
    text = [p for p in files if p not in mmproj]
    if len(text) != 1 or len(mmproj) > 1:
        found = ", ".join(p.name for p in files) or "no .gguf files"
        raise FolderError(
            f"{folder} must hold one text-model GGUF and at most one mmproj-*.gguf (found: {found}); "
            "or pass a Hub-layout folder (config.json + safetensors), which is converted on first use"
        )
    return text[0], (mmproj[0] if mmproj else None)


def cache_key(folder: Path) -> str:
    from importlib.metadata import version

    h = hashlib.sha256(f"{folder.resolve()}|{version('transformers-qwen3')}".encode())
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def converted(folder: Path, outtype: str = "f16", cache: Path | None = None, progress: bool = True) -> Path:
    """The folder of ``folder``'s GGUF files (converted now if not cached yet)."""
    from ..convert import convert_checkpoint
    from ..demo.model import cache_root
    from ..outputs import atomic_folder

    dst = (cache or cache_root() / "serve") / f"{folder.resolve().name}-{outtype}-{cache_key(folder)}"
    if dst.is_dir():
        return dst
    if progress:
        print(f"converting {folder} to GGUF ({outtype}) once, into {dst} ...", flush=True)
    with atomic_folder(dst, sources=[folder]) as tmp:
        convert_checkpoint(folder, tmp, outtype, name=folder.resolve().name, force=True, progress=progress)
    return dst


def resolve(model: Path, outtype: str = "f16") -> tuple[Path, Path | None]:
    """(text GGUF, mmproj or None) for a Hub-layout folder or a GGUF folder."""
    model = Path(model)
    if not model.is_dir():
        raise FolderError(f"{model} is not a folder; pass a Hub-layout model folder or a folder of GGUF files")
    if is_hub_folder(model):
        return gguf_pair(converted(model, outtype))
    return gguf_pair(model)
