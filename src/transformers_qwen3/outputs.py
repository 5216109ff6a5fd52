"""Writing outputs safely: the one home for "write under a temporary name, then rename into place".

Three promises, for every writer (model folders, GGUF files, exports):

- Nothing half-written is published: a folder or file is built under a hidden temporary name beside its destination
  and renamed into place only when complete; an error removes it.
- A crash leaves nothing that lingers: temporary names carry the writer's process id
  (``.NAME.PID-RANDOM.tmp`` for folders, ``.NAME.PID-RANDOM.partial`` for files). A ``kill -9`` cannot clean up, so
  the next writer into the same folder removes the temporaries of ours whose process is gone, and says so.
- ``--force`` never deletes what we did not write: a destination is replaced only when everything in it is a file
  this tool writes; it is never the current folder or one above it, and never contains (or is) a source.

Imports only the standard library, so every layer (``convert/`` included) can use it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import OutputError

# What a model folder of ours (or an export of it) may hold: anything else in a destination is the user's.
MODEL_FOLDER_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "*_qwen3_multimodal.py",
    "qwen3_multimodal_*.json",
    "adapter_config.json",
    "finetune.json",
    "*.gguf",
    "gguf_quality.json",
    "README.md",
    "LICENSE",
    ".gitattributes",
)

_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[A-Za-z0-9_]+\.(?P<kind>tmp|partial)$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temps(folder: Path, announce: bool = True) -> list[Path]:
    """Remove our temporaries in ``folder`` whose writing process no longer exists (a crash or ``kill -9``)."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in Path(folder).iterdir():
            m = _TEMP_RE.match(entry.name)
            if not m or _pid_alive(int(m["pid"])):
                continue
            size = _tree_size(entry)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
            if announce:
                print(
                    f"transformers-qwen3: removed {entry} ({size / 1e6:.1f} MB), left by an interrupted run "
                    f"(process {m['pid']} is gone)",
                    file=sys.stderr,
                )
    return removed


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _temp_prefix(final: Path) -> str:
    return f".{final.name}.{os.getpid()}-"


def check_destination(
    dst: Path, *, force: bool, sources: Iterable[Path] = (), ours: Iterable[str] = MODEL_FOLDER_FILES
) -> Path:
    """Refuse a destination we must not write or replace; return it resolved.

    Refused always: the current folder or any folder above it, a destination that is, contains or lies inside a
    source. Refused without ``force``: an existing destination. Refused even with ``force``: an existing folder
    holding anything that ``ours`` (glob patterns of what this tool writes) does not describe.
    """
    resolved = Path(dst).resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputError(
            f"{dst} is the current folder or one above it ({resolved}); writing there would replace what you are "
            f"working in. Name a new folder, e.g. {Path(dst) / 'out'}."
        )
    for src in sources:
        s = Path(src).resolve()
        if resolved == s or resolved in s.parents or s in resolved.parents:
            raise OutputError(f"{dst} must not be the source ({src}), contain it, or lie inside it; choose another.")
    if not resolved.exists() and not resolved.is_symlink():
        return resolved
    if not force:
        raise OutputError(f"{dst} already exists; choose another destination or pass --force to replace it.")
    if not resolved.is_dir():
        raise OutputError(f"{dst} exists and is not a folder; remove it yourself or choose another destination.")
    patterns = tuple(ours)
    foreign = sorted(
        p.name
        for p in resolved.iterdir()
        if not _TEMP_RE.match(p.name) and not any(fnmatch.fnmatch(p.name, pat) for pat in patterns)
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputError(
            f"{dst} holds files transformers-qwen3 does not write ({shown}); --force replaces only our own "
            f"outputs. Move those files away or choose another destination."
        )
    return resolved


def _publish_mode(path: Path) -> None:
    """mkdtemp/mkstemp create private entries; published outputs get the usual umask-based modes."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_folder(
    dst: Path, force: bool = False, sources: Iterable[Path] = (), ours: Iterable[str] = MODEL_FOLDER_FILES
) -> Iterator[Path]:
    """Yield a temporary folder beside ``dst``; on success it replaces ``dst``, on error it is removed.

    ``dst`` is checked first (:func:`check_destination`), so ``--force`` cannot remove the user's files.
    """
    final = check_destination(dst, force=force, sources=sources, ours=ours)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        _publish_mode(tmp)
        if final.exists():
            # move the old folder aside first so that a failure between the two renames loses nothing
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), suffix=".tmp", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def temp_file(final: Path) -> Path:
    """A new empty temporary file beside ``final`` named so that :func:`clean_stale_temps` recognises it."""
    final = Path(final)
    clean_stale_temps(final.parent)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(final), suffix=".partial", dir=final.parent)
    os.close(fd)
    return Path(name)


def publish_file(tmp: Path, final: Path) -> None:
    """Rename a finished temporary file into place with the usual file mode."""
    _publish_mode(Path(tmp))
    os.replace(tmp, final)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; renamed to ``final`` on success, removed on error."""
    tmp = temp_file(final)
    try:
        yield tmp
        publish_file(tmp, final)
    finally:
        Path(tmp).unlink(missing_ok=True)


__all__ = [
    "MODEL_FOLDER_FILES",
    "atomic_file",
    "atomic_folder",
    "check_destination",
    "clean_stale_temps",
    "publish_file",
    "temp_file",
]
