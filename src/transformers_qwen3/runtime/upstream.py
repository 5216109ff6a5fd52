"""llama.cpp's own side of a conversion: its ``convert_hf_to_gguf.py`` run from the pinned sdist, and GGUF contents
read for a tensor-by-tensor comparison with ours. The conversion tests and the benches compare against it.

The converter is the one inside the llama-cpp-python sdist named in ``ggml_patches/UPSTREAM`` (the same file
``ggml_patches/build_wheel.sh`` patches and builds), taken from the cache that script uses and downloaded there by
pip when absent. It runs with this interpreter and the sdist's *own* gguf-py (``PYTHONPATH``), not the installed
one, so the files it writes are exactly the pinned llama.cpp's. This needs a source checkout (``ggml_patches/``
does not ship in the wheel).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from ..convert.errors import ConversionError
from ..errors import UserError
from ..formats.gguf_file import read_gguf

REPO = Path(__file__).resolve().parents[3]
UPSTREAM_FILE = REPO / "ggml_patches" / "UPSTREAM"
# the parts of the sdist's vendor/llama.cpp the converter needs
_CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


class UpstreamError(UserError, RuntimeError):
    """llama.cpp's converter could not be fetched or run; the message says what failed and how to fix it."""


def upstream_values() -> dict[str, str]:
    """The KEY=VALUE lines of ggml_patches/UPSTREAM (sdist name, version, sha256, llama.cpp commit)."""
    if not UPSTREAM_FILE.is_file():
        raise UpstreamError(f"{UPSTREAM_FILE} not found: llama.cpp's converter is pinned there (a source checkout)")
    values = {}
    for line in UPSTREAM_FILE.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def sdist_cache() -> Path:
    """Where build_wheel.sh keeps the sdist: ``${XDG_CACHE_HOME:-~/.cache}/transformers-qwen3/sdist``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "transformers-qwen3" / "sdist"


def pinned_sdist() -> Path:
    """The pinned llama-cpp-python sdist, downloaded by pip into the cache when absent, its sha256 checked."""
    up = upstream_values()
    cache = sdist_cache()
    sdist = cache / up["LLAMA_CPP_PYTHON_SDIST"]
    if not sdist.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        spec = f"llama-cpp-python=={up['LLAMA_CPP_PYTHON_VERSION']}"
        cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-d", str(cache), spec]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not sdist.is_file():
            raise UpstreamError(f"could not download {spec}'s sdist into {cache}:\n{proc.stderr[-2000:]}")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != up["LLAMA_CPP_PYTHON_SDIST_SHA256"]:
        raise UpstreamError(
            f"{sdist}: sha256 {digest} is not the one in {UPSTREAM_FILE.name}; delete the file to download it again"
        )
    return sdist


def upstream_converter(root: Path) -> Path:
    """vendor/llama.cpp of the pinned sdist, extracted under ``root`` once (convert_hf_to_gguf.py, conversion/,
    gguf-py/); the folder appears only when complete."""
    dest = Path(root) / "llama.cpp"
    if (dest / "convert_hf_to_gguf.py").is_file():
        return dest
    sdist = pinned_sdist()
    prefix = sdist.name.removesuffix(".tar.gz") + "/vendor/llama.cpp/"
    tmp = Path(root) / "llama.cpp.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            rel = m.name[len(prefix) :] if m.name.startswith(prefix) else None
            if rel and rel.startswith(_CONVERTER_PARTS) and (m.isfile() or m.isdir()):
                m.name = rel
                members.append(m)
        tar.extractall(tmp, members=members, filter="data")
    tmp.rename(dest)
    return dest


def upstream_env(converter: Path) -> dict[str, str]:
    """The environment convert_hf_to_gguf.py runs in: the sdist's own gguf-py first on the path."""
    return {**os.environ, "PYTHONPATH": str(converter / "gguf-py")}


def run_upstream(root: Path, model: Path, outfile: Path, outtype: str, mmproj: bool = False) -> Path:
    """llama.cpp's convert_hf_to_gguf.py on ``model`` → ``outfile`` (the mmproj with ``mmproj=True``)."""
    src = upstream_converter(root)
    cmd = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(model), "--outtype", outtype]
    cmd += ["--outfile", str(outfile)] + (["--mmproj"] if mmproj else [])
    env = {**upstream_env(src), "OMP_NUM_THREADS": "1"}  # one thread, as the tests pin torch to one
    proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConversionError(f"llama.cpp's converter failed on {model} ({outtype}):\n{proc.stderr[-3000:]}")
    return outfile


# --- GGUF contents, for comparing two converters' files -----------------------------------------------------------
def gguf_contents(path: Path) -> tuple[dict, dict]:
    """(metadata key → value, tensor name → (type name, ggml shape, bytes)) of a GGUF file."""
    reader = read_gguf(path)
    kv = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {
        t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape), bytes(t.data.tobytes())) for t in reader.tensors
    }
    return kv, tensors


def tensor_differences(ours: dict, theirs: dict) -> list[str]:
    """One line per tensor that is missing on one side or differs in type, shape or bytes (gguf_contents' tensors)."""
    out = [f"only in ours: {n}" for n in sorted(set(ours) - set(theirs))]
    out += [f"only upstream: {n}" for n in sorted(set(theirs) - set(ours))]
    for n in sorted(set(ours) & set(theirs)):
        (ta, sa, ba), (tb, sb, bb) = ours[n], theirs[n]
        if (ta, sa) != (tb, sb):
            out.append(f"{n}: ours {ta}{list(sa)}, upstream {tb}{list(sb)}")
        elif ba != bb:
            out.append(f"{n}: same type/shape, different bytes")
    return out


def metadata_differences(ours: dict, theirs: dict, ignore: set[str]) -> list[str]:
    """One line per metadata key (gguf_contents' kv) whose value differs, keys in ``ignore`` left out."""
    out = []
    for key in sorted((set(ours) | set(theirs)) - ignore):
        a, b = ours.get(key, "<absent>"), theirs.get(key, "<absent>")
        if a != b:
            out.append(f"{key}: ours {str(a)[:60]!r}, upstream {str(b)[:60]!r}")
    return out


# --- a native folder llama.cpp's converter reads --------------------------------------------------------------------
def tokenizer_files(root: Path) -> Path:
    """The real Qwen3 tokenizer saved once into ``root/tokenizer`` (building it takes 10-30 s); reused after."""
    from ..checkpoint.tokenizer import build_qwen3_tokenizer

    folder = Path(root) / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        tmp = Path(root) / "tokenizer.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build_qwen3_tokenizer().save_pretrained(tmp)
        tmp.rename(folder)
    return folder


def add_native_tokenizer(folder: Path, root: Path) -> None:
    """Our tokenizer files in the form a real Qwen3 checkpoint ships them (``tokenizer_class`` Qwen2Tokenizer, no
    ``auto_map``, no remote code), which llama.cpp's converter loads with a plain AutoTokenizer."""
    src = tokenizer_files(root)
    shutil.copy(src / "tokenizer.json", Path(folder) / "tokenizer.json")
    shutil.copy(src / "chat_template.jinja", Path(folder) / "chat_template.jinja")
    config = json.loads((src / "tokenizer_config.json").read_text())
    config.pop("auto_map", None)
    config["tokenizer_class"] = "Qwen2Tokenizer"
    (Path(folder) / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
