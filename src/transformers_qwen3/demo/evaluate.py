"""Held-out accuracy of the demo model (``transformers-qwen3 demo eval``): exact match of the greedy answer,
computed teacher-forced in one pass per batch (the answer word is right *and* is followed by ``<|im_end|>``, which is
what greedy generation would print)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .data import Item, answer_logits, collate, encode_split


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


class Eval:
    """Held-out accuracy of the committed weights (or of another trained file)."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--n-test", type=int, default=400, help="test-split questions (half image, half audio)")
        parser.add_argument("--weights", type=Path, help="a trained file (default: the committed one)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from ..checkpoint.tokenizer import build_qwen3_tokenizer
        from ..remote.processing_qwen3_multimodal import Qwen3MultimodalProcessor
        from .model import TRAINED_FILE, build_model, load_trained

        torch.set_num_threads(1)
        items = encode_split(Qwen3MultimodalProcessor(tokenizer=build_qwen3_tokenizer()), "test", args.n_test)
        acc = evaluate(build_model(load_trained(args.weights or TRAINED_FILE)), items)
        print(json.dumps(acc, indent=2))
        return 0
