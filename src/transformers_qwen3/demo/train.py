"""Training the demo model's non-embedding weights (``transformers-qwen3 demo train``): one stage of the recipe.

What makes it fit on a CPU (docs/demo.md): the loss and the logits only at the two labelled positions
(:func:`.data.answer_logits`; ``--no-measure`` skips timing it against full-vocabulary logits), tower inputs
encoded once before training (:mod:`.data`), and training-only tower probes (:mod:`.probes`).

Everything is seeded. With the same torch build and thread count a stage is bit-for-bit repeatable; other builds
reproduce the accuracy, not the bytes (float reduction order differs). The order of the seeded steps below (model
init, probes, the speed measurement, the reseed, the data order) is part of that: keep it when editing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import set_seed

from ..outputs import atomic_file
from .data import Item, answer_logits, collate, encode_split
from .evaluate import evaluate
from .model import (
    EMBED_SEED,
    NOT_TRAINED,
    RECORD_FILE,
    TRAINED_FILE,
    WEIGHTS_DIR,
    build_model,
    frozen_embedding,
    load_trained,
    sha256_tensor,
)
from .probes import TowerProbes


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


@dataclass
class Run:
    """The model being trained and what trains it."""

    model: torch.nn.Module
    params: list
    probes: TowerProbes
    optimizer: torch.optim.Optimizer
    hooks: list = field(default_factory=list)


def _lr_at(step: int, s: TrainSettings) -> float:
    """Linear warmup, then cosine down to 5 % of ``lr``: transformers' ``get_cosine_with_min_lr_schedule_with_warmup``
    (``min_lr_rate=0.05``) but one step ahead during warmup (``step + 1``). Kept as recorded, because the committed
    weights were trained with it and the recipe must rerun them (demo/recipe.py)."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def _trainable_state(model, dtype=torch.bfloat16) -> dict:
    return {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items() if k not in NOT_TRAINED}


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


def encode_data(settings: TrainSettings, tokenizer=None) -> tuple[list[Item], list[Item], list[Item]]:
    """The train / validation / test splits as model inputs (the slow part before the first step)."""
    from ..checkpoint.tokenizer import build_qwen3_tokenizer
    from ..remote.processing_qwen3_multimodal import Qwen3MultimodalProcessor

    processor = Qwen3MultimodalProcessor(tokenizer=tokenizer or build_qwen3_tokenizer())
    return (
        encode_split(processor, "train", settings.n_train),
        encode_split(processor, "validation", settings.n_val),
        encode_split(processor, "test", settings.n_test),
    )


def start_run(settings: TrainSettings, init_from: Path | None) -> Run:
    """Seeded model (fresh, or the trained part of ``init_from``), tower probes and AdamW; the table stays frozen."""
    set_seed(settings.seed)  # python, numpy and torch, as the recorded runs seeded them
    model = build_model(load_trained(init_from) if init_from else None).train()
    model.model.embed_tokens.weight.requires_grad_(False)  # frozen (and tied: the output head too)
    params = [p for p in model.parameters() if p.requires_grad]
    probes = TowerProbes(model.config.text_config.hidden_size)
    hooks = probes.attach(model)
    decay = [p for p in params + list(probes.parameters()) if p.ndim >= 2]
    no_decay = [p for p in params + list(probes.parameters()) if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
        betas=(0.9, 0.98),
    )
    return Run(model, params, probes, optimizer, hooks)


def timed_speedup(run: Run, items: list[Item], settings: TrainSettings) -> dict:
    """measure_speedup on the model alone (probe hooks off meanwhile), then reseed: the measurement must not change
    the training run."""
    for hook in run.hooks:
        hook.remove()
    speed = measure_speedup(run.model, run.optimizer, run.params, items, settings.batch_size)
    run.hooks = run.probes.attach(run.model)
    print(
        f"step time: {speed['answer_positions_s_per_step']:.2f}s with answer-position logits, "
        f"{speed['full_vocab_s_per_step']:.2f}s with full-vocabulary logits ({speed['speedup']:.1f}x)"
    )
    return speed


def train_loop(run: Run, train_items: list[Item], val_items: list[Item], settings: TrainSettings) -> list[dict]:
    """``settings.steps`` steps over a seeded shuffle of ``train_items``; validation every ``eval_every`` steps.
    Returns the validation history."""
    from tqdm import tqdm

    order_rng = np.random.default_rng(settings.seed)
    order: list[int] = []
    history, smooth = [], None
    bar = tqdm(range(settings.steps), desc="training", dynamic_ncols=True, mininterval=_tqdm_interval())
    for step in bar:
        if len(order) < settings.batch_size:
            order += order_rng.permutation(len(train_items)).tolist()
        chosen, order = order[: settings.batch_size], order[settings.batch_size :]
        items = [train_items[i] for i in chosen]
        batch, targets = collate(items)
        for group in run.optimizer.param_groups:
            group["lr"] = _lr_at(step, settings)
        run.model.train()
        loss = _step(run.model, run.optimizer, run.params, batch, targets, probes=run.probes, items=items)
        smooth = loss if smooth is None else 0.95 * smooth + 0.05 * loss
        bar.set_postfix(loss=f"{smooth:.3f}")
        if (step + 1) % settings.eval_every == 0 or step + 1 == settings.steps:
            acc = evaluate(run.model, val_items)
            run.probes.captured.clear()
            history.append(
                {"step": step + 1, "loss": round(smooth, 4), "val_image": acc["image"], "val_audio": acc["audio"]}
            )
            tasks = ", ".join(f"{k} {v:.0%}" for k, v in acc.items() if "/" in k)
            bar.write(
                f"step {step + 1}: loss {smooth:.3f}, validation image {acc['image']:.1%}, audio {acc['audio']:.1%} ({tasks})"
            )
    return history


def _tqdm_interval() -> float:
    return 0.5 if sys.stderr.isatty() else 30


def save_trained(trained: dict, out_dir: Path) -> Path:
    """The trained part as bf16 safetensors, written atomically and world-readable (package data)."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / TRAINED_FILE.name
    with atomic_file(path) as tmp:
        save_file(trained, tmp, metadata={"format": "pt", "embed_seed": str(EMBED_SEED)})
    path.chmod(0o644)  # package data: world-readable whatever the umask
    return path


def command_line(settings: TrainSettings, out_dir: Path, measure: bool, init_from: Path | None) -> str:
    """The `transformers-qwen3 demo train` command that runs this stage (the options that differ from defaults)."""
    defaults = asdict(TrainSettings())
    options = [f"--{k.replace('_', '-')} {v}" for k, v in asdict(settings).items() if defaults[k] != v]
    options += [] if measure else ["--no-measure"]
    options += [f"--init-from {init_from}"] if init_from else []
    return " ".join(["transformers-qwen3 demo train", *options, f"--out {out_dir}"])


def _environment(threads: int) -> dict:
    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": threads,
    }


def train(
    settings: TrainSettings,
    out_dir: Path = WEIGHTS_DIR,
    measure: bool = True,
    init_from: Path | None = None,
    tokenizer=None,
) -> dict:
    """One training stage: writes ``out_dir/demo-trained.safetensors`` and ``out_dir/training.json`` (the record,
    which embeds ``init_from``'s record when there is one) and returns the record."""
    torch.set_num_threads(settings.threads)
    t_start = time.perf_counter()
    train_items, val_items, test_items = encode_data(settings, tokenizer)
    t_data = time.perf_counter() - t_start
    print(
        f"encoded {len(train_items)} train / {len(val_items)} validation / {len(test_items)} test samples in {t_data:.0f}s"
    )
    run = start_run(settings, init_from)
    n_total = sum(p.numel() for p in run.model.parameters())
    n_trainable = sum(p.numel() for p in run.params)
    print(f"parameters: {n_total / 1e6:.2f} M, trained {n_trainable / 1e6:.2f} M (embedding table frozen)")
    speed = timed_speedup(run, train_items, settings) if measure else None
    set_seed(settings.seed)  # python, numpy and torch, as the recorded runs seeded them
    t_train = time.perf_counter()
    history = train_loop(run, train_items, val_items, settings)
    train_seconds = time.perf_counter() - t_train
    for hook in run.hooks:
        hook.remove()
    trained = _trainable_state(run.model)
    final = build_model(trained)  # the shipped artifact is bf16: evaluate exactly that
    test_acc, val_acc = evaluate(final, test_items), evaluate(final, val_items)
    print("test accuracy (bf16 weights): " + ", ".join(f"{k} {v:.1%}" for k, v in test_acc.items() if "n_" not in k))
    path = save_trained(trained, out_dir)
    record = {
        "command": command_line(settings, out_dir, measure, init_from),
        "settings": asdict(settings),
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
        "trained_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "environment": _environment(settings.threads),
    }
    earlier = Path(init_from).with_name(RECORD_FILE.name) if init_from else None
    if earlier is not None and earlier.is_file():  # a continued stage keeps the earlier one's record with it
        record["continued_from"] = json.loads(earlier.read_text())
    with atomic_file(out_dir / RECORD_FILE.name) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=2) + "\n")
    return record


class Train:
    """Train the demo model's non-embedding weights: one stage (`demo retrain` runs the recorded recipe)."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        for name, value in asdict(TrainSettings()).items():
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
        parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="where to write the trained part")
        parser.add_argument("--no-measure", action="store_true", help="skip the per-step speed comparison")
        parser.add_argument("--init-from", type=Path, help="start from a trained file, not a fresh initialisation")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        settings = TrainSettings(**{k: getattr(args, k) for k in asdict(TrainSettings())})
        record = train(settings, args.out, measure=not args.no_measure, init_from=args.init_from)
        seconds = record["wall_seconds"]
        print(
            f"wrote {args.out / TRAINED_FILE.name} and {RECORD_FILE.name}: training {seconds['train']:.0f}s, total {seconds['total']:.0f}s"
        )
        return 0
