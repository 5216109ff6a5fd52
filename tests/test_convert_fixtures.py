"""Shared builders for the conversion tests (no tests here): tiny native checkpoints, the upstream converter.

Checkpoints (float32, random init, the real Qwen3 tokenizer, cached per test session):
- ``qwen3``: native ``Qwen3ForCausalLM`` (hidden 64, untied, so ``output.weight`` exists).
- ``qwen3_kq``: native ``Qwen3ForCausalLM`` with hidden 256 / FFN 512 / head_dim 64 (tied): every row width is a
  multiple of 256, so K-quants need no substitution.
- ``qwen3_vl``: native ``Qwen3VLForConditionalGeneration`` (deepstack on 2 of 3 vision layers).
- ``mm``: ours, ``transformers-qwen3 init --preset tiny-mm`` (vision + audio towers).
- ``mm_omni``: ``mm``'s towers in the native Qwen3-Omni layout (``thinker.audio_tower.*``, ``thinker_config``):
  the only layout llama.cpp's own converter writes a vision+audio mmproj from.

The upstream converter is the ``convert_hf_to_gguf.py`` inside the llama-cpp-python sdist named in
ggml_patches/UPSTREAM, taken from the cache `ggml_patches/build_wheel.sh` uses (downloaded there when absent).
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

import gguf
import torch

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_FILE = REPO / "ggml_patches" / "UPSTREAM"

# Qwen3-VL's preprocessor_config.json fields the mmproj reads (native folders must carry them for upstream)
QWEN3VL_PREPROCESSOR = {
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "merge_size": 2,
    "patch_size": 16,
    "temporal_patch_size": 2,
    "image_processor_type": "Qwen2VLImageProcessorFast",
}


# --- tokenizer --------------------------------------------------------------------------------------------------
def tokenizer_files(root: Path) -> Path:
    """The real Qwen3 tokenizer saved once into root/tokenizer (building it takes ~10-30 s)."""
    folder = root / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        from transformers_qwen3.checkpoint.tokenizer import build_qwen3_tokenizer

        tmp = root / "tokenizer.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build_qwen3_tokenizer().save_pretrained(tmp)
        tmp.rename(folder)
    return folder


def add_native_tokenizer(folder: Path, root: Path) -> None:
    """Our tokenizer files in the form a real Qwen3 checkpoint ships them (tokenizer_class Qwen2Tokenizer, no
    remote code), which llama.cpp's converter loads with a plain AutoTokenizer."""
    src = tokenizer_files(root)
    shutil.copy(src / "tokenizer.json", folder / "tokenizer.json")
    shutil.copy(src / "chat_template.jinja", folder / "chat_template.jinja")
    config = json.loads((src / "tokenizer_config.json").read_text())
    config.pop("auto_map", None)
    config["tokenizer_class"] = "Qwen2Tokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


# --- checkpoints ------------------------------------------------------------------------------------------------
def _text_config(**overrides) -> dict:
    config = dict(
        vocab_size=151936,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=False,
        bos_token_id=151643,
        eos_token_id=151645,
    )
    config.update(overrides)
    return config


def build_qwen3(folder: Path, root: Path, **overrides) -> Path:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**_text_config(**overrides))).eval()
    model.save_pretrained(folder)
    add_native_tokenizer(folder, root)
    return folder


def build_qwen3_vl(folder: Path, root: Path) -> Path:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(0)
    text = _text_config(
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5e6,
            "mrope_section": [2, 3, 3],
            "mrope_interleaved": True,
        }
    )
    text.pop("tie_word_embeddings")
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=dict(
            depth=3,
            hidden_size=64,
            intermediate_size=128,
            num_heads=4,
            out_hidden_size=64,
            deepstack_visual_indexes=[0, 1],
            num_position_embeddings=64,
        ),
        tie_word_embeddings=False,
    )
    Qwen3VLForConditionalGeneration(config).eval().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(QWEN3VL_PREPROCESSOR, indent=2))
    add_native_tokenizer(folder, root)
    return folder


def build_mm(folder: Path, root: Path, preset: str = "tiny-mm") -> Path:
    from transformers_qwen3.checkpoint.build import init_checkpoint
    from transformers_qwen3.checkpoint.tokenizer import build_qwen3_tokenizer

    tokenizer_files(root)  # builds the cached tokenizer object once as well
    init_checkpoint(folder, preset, seed=0, tokenizer=build_qwen3_tokenizer(), force=True)
    return folder


def build_mm_omni(folder: Path, mm: Path) -> Path:
    """`mm`'s towers re-keyed to the native Qwen3-Omni layout (vision keys already match Qwen3-VL's)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors = {}
    for shard in sorted(mm.glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            for k in f.keys():  # noqa: SIM118
                if k.startswith("model.visual."):
                    tensors[k] = f.get_tensor(k)
                elif k.startswith("model.audio_tower."):
                    tensors["thinker.audio_tower." + k.removeprefix("model.audio_tower.")] = f.get_tensor(k)
    folder.mkdir(parents=True)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((mm / "config.json").read_text())
    thinker = {k: cfg[k] for k in ("text_config", "vision_config", "audio_config")}
    omni = {"architectures": ["Qwen3OmniMoeForConditionalGeneration"], "model_type": "qwen3_omni_moe"}
    (folder / "config.json").write_text(json.dumps({**omni, "thinker_config": thinker}, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps(QWEN3VL_PREPROCESSOR, indent=2))
    return folder


BUILDERS = {
    "qwen3": lambda folder, root: build_qwen3(folder, root),
    "qwen3_kq": lambda folder, root: build_qwen3(
        folder, root, hidden_size=256, intermediate_size=512, head_dim=64, tie_word_embeddings=True
    ),
    "qwen3_vl": build_qwen3_vl,
    "mm": build_mm,
    "mm_omni": lambda folder, root: build_mm_omni(folder, checkpoint(root, "mm")),
}


def checkpoint(root: Path, name: str) -> Path:
    """root/name, built on first use (the folder appears only when complete)."""
    folder = root / name
    if not folder.is_dir():
        torch.set_num_threads(1)
        tmp = root / f"{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        BUILDERS[name](tmp, root)
        tmp.rename(folder)
    return folder


# --- llama.cpp's own converter ----------------------------------------------------------------------------------
def _upstream_values() -> dict[str, str]:
    values = {}
    for line in UPSTREAM_FILE.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def upstream_converter(root: Path) -> Path:
    """vendor/llama.cpp of the pinned sdist, extracted under root (convert_hf_to_gguf.py, conversion/, gguf-py/)."""
    dest = root / "llama.cpp"
    if (dest / "convert_hf_to_gguf.py").is_file():
        return dest
    up = _upstream_values()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "transformers-qwen3" / "sdist"
    sdist = cache / up["LLAMA_CPP_PYTHON_SDIST"]
    if not sdist.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-binary",
                ":all:",
                "--no-deps",
                "-d",
                str(cache),
                f"llama-cpp-python=={up['LLAMA_CPP_PYTHON_VERSION']}",
            ],
            check=True,
            capture_output=True,
        )
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    assert digest == up["LLAMA_CPP_PYTHON_SDIST_SHA256"], f"{sdist}: sha256 {digest} is not UPSTREAM's"
    prefix = sdist.name.removesuffix(".tar.gz") + "/vendor/llama.cpp/"
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
    tmp = root / "llama.cpp.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            rel = m.name[len(prefix) :] if m.name.startswith(prefix) else None
            if rel and rel.startswith(wanted) and (m.isfile() or m.isdir()):
                m.name = rel
                members.append(m)
        tar.extractall(tmp, members=members, filter="data")
    tmp.rename(dest)
    return dest


def run_upstream(root: Path, model: Path, outfile: Path, outtype: str, mmproj: bool = False) -> Path:
    """llama.cpp's convert_hf_to_gguf.py on `model`, with the venv's Python and the sdist's own gguf-py."""
    src = upstream_converter(root)
    cmd = [
        sys.executable,
        str(src / "convert_hf_to_gguf.py"),
        str(model),
        "--outtype",
        outtype,
        "--outfile",
        str(outfile),
    ]
    if mmproj:
        cmd.append("--mmproj")
    env = {**os.environ, "PYTHONPATH": str(src / "gguf-py"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"upstream converter failed:\n{proc.stderr[-3000:]}"
    return outfile


# --- reading GGUF files -----------------------------------------------------------------------------------------
def read_gguf(path: Path) -> tuple[dict, dict]:
    """(metadata key → value, tensor name → (type name, ggml shape, bytes))."""
    reader = gguf.GGUFReader(path)
    kv = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {
        t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape), bytes(t.data.tobytes())) for t in reader.tensors
    }
    return kv, tensors


def tensor_differences(ours: dict, theirs: dict) -> list[str]:
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
    out = []
    for key in sorted((set(ours) | set(theirs)) - ignore):
        a, b = ours.get(key, "<absent>"), theirs.get(key, "<absent>")
        if a != b:
            out.append(f"{key}: ours {str(a)[:60]!r}, upstream {str(b)[:60]!r}")
    return out
