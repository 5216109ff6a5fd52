"""The demo task's samples as model inputs: encoded once before training (chat template, pixel values, log-mel
features), collated into left-padded batches whose two labelled columns are the same in every row.

Each sample has two labelled positions: the answer word and the ``<|im_end|>`` after it. :func:`answer_logits`
passes ``logits_to_keep`` as a tensor of those two columns, so the 151,936-wide head runs on 2 positions per sample
instead of ~30-65 (a test checks they equal the full forward's logits there).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from ..remote.tokens_qwen3_multimodal import ENDOFTEXT_ID as PAD
from ..remote.tokens_qwen3_multimodal import IM_END_ID as IM_END

DATA_SEED = 0  # synthetic.py seed: train / validation / test splits are fixed by it


def _probe_labels():
    from .synthetic import NUMBER_WORDS, PALETTE, PITCHES, POSITIONS, SHAPES

    counts = NUMBER_WORDS[1:5]
    return NUMBER_WORDS, {
        "image": {"colour": tuple(PALETTE), "shape": SHAPES, "count": counts, "position": POSITIONS},
        "audio": {"pitch": tuple(PITCHES), "count": counts},
    }


# the labels of the training-only tower probes (probes.py): what each medium *is*
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
