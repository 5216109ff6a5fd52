"""Shared builders for the conversion tests (no tests here): tiny native checkpoints, cached per test session.

Checkpoints (float32, random init, the real Qwen3 tokenizer):
- ``qwen3``: native ``Qwen3ForCausalLM`` (hidden 64, untied, so ``output.weight`` exists).
- ``qwen3_kq``: native ``Qwen3ForCausalLM`` with hidden 256 / FFN 512 / head_dim 64 (tied): every row width is a
  multiple of 256, so K-quants need no substitution.
- ``qwen3_vl``: native ``Qwen3VLForConditionalGeneration`` (deepstack on 2 of 3 vision layers).
- ``mm``: ours, ``transformers-qwen3 init --preset tiny-mm`` (vision + audio towers).
- ``mm_omni``: ``mm``'s towers in the native Qwen3-Omni layout (``thinker.audio_tower.*``, ``thinker_config``):
  the only layout llama.cpp's own converter writes a vision+audio mmproj from.

llama.cpp's own converter and the GGUF comparison are tools of the package
(:mod:`transformers_qwen3.runtime.upstream`, which the benches use too); they are re-exported here so the conversion
tests import all they share from one place.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from transformers_qwen3.runtime.upstream import (  # noqa: F401  (re-exported for the conversion tests)
    add_native_tokenizer,
    metadata_differences,
    run_upstream,
    tensor_differences,
    tokenizer_files,
    upstream_converter,
)
from transformers_qwen3.runtime.upstream import gguf_contents as read_gguf  # noqa: F401  (the tests' name)
from transformers_qwen3.runtime.upstream import upstream_values as _upstream_values  # noqa: F401

# Qwen3-VL's preprocessor_config.json fields the mmproj reads (native folders must carry them for upstream)
QWEN3VL_PREPROCESSOR = {
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "merge_size": 2,
    "patch_size": 16,
    "temporal_patch_size": 2,
    "image_processor_type": "Qwen2VLImageProcessorFast",
}


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
