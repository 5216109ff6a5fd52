"""The demo model: a small Qwen3-Multimodal the project trains itself on the synthetic image + audio task.

No real weights can be downloaded here and a random model answers nonsense, so ``make demo`` shows a model trained
by this package (:mod:`.train`) on :mod:`transformers_qwen3.demo.synthetic` (colour / shape / count / position of shapes in a picture;
count / pitch of beeps in a clip; one-word answers).

Shape: the real Qwen3 tokenizer (vocabulary 151,936), a 4-layer decoder of width 256 with FFN 768, a 2-block
Qwen3-VL vision tower and a 2-layer Qwen3-Omni audio tower with narrow convolutions. Every text weight row is a
multiple of 256 wide, so llama.cpp's K-quants are real K-quants (narrower rows make llama.cpp substitute other types).

How the weights ship (docs/demo.md says why): the embedding table (tied with the output head,
38.9 M of the 44.6 M parameters) is *frozen* at a seeded initialisation computed with exact arithmetic
(:func:`frozen_embedding`), so only the rest — decoder layers, final norm, both towers — is trained and committed
as package data (``weights/demo-trained.safetensors``, bf16, a few MB). :func:`demo_checkpoint` puts the two
back together into a Hub-layout folder in seconds and caches it under ``~/.cache/transformers-qwen3/demo/``.

Training lives in :mod:`.train` (``transformers-qwen3 demo train``), the recipe that reproduces the committed part
in :mod:`.recipe` (``transformers-qwen3 demo retrain``), the held-out accuracy in :mod:`.evaluate`. This file:
the shape, the seeded table, the model built from the two, and the cached Hub folder (``transformers-qwen3 demo
build``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..checkpoint.presets import QWEN3_COMMON
from ..errors import UserError

# --------------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------------

NAME = "qwen3-multimodal-demo"
EMBED_SEED = 20250601  # seed of the frozen embedding table
# Row norm ~1.6: the tied head over random rows then reaches confident logits (margin ~18 nats over 151,936
# tokens with the final norm at 1). At 0.02 (the usual initializer_range) the final norm weight has to grow ~5x
# first and training crawls.
EMBED_STD = 0.1
WEIGHTS_DIR = Path(__file__).parent / "weights"
TRAINED_FILE = WEIGHTS_DIR / "demo-trained.safetensors"
RECORD_FILE = WEIGHTS_DIR / "training.json"
EMBED_KEY = "model.embed_tokens.weight"
NOT_TRAINED = (EMBED_KEY, "lm_head.weight")  # the frozen table, and the output head tied to it
K_QUANT_BLOCK = 256

TEXT_CONFIG = {
    **QWEN3_COMMON,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "tie_word_embeddings": True,
    "max_position_embeddings": 4096,
    # Qwen3-VL's interleaved M-RoPE; sections sum to head_dim / 2 (llama.cpp qwen3vl checks it)
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [12, 10, 10],
        "mrope_interleaved": True,
    },
}
VISION_CONFIG = {
    "depth": 2,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_heads": 2,
    "out_hidden_size": 256,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "in_channels": 3,
    "num_position_embeddings": 2304,
    "deepstack_visual_indexes": [0],
    "hidden_act": "gelu_pytorch_tanh",
}
AUDIO_CONFIG = {
    # n_window / n_window_infer as released: the patched llama.cpp hard-codes them (ggml_patches/README.md)
    "num_mel_bins": 128,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 256,
    "d_model": 128,
    "downsample_hidden_size": 32,
    "n_window": 50,
    "n_window_infer": 800,
    "max_source_positions": 1500,
    "output_dim": 256,
}


def demo_config():
    """The demo model's :class:`Qwen3MultimodalConfig` (bf16 on disk)."""
    from ..remote.configuration_qwen3_multimodal import Qwen3MultimodalConfig

    config = Qwen3MultimodalConfig(
        text_config=dict(TEXT_CONFIG), vision_config=dict(VISION_CONFIG), audio_config=dict(AUDIO_CONFIG)
    )
    config.dtype = torch.bfloat16
    return config


def k_quant_problems(config) -> list[str]:
    """Text weight input widths that are not a multiple of 256 (llama.cpp would not use K-quants for them)."""
    text = config.text_config
    widths = {
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_attention_heads * head_dim": text.num_attention_heads * text.head_dim,
    }
    return [f"{k} = {v}" for k, v in widths.items() if v % K_QUANT_BLOCK]


@functools.lru_cache(maxsize=1)
def frozen_embedding(seed: int = EMBED_SEED, vocab: int = 151936, hidden: int = 256, std: float = EMBED_STD):
    """The frozen embedding table [vocab, hidden] in bf16: uniform with standard deviation ``std``.

    Computed with exact arithmetic from numpy's PCG64 raw bit stream (stable across numpy releases and platforms;
    Generator's *distributions* are not promised to be): 53 random bits → an exact double in [-1, 1) → one
    correctly rounded multiply → float32 → bf16 (round to nearest even). No libm call, so every machine gets the
    same bytes.
    """
    raw = np.random.PCG64(seed).random_raw(vocab * hidden)
    unit = (raw >> np.uint64(11)).astype(np.float64) * 2.0**-52 - 1.0  # exact: k / 2^52 - 1, k < 2^53
    del raw
    table = (unit * (std * math.sqrt(3.0))).astype(np.float32)
    del unit
    table = torch.from_numpy(table).reshape(vocab, hidden).to(torch.bfloat16)
    table.requires_grad_(False)
    return table  # cached: callers copy it, never change it in place


def sha256_tensor(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def build_model(trained: dict | None = None, dtype: torch.dtype = torch.float32):
    """The demo model with the frozen embedding table; ``trained`` (a state dict without the table) fills the rest,
    else the rest is freshly initialised (torch's global seed decides)."""
    from ..remote.modeling_qwen3_multimodal import Qwen3MultimodalForConditionalGeneration

    config = demo_config()
    model = Qwen3MultimodalForConditionalGeneration(config)
    embed = frozen_embedding()
    if tuple(embed.shape) != (config.text_config.vocab_size, config.text_config.hidden_size):
        raise ValueError(f"frozen table {tuple(embed.shape)} does not fit the demo config")
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(embed.float())
    if trained is not None:
        missing, unexpected = model.load_state_dict(trained, strict=False)
        missing = [k for k in missing if k not in NOT_TRAINED]
        if missing or unexpected:
            raise ValueError(f"demo weights do not fit the demo config: missing {missing}, unexpected {unexpected}")
    return model.to(dtype).eval()


class MissingWeightsError(UserError, FileNotFoundError):
    """The trained part of the demo model is not where it should be; the message says how to get it."""


def load_trained(path: Path = TRAINED_FILE) -> dict:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise MissingWeightsError(
            f"{path} not found: the trained part of the demo model ships with the package. Reinstall it, or train "
            f"it again with `transformers-qwen3 demo retrain` (docs/demo.md)."
        )
    return load_file(path)


# --------------------------------------------------------------------------------------------------------------------
# The checkpoint: rebuilt from the committed part + the seeded table, cached
# --------------------------------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """``$TRANSFORMERS_QWEN3_CACHE`` or ``${XDG_CACHE_HOME:-~/.cache}/transformers-qwen3`` (shared with the
    llama.cpp wheel cache of ggml_patches/)."""
    if os.environ.get("TRANSFORMERS_QWEN3_CACHE"):
        return Path(os.environ["TRANSFORMERS_QWEN3_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "transformers-qwen3"


def _build_key() -> str:
    """Changes whenever anything the rebuilt folder depends on changes (weights, config, code files, versions)."""
    import transformers

    from ..checkpoint.hub_folder import HUB_FILES, REMOTE_DIR

    h = hashlib.sha256()
    h.update(TRAINED_FILE.read_bytes() if TRAINED_FILE.is_file() else b"missing")
    h.update(json.dumps([TEXT_CONFIG, VISION_CONFIG, AUDIO_CONFIG, EMBED_SEED, EMBED_STD], sort_keys=True).encode())
    for name in HUB_FILES:
        h.update((REMOTE_DIR / name).read_bytes())
    h.update(f"{transformers.__version__}|{torch.__version__}".encode())
    return h.hexdigest()[:12]


def write_checkpoint(dst, force: bool = False, tokenizer=None) -> Path:
    """Rebuild the demo model into ``dst`` in our Hub layout (bf16, tokenizer, processor, code files). Same bytes
    every time."""
    from ..checkpoint.hub_folder import save_hub_folder
    from ..checkpoint.tokenizer import build_qwen3_tokenizer

    model = build_model(load_trained(), dtype=torch.bfloat16)
    return save_hub_folder(model, tokenizer or build_qwen3_tokenizer(), Path(dst), force=force)


def demo_checkpoint(verbose: bool = False) -> Path:
    """The demo model's Hub folder, rebuilt into the cache on first use and reused afterwards."""
    folder = cache_root() / "demo" / f"{NAME}-{_build_key()}"
    if not (folder / "config.json").is_file():
        t0 = time.perf_counter()
        if verbose:
            print(f"rebuilding the demo model into {folder} ...", flush=True)
        write_checkpoint(folder, force=True)
        if verbose:
            print(f"  done in {time.perf_counter() - t0:.1f}s", flush=True)
    return folder


# --------------------------------------------------------------------------------------------------------------------
# `transformers-qwen3 demo build`
# --------------------------------------------------------------------------------------------------------------------


class Build:
    """Rebuild the full Hub-layout checkpoint (into the cache, or into DST)."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("dst", type=Path, nargs="?", help="folder (default: the cache, printed)")
        parser.add_argument("--force", action="store_true", help="replace DST if it exists")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        folder = write_checkpoint(args.dst, force=args.force) if args.dst else demo_checkpoint(verbose=True)
        print(folder)
        return 0
