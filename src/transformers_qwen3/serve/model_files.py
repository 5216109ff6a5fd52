"""What ``serve`` and ``run`` run for a model folder: the GGUF pair (text model + its one mmproj) of a GGUF folder, or
of a Hub-layout folder converted on first use and cached; with a memory budget, the largest of a GGUF folder's
text-model variants that fits (:func:`pick`).

The cache is ``<cache root>/serve/<folder name>-<outtype>-<key>/`` (the cache root of the demo and the llama.cpp
wheel: ``$TRANSFORMERS_QWEN3_CACHE`` or ``~/.cache/transformers-qwen3``). The key hashes the folder's resolved
path, every file's name, size and modification time, and this package's version, so an edited checkpoint is
converted again. The conversion writes into a temporary folder that is renamed when complete
(:func:`~transformers_qwen3.outputs.atomic_folder`): an interrupted conversion leaves nothing a later run would use.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import FolderError

MMPROJ_PREFIX = "mmproj"  # the converter's name for the projector file; llama.cpp's converter uses it too


def is_hub_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def gguf_files(folder: Path) -> tuple[list[Path], Path | None]:
    """(text-model GGUFs, mmproj or None) of a folder of GGUF files: at least one text model (variants of one model,
    e.g. F16 / Q8_0 / a planned file) and at most one mmproj."""
    files = sorted(p for p in folder.glob("*.gguf") if p.is_file())
    mmproj = [p for p in files if p.name.lower().startswith(MMPROJ_PREFIX)]
    text = [p for p in files if p not in mmproj]
    if not text or len(mmproj) > 1:
        found = ", ".join(p.name for p in files) or "no .gguf files"
        raise FolderError(
            f"{folder} must hold a text-model GGUF and at most one mmproj-*.gguf (found: {found}); "
            "or pass a Hub-layout folder (config.json + safetensors), which is converted on first use"
        )
    return text, (mmproj[0] if mmproj else None)


def gguf_pair(folder: Path) -> tuple[Path, Path | None]:
    """(text GGUF, mmproj or None) of a folder of GGUF files; exactly one text model (:func:`pick` chooses among
    several by a memory budget)."""
    text, mmproj = gguf_files(folder)
    if len(text) != 1:
        raise FolderError(
            f"{folder} holds {len(text)} text-model GGUFs ({', '.join(p.name for p in text)}): pass --budget "
            "(e.g. auto or 4GB) to run the best one that fits, or keep one text-model GGUF in the folder"
        )
    return text[0], mmproj


@dataclass
class Variant:
    """One text-model GGUF and the memory it needs: its file (weights), the mmproj's file, and an f16 KV cache."""

    path: Path
    weights: int
    mmproj: int
    kv_cache: int

    @property
    def need(self) -> int:
        return self.weights + self.mmproj + self.kv_cache


def kv_cache_of(gguf: Path, n_ctx: int) -> int:
    """The f16 KV cache of ``gguf`` for ``n_ctx`` tokens, from its own metadata (a planned file's reduced layer count
    included)."""
    from ..compress.plan import kv_cache_bytes
    from ..runtime.llama_cpp import gguf_metadata

    meta = gguf_metadata(gguf)
    arch = meta.get("general.architecture", "")

    def field(key: str) -> str:
        if f"{arch}.{key}" not in meta:
            raise FolderError(f"{gguf.name} has no {arch}.{key}: not a text-model GGUF this package can size")
        return meta[f"{arch}.{key}"]

    # one KV-head count for every layer (Qwen3's; llama.cpp's metadata strings leave array values out)
    heads = [int(field("attention.head_count_kv"))] * int(field("block_count"))
    return kv_cache_bytes(heads, int(field("attention.key_length")), n_ctx)


def variants(folder: Path, n_ctx: int) -> tuple[list[Variant], Path | None]:
    text, mmproj = gguf_files(folder)
    extra = mmproj.stat().st_size if mmproj else 0
    return [Variant(p, p.stat().st_size, extra, kv_cache_of(p, n_ctx)) for p in text], mmproj


def pick(folder: Path, budget: int, n_ctx: int) -> tuple[Variant, Path | None, list[Variant]]:
    """(the variant to run, mmproj, every variant): the largest text model whose weights, mmproj and KV cache for
    ``n_ctx`` tokens fit in ``budget`` bytes. Among variants of one model more bytes mean more bits per weight, so
    the largest that fits is the best (llama.cpp's quantization ladder; a planned file sits on it by its size).
    Compute buffers are not counted: keep the budget's reserve (``transformers-qwen3 hw``)."""
    from ..compress.plan import fmt_bytes

    found, mmproj = variants(folder, n_ctx)
    fitting = [v for v in found if v.need <= budget]
    if not fitting:
        smallest = min(found, key=lambda v: v.need)
        raise FolderError(
            f"no GGUF in {folder} fits in {fmt_bytes(budget)}: the smallest, {smallest.path.name}, needs "
            f"{fmt_bytes(smallest.need)} (weights {fmt_bytes(smallest.weights)}, mmproj {fmt_bytes(smallest.mmproj)}, "
            f"KV cache for {n_ctx} tokens {fmt_bytes(smallest.kv_cache)}); give a larger --budget, a smaller "
            "--ctx-size, or add a smaller variant (transformers-qwen3 convert --outtype / --plan)"
        )
    return max(fitting, key=lambda v: (v.weights, v.path.name)), mmproj, found


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


def resolve(
    model: Path, outtype: str = "f16", budget: str | None = None, n_ctx: int = 4096, log=None
) -> tuple[Path, Path | None]:
    """(text GGUF, mmproj or None) for a Hub-layout folder or a GGUF folder; with ``budget``, the variant
    :func:`pick` chooses (each variant and the choice reported through ``log``)."""
    from ..compress.plan import budget_bytes, fmt_bytes

    model = Path(model)
    if not model.is_dir():
        raise FolderError(f"{model} is not a folder; pass a Hub-layout model folder or a folder of GGUF files")
    folder = converted(model, outtype) if is_hub_folder(model) else model
    if budget is None:
        return gguf_pair(folder)
    nbytes, why = budget_bytes(budget)
    chosen, mmproj, found = pick(folder, nbytes, n_ctx)
    if log is not None:
        log(f"budget {fmt_bytes(nbytes)} ({why}); each variant: weights + mmproj + KV cache for {n_ctx} tokens")
        for v in sorted(found, key=lambda v: -v.weights):
            mark = "->" if v is chosen else ("  " if v.need <= nbytes else " x")
            log(
                f"{mark} {v.path.name}: {fmt_bytes(v.need)} ({fmt_bytes(v.weights)} + {fmt_bytes(v.mmproj)} + "
                f"{fmt_bytes(v.kv_cache)})"
            )
    return chosen.path, mmproj
