"""The demo model: a small Qwen3-Multimodal the project trains itself on the synthetic image + audio task.

No real weights can be downloaded here and a random model answers nonsense, so ``make demo`` shows a model trained
by this file on :mod:`transformers_qwen3.demo.synthetic` (colour / shape / count / position of shapes in a picture;
count / pitch of beeps in a clip; one-word answers).

Shape: the real Qwen3 tokenizer (vocabulary 151,936), a 4-layer decoder of width 256 with FFN 768, a 2-block
Qwen3-VL vision tower and a 2-layer Qwen3-Omni audio tower with narrow convolutions. Every text weight row is a
multiple of 256 wide, so llama.cpp's K-quants are real K-quants (narrower rows make llama.cpp substitute other types).

How the weights ship (option b of issue 5; docs/demo.md says why): the embedding table (tied with the output head,
38.9 M of the 44.6 M parameters) is *frozen* at a seeded initialisation computed with exact arithmetic
(:func:`frozen_embedding`), so only the rest — decoder layers, final norm, both towers — is trained and committed
as package data (``weights/demo-trained.safetensors``, bf16, a few MB). :func:`demo_checkpoint` puts the two
back together into a Hub-layout folder in seconds and caches it under ``~/.cache/transformers-qwen3/demo/``.

Training (``python -m transformers_qwen3.demo.model train``) computes the loss and the logits only at the two
positions that carry labels (the answer word and the ``<|im_end|>`` after it) by passing ``logits_to_keep`` as a
tensor of positions; a full-vocabulary head over every position costs most of a step with this vocabulary
(``--measure-speedup`` times both). Tower inputs (pixel values, log-mel features) are computed once before training.
Everything is seeded; with the same torch build and thread count the run is bit-for-bit repeatable.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint.presets import QWEN3_COMMON

# --------------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------------

NAME = "qwen3-multimodal-demo"
EMBED_SEED = 20250601  # seed of the frozen embedding table
# Row norm ~1.6: the tied head over random rows then reaches confident logits (margin ~18 nats over 151,936
# tokens with the final norm at 1). At 0.02 (the usual initializer_range) the final norm weight has to grow ~5x
# first and training crawls.
EMBED_STD = 0.1
DATA_SEED = 0  # synthetic.py seed: train / validation / test splits are fixed by it
WEIGHTS_DIR = Path(__file__).parent / "weights"
TRAINED_FILE = WEIGHTS_DIR / "demo-trained.safetensors"
RECORD_FILE = WEIGHTS_DIR / "training.json"
EMBED_KEY = "model.embed_tokens.weight"
IM_END, PAD = 151645, 151643
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
        missing = [k for k in missing if k not in (EMBED_KEY, "lm_head.weight")]
        if missing or unexpected:
            raise ValueError(f"demo weights do not fit the demo config: missing {missing}, unexpected {unexpected}")
    return model.to(dtype).eval()


def load_trained(path: Path = TRAINED_FILE) -> dict:
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the trained part of the demo model ships with the package. Reinstall it, or train "
            f"it again with `python -m transformers_qwen3.demo.model train` (docs/demo.md)."
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
# Data: synthetic samples → model inputs (computed once)
# --------------------------------------------------------------------------------------------------------------------


def _probe_labels():
    from .synthetic import NUMBER_WORDS, PALETTE, PITCHES, POSITIONS, SHAPES

    counts = NUMBER_WORDS[1:5]
    return NUMBER_WORDS, {
        "image": {"colour": tuple(PALETTE), "shape": SHAPES, "count": counts, "position": POSITIONS},
        "audio": {"pitch": tuple(PITCHES), "count": counts},
    }


# Training-only linear probes on every media token a tower outputs (what the medium *is*: colour, shape, count,
# position; pitch, beep count). Without them the decoder sat at the answer prior for hundreds of steps: only the
# one or two tokens that hold the shape carried its colour, too weak a signal for a randomly initialised decoder
# to find. The probes are dropped after training (not part of the model).
NUMBER_WORDS, PROBES = _probe_labels()


@dataclass
class Item:
    kind: str
    task: str
    answer: str
    ids: torch.Tensor  # prompt + answer + <|im_end|>
    answer_id: int
    media: dict  # pixel_values + image_grid_thw, or input_features [mel, frames]
    aux: dict  # tower-probe labels (PROBES), -100 where a label does not apply


def encode(processor, sample) -> Item:
    inputs = processor.apply_chat_template(
        sample.messages()[:1],
        add_generation_prompt=True,
        enable_thinking=False,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    answer_ids = processor.tokenizer.encode(sample.answer, add_special_tokens=False)
    if len(answer_ids) != 1:
        raise ValueError(f"answer {sample.answer!r} is {len(answer_ids)} tokens; the demo task needs one")
    ids = torch.cat([inputs["input_ids"][0], torch.tensor([answer_ids[0], IM_END])])
    if sample.kind == "image":
        media = {"pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"]}
    else:
        n = int(inputs["feature_attention_mask"][0].sum())
        media = {"input_features": inputs["input_features"][0, :, :n]}
    meta = sample.meta()
    aux = {
        attr: (
            values.index(str(meta[attr]) if attr != "count" else NUMBER_WORDS[meta[attr]])
            if meta.get(attr) is not None
            else -100
        )
        for attr, values in PROBES[sample.kind].items()
    }
    return Item(sample.kind, sample.task, sample.answer, ids, answer_ids[0], media, aux)


def encode_split(processor, split: str, n: int, desc: str | None = None) -> list[Item]:
    from tqdm import tqdm

    from .synthetic import SyntheticSplit

    samples = SyntheticSplit(DATA_SEED, split, n)
    bar = tqdm(samples, desc=desc or f"encoding {split}", leave=False, mininterval=0.5 if sys.stderr.isatty() else 30)
    return [encode(processor, s) for s in bar]


def collate(items: list[Item]) -> tuple[dict, torch.Tensor]:
    """Left-padded batch (so the two labelled positions are the same columns in every row) and its targets."""
    length = max(len(it.ids) for it in items)
    ids = torch.full((len(items), length), PAD, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, it in enumerate(items):
        ids[row, length - len(it.ids) :] = it.ids
        mask[row, length - len(it.ids) :] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    images = [it.media for it in items if it.kind == "image"]
    if images:
        batch["pixel_values"] = torch.cat([m["pixel_values"] for m in images])
        batch["image_grid_thw"] = torch.cat([m["image_grid_thw"] for m in images])
    clips = [it.media["input_features"] for it in items if it.kind == "audio"]
    if clips:
        frames = max(c.shape[1] for c in clips)
        feats = torch.zeros(len(clips), clips[0].shape[0], frames)
        fmask = torch.zeros(len(clips), frames, dtype=torch.long)
        for i, c in enumerate(clips):
            feats[i, :, : c.shape[1]] = c
            fmask[i, : c.shape[1]] = 1
        batch["input_features"], batch["feature_attention_mask"] = feats, fmask
    # column -3 (last prompt token) predicts the answer; column -2 (the answer) predicts <|im_end|>
    targets = torch.tensor([[it.answer_id, IM_END] for it in items])
    return batch, targets


def answer_logits(model, batch) -> torch.Tensor:
    """Logits [batch, 2, vocab] at the two labelled columns only."""
    length = batch["input_ids"].shape[1]
    keep = torch.tensor([length - 3, length - 2])
    return model(**batch, logits_to_keep=keep, use_cache=False).logits


@torch.no_grad()
def evaluate(model, items: list[Item], batch_size: int = 32) -> dict:
    """Exact-match accuracy per modality and task: the greedy answer word is right *and* is followed by
    ``<|im_end|>`` (what greedy generation would print, computed teacher-forced in one pass)."""
    model.eval()
    hits: dict[str, list[int]] = {}
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch, targets = collate(chunk)
        pred = answer_logits(model, batch).argmax(-1)
        ok = (pred == targets).all(-1)
        for it, good in zip(chunk, ok.tolist(), strict=True):
            hits.setdefault(it.kind, []).append(int(good))
            hits.setdefault(f"{it.kind}/{it.task}", []).append(int(good))
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())} | {
        f"n_{k}": len(v) for k, v in hits.items() if "/" not in k
    }


# --------------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainSettings:
    steps: int = 900
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.01
    n_train: int = 6000
    n_val: int = 200
    n_test: int = 400
    eval_every: int = 250
    seed: int = 0
    threads: int = 1


def _lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _trainable_state(model, dtype=torch.bfloat16) -> dict:
    return {
        k: v.detach().to(dtype).contiguous()
        for k, v in model.state_dict().items()
        if k not in (EMBED_KEY, "lm_head.weight")
    }


class TowerProbes(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict(
            {
                f"{kind}_{attr}": torch.nn.Linear(width, len(values))
                for kind, attrs in PROBES.items()
                for attr, values in attrs.items()
            }
        )
        self.captured = {}

    def attach(self, model):
        """Capture the towers' outputs during the model's forward (no second tower pass)."""

        def keep(name, field):
            return lambda module, args, out: self.captured.__setitem__(name, getattr(out, field))

        return [
            model.model.visual.register_forward_hook(keep("image", "pooler_output")),
            model.model.audio_tower.register_forward_hook(keep("audio", "last_hidden_state")),
        ]

    def loss(self, model, items, batch) -> torch.Tensor:
        """Every media token must predict its medium's attributes (so every token carries them: the decoder can
        read them with any attention pattern, which is what makes the task learnable in minutes)."""
        config = model.config
        token = {"image": config.image_token_id, "audio": config.audio_token_id}
        losses = []
        for kind in ("image", "audio"):
            rows = [i for i, it in enumerate(items) if it.kind == kind]
            if not rows:
                continue
            counts = (batch["input_ids"][rows] == token[kind]).sum(-1)  # tokens per medium, in order
            features = self.captured.pop(kind).float()
            for attr in PROBES[kind]:
                labels = torch.tensor([items[i].aux[attr] for i in rows]).repeat_interleave(counts)
                if (labels >= 0).any():
                    losses.append(
                        torch.nn.functional.cross_entropy(
                            self.heads[f"{kind}_{attr}"](features), labels, ignore_index=-100
                        )
                    )
        return torch.stack(losses).mean()


def _step(model, optimizer, params, batch, targets, full_vocab: bool = False, probes=None, items=None) -> float:
    if full_vocab:  # the textbook way, for the speed comparison: logits over every position, labels elsewhere -100
        labels = torch.full_like(batch["input_ids"], -100)
        labels[:, -2:] = targets  # shifted inside the loss: position t predicts labels[t + 1]
        loss = model(**batch, labels=labels, use_cache=False).loss
    else:
        logits = answer_logits(model, batch)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        if probes is not None:
            loss = loss + probes.loss(model, items, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return float(loss.detach())


def measure_speedup(model, optimizer, params, items: list[Item], batch_size: int, steps: int = 3) -> dict:
    """Seconds per training step, answer-position logits vs full-vocabulary logits at every position (same batches,
    after one warm-up step each; the model is restored afterwards)."""
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    saved_opt = optimizer.state_dict()
    batches = [collate(items[i * batch_size : (i + 1) * batch_size]) for i in range(steps + 1)]
    times = {}
    for full in (False, True):
        _step(model, optimizer, params, *batches[0], full_vocab=full)
        t0 = time.perf_counter()
        for b in batches[1:]:
            _step(model, optimizer, params, *b, full_vocab=full)
        times["full" if full else "answer"] = (time.perf_counter() - t0) / steps
        model.load_state_dict(saved)
        optimizer.load_state_dict(saved_opt)
    return {
        "answer_positions_s_per_step": times["answer"],
        "full_vocab_s_per_step": times["full"],
        "speedup": times["full"] / times["answer"],
        "batch_size": batch_size,
        "steps_timed": steps,
    }


def train(
    settings: TrainSettings, out_dir: Path = WEIGHTS_DIR, measure: bool = True, init_from: Path | None = None
) -> dict:
    from tqdm import tqdm

    from ..checkpoint.tokenizer import build_qwen3_tokenizer
    from ..remote.processing_qwen3_multimodal import Qwen3MultimodalProcessor

    torch.set_num_threads(settings.threads)
    t_start = time.perf_counter()
    processor = Qwen3MultimodalProcessor(tokenizer=build_qwen3_tokenizer())
    train_items = encode_split(processor, "train", settings.n_train)
    val_items = encode_split(processor, "validation", settings.n_val)
    test_items = encode_split(processor, "test", settings.n_test)
    t_data = time.perf_counter() - t_start
    print(
        f"encoded {len(train_items)} train / {len(val_items)} validation / {len(test_items)} test samples "
        f"in {t_data:.0f}s",
        flush=True,
    )

    _seed_everything(settings.seed)
    model = build_model(load_trained(init_from) if init_from else None).train()
    model.model.embed_tokens.weight.requires_grad_(False)  # frozen (and tied: the output head too)
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    probes = TowerProbes(model.config.text_config.hidden_size)
    hooks = probes.attach(model)
    n_total = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_total / 1e6:.2f} M, trained {n_trainable / 1e6:.2f} M (embedding table frozen)")
    decay = [p for p in params + list(probes.parameters()) if p.ndim >= 2]
    no_decay = [p for p in params + list(probes.parameters()) if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
        betas=(0.9, 0.98),
    )

    for hook in hooks:  # the speed comparison times the model alone
        hook.remove()
    speed = measure_speedup(model, optimizer, params, train_items, settings.batch_size) if measure else None
    hooks = probes.attach(model)
    if speed:
        print(
            f"step time: {speed['answer_positions_s_per_step']:.2f}s with answer-position logits, "
            f"{speed['full_vocab_s_per_step']:.2f}s with full-vocabulary logits ({speed['speedup']:.1f}x)"
        )
    _seed_everything(settings.seed)  # the speed measurement must not change the training run

    order_rng = np.random.default_rng(settings.seed)
    order: list[int] = []
    history = []
    t_train = time.perf_counter()
    bar = tqdm(
        range(settings.steps), desc="training", dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30
    )
    smooth = None
    for step in bar:
        if len(order) < settings.batch_size:
            order += order_rng.permutation(len(train_items)).tolist()
        chosen, order = order[: settings.batch_size], order[settings.batch_size :]
        items = [train_items[i] for i in chosen]
        batch, targets = collate(items)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, settings)
        model.train()
        loss = _step(model, optimizer, params, batch, targets, probes=probes, items=items)
        smooth = loss if smooth is None else 0.95 * smooth + 0.05 * loss
        bar.set_postfix(loss=f"{smooth:.3f}")
        if (step + 1) % settings.eval_every == 0 or step + 1 == settings.steps:
            acc = evaluate(model, val_items)
            probes.captured.clear()
            history.append(
                {"step": step + 1, "loss": round(smooth, 4), "val_image": acc["image"], "val_audio": acc["audio"]}
            )
            bar.write(
                f"step {step + 1}: loss {smooth:.3f}, validation image {acc['image']:.1%}, "
                f"audio {acc['audio']:.1%} (" + ", ".join(f"{k} {v:.0%}" for k, v in acc.items() if "/" in k) + ")"
            )
    train_seconds = time.perf_counter() - t_train
    for hook in hooks:
        hook.remove()

    # the shipped artifact is bf16: evaluate exactly that
    trained = _trainable_state(model)
    final = build_model(trained)
    test_acc = evaluate(final, test_items)
    val_acc = evaluate(final, val_items)
    print(
        "test accuracy (bf16 weights): "
        + ", ".join(f"{k} {v:.1%}" for k, v in test_acc.items() if not k.startswith("n_"))
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    tmp = out_dir / (TRAINED_FILE.name + ".tmp")
    save_file(trained, tmp, metadata={"format": "pt", "embed_seed": str(EMBED_SEED)})
    os.chmod(tmp, 0o644)  # package data: world-readable whatever the umask
    os.replace(tmp, out_dir / TRAINED_FILE.name)
    record = {
        "command": "python -m transformers_qwen3.demo.model train " + " ".join(sys.argv[2:]),
        "settings": settings.__dict__,
        "wall_seconds": {
            "encode_data": round(t_data, 1),
            "train": round(train_seconds, 1),
            "total": round(time.perf_counter() - t_start, 1),
        },
        "parameters": {"total": n_total, "trained": n_trainable},
        "test_accuracy": test_acc,
        "validation_accuracy": val_acc,
        "history": history,
        "step_speed": speed,
        "embedding_sha256": sha256_tensor(frozen_embedding()),
        "trained_sha256": hashlib.sha256((out_dir / TRAINED_FILE.name).read_bytes()).hexdigest(),
        "environment": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": settings.threads,
        },
    }
    if init_from is not None:  # a continued run: keep the earlier stage's record (command, wall time) with it
        earlier = Path(init_from).with_name(RECORD_FILE.name)
        if earlier.is_file():
            record["continued_from"] = json.loads(earlier.read_text())
    (out_dir / RECORD_FILE.name).write_text(json.dumps(record, indent=2) + "\n")
    return record


# --------------------------------------------------------------------------------------------------------------------
# CLI: train / build / eval
# --------------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m transformers_qwen3.demo.model", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    p_train = sub.add_parser("train", help="train the demo model's non-embedding weights (writes weights/)")
    defaults = TrainSettings()
    for field, value in defaults.__dict__.items():
        p_train.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    p_train.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="where to write the trained part")
    p_train.add_argument("--no-measure", action="store_true", help="skip the per-step speed comparison")
    p_train.add_argument("--init-from", type=Path, help="start from a trained file instead of a fresh initialisation")
    p_build = sub.add_parser("build", help="rebuild the full Hub-layout checkpoint")
    p_build.add_argument("dst", type=Path, nargs="?", help="folder (default: the cache, printed)")
    p_build.add_argument("--force", action="store_true")
    p_eval = sub.add_parser("eval", help="held-out accuracy of the committed weights")
    p_eval.add_argument("--n-test", type=int, default=400)
    args = parser.parse_args(argv)

    if args.verb == "train":
        settings = TrainSettings(**{k: getattr(args, k) for k in defaults.__dict__})
        record = train(settings, args.out, measure=not args.no_measure, init_from=args.init_from)
        print(
            f"wrote {args.out / TRAINED_FILE.name} and {RECORD_FILE.name}: "
            f"training {record['wall_seconds']['train']:.0f}s, total {record['wall_seconds']['total']:.0f}s"
        )
        return 0
    if args.verb == "build":
        folder = write_checkpoint(args.dst, force=args.force) if args.dst else demo_checkpoint(verbose=True)
        print(folder)
        return 0
    from ..checkpoint.tokenizer import build_qwen3_tokenizer
    from ..remote.processing_qwen3_multimodal import Qwen3MultimodalProcessor

    torch.set_num_threads(1)
    items = encode_split(Qwen3MultimodalProcessor(tokenizer=build_qwen3_tokenizer()), "test", args.n_test)
    acc = evaluate(build_model(load_trained()), items)
    print(json.dumps(acc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
