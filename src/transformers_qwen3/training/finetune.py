"""``transformers-qwen3 finetune MODEL DATA.jsonl OUT``: LoRA (default) or full fine-tuning with transformers' Trainer.

Data: one JSON object per line with ``"messages"`` in chat format (``role`` + ``content``, a string or a list of
parts). Media parts (``{"type": "image", "image": "images/a.png"}``, ``audio``, ``video``, ``image_url``,
``input_audio``) name files relative to the JSONL's folder; other keys of a record (e.g. ``"meta"``) are ignored.
Text-only records are tokenized with the chat template; records with media go through
``Qwen3MultimodalProcessor.apply_chat_template``, which loads the files and expands the placeholders.

Loss on assistant tokens only: for every assistant turn, the tokens after ``<|im_start|>assistant\\n`` through its
closing ``<|im_end|>`` (so the model learns to stop) carry labels; everything else is -100. That span is exactly
what the chat template renders for the turn, including Qwen3's empty ``<think>\\n\\n</think>\\n\\n`` block on the final
turn.

Outputs (each written to a temporary folder and renamed into place at the end):

- ``--lora`` (default): OUT is a peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``);
  ``--merge [DIR]`` also writes the merged model in our Hub layout (default ``OUT-merged``).
- ``--full``: OUT is a complete Hub-layout folder (weights, config with auto_map, code files, tokenizer/processor).
- ``OUT/finetune.json``: settings, step counts, trainable parameters and the Trainer's log.

Checkpoints go to ``OUT.checkpoints/`` (``--checkpoint-dir``) every ``--save-steps``; ``--resume`` continues from the
latest one (or ``--resume CKPT``). Weights train in float32 (``--bf16`` turns on bf16 autocast on GPUs); outputs are
written in the dtype the source checkpoint's safetensors store.

Everything is checked before training starts: the outputs, MODEL (``validate_folder``, the check every verb runs), and
every record of the data, each encoded once by the tokenizer or processor exactly as the data loader will encode it,
so a bad media part, inline media tag or over-long record fails with the line that holds it, not at step N (the price:
media records are decoded twice). A run that fails leaves no empty checkpoint folder and no partial output; only the
checkpoints it saved stay, for ``--resume``.

Several GPUs or hosts: the same command under ``accelerate launch`` (Trainer runs DDP; only the main process writes
outputs). See docs/finetune.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import FolderError, OutputError, UserError

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant", "tool")
# content-part type -> media kind (as the processor and chat template name them)
MEDIA_PARTS = {"image": "image", "image_url": "image", "video": "video", "audio": "audio", "input_audio": "audio"}
TEXT_PARTS = ("text",)
_SCHEME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*:")
PAD_FALLBACK = 151643  # <|endoftext|>, Qwen3's pad token
MEDIA_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
AUDIO_KEYS = ("input_features", "feature_attention_mask")


class DataError(UserError, ValueError):
    """A training record that cannot be used; the message names the file and line."""


class FinetuneUsageError(UserError, ValueError):
    """Options that do not go together, or a --resume checkpoint that is not one."""


# --------------------------------------------------------------------------------------------------------------------
# Reading chat JSONL
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatRecord:
    where: str  # "path:line" for error messages
    messages: list
    media: tuple[str, ...]  # kinds of the media parts, in order
    files: tuple[Path, ...]  # local media files the record names (resolved)


def _resolve_source(source, root: Path, where: str, files: list):
    """A local relative path becomes absolute (relative to the JSONL's folder) and must exist; URLs, data URIs and
    in-memory media pass through."""
    if not isinstance(source, str) or _SCHEME_RE.match(source):
        return source
    path = Path(source).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise DataError(
            f"{where}: media file {source!r} not found (looked at {path}); paths are relative to the "
            f"JSONL file's folder."
        )
    files.append(path.resolve())
    return str(path.resolve())


def _resolve_part(part: dict, root: Path, where: str, files: list) -> dict:
    part = dict(part)
    kind = part["type"]
    if kind == "image_url":
        url = part.get("image_url")
        if isinstance(url, dict):
            part["image_url"] = {**url, "url": _resolve_source(url.get("url"), root, where, files)}
        else:
            part["image_url"] = _resolve_source(url, root, where, files)
        return part
    if kind == "input_audio":
        return part  # base64 data inline
    for key in (kind, "url", "path"):
        if part.get(key) is not None:
            part[key] = _resolve_source(part[key], root, where, files)
            return part
    raise DataError(
        f"{where}: a {kind!r} part needs its source under {kind!r}, 'url' or 'path' "
        f'(e.g. {{"type": "{kind}", "{kind}": "{kind}s/a.{"png" if kind == "image" else "wav"}"}}).'
    )


def parse_record(obj, root: Path, where: str) -> ChatRecord:
    example = '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list) or not obj["messages"]:
        raise DataError(f'{where}: expected an object with a non-empty "messages" list, like {example}.')
    messages, kinds, files = [], [], []
    for i, message in enumerate(obj["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise DataError(f"{where}: message {i} needs a 'role' from {', '.join(ROLES)}.")
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, str):
                    parts.append({"type": "text", "text": part})
                    continue
                if not isinstance(part, dict) or part.get("type") not in (*MEDIA_PARTS, *TEXT_PARTS):
                    raise DataError(
                        f"{where}: message {i} has a content part that is not one of "
                        f"{', '.join((*TEXT_PARTS, *MEDIA_PARTS))} (got {part!r:.80})."
                    )
                if part["type"] in MEDIA_PARTS:
                    kinds.append(MEDIA_PARTS[part["type"]])
                    part = _resolve_part(part, root, where, files)
                parts.append(part)
            message = {**message, "content": parts}
        elif content is not None and not isinstance(content, str):
            raise DataError(f"{where}: message {i}'s content must be a string or a list of parts.")
        messages.append(message)
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the record has no assistant message, so there is nothing to learn from it.")
    return ChatRecord(where, messages, tuple(kinds), tuple(files))


def read_chat_jsonl(path) -> list[ChatRecord]:
    """Parse and validate every line now (bad records fail before any training starts)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file (expected chat-format JSONL, one record per line).")
    root = path.resolve().parent
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8.") from err
    records = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{n}: not valid JSON ({err.msg} at column {err.colno}).") from err
        records.append(parse_record(obj, root, f"{path}:{n}"))
    if not records:
        raise DataError(f"{path} holds no records.")
    return records


# --------------------------------------------------------------------------------------------------------------------
# Encoding: ids + assistant-only labels
# --------------------------------------------------------------------------------------------------------------------


def assistant_mask(ids: list[int], header: list[int], end_id: int) -> list[bool]:
    """True on the tokens of every assistant turn: after ``header`` (``<|im_start|>assistant``) and the newline token
    that follows it, through the turn's ``end_id`` (``<|im_end|>``) inclusive."""
    mask = [False] * len(ids)
    n, i = len(header), 0
    while i < len(ids):
        if ids[i : i + n] != header:
            i += 1
            continue
        j = i + n + 1  # the template writes "assistant\n"; the newline is one token (BPE never merges it left)
        while j < len(ids) and ids[j] != end_id:
            mask[j] = True
            j += 1
        if j < len(ids):
            mask[j] = True  # <|im_end|>: the model learns to stop
        i = j + 1
    return mask


class ChatEncoder:
    """Chat record -> ``input_ids``, ``labels`` (assistant tokens only) and, for media records, the processor's
    media tensors (``pixel_values`` / ``image_grid_thw``, ``input_features`` / ``feature_attention_mask`` ...)."""

    def __init__(self, tokenizer, processor=None, max_length: int = 4096, media_policy=None):
        self.tokenizer = tokenizer
        self.processor = processor
        self.max_length = max_length
        self.media_policy = media_policy
        self.header = [
            tokenizer.convert_tokens_to_ids("<|im_start|>"),
            *tokenizer.encode("assistant", add_special_tokens=False),
        ]
        self.end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def __call__(self, record: ChatRecord) -> dict:
        import torch

        features = {}
        if record.media:
            if self.processor is None:
                raise DataError(
                    f"{record.where}: the record has {'/'.join(sorted(set(record.media)))} parts but "
                    f"the model has no processor for them (a text-only model?)."
                )
            from ..remote.media_qwen3_multimodal import MediaError

            try:
                out = self.processor.apply_chat_template(
                    record.messages,
                    tokenize=True,
                    return_dict=True,
                    return_tensors="pt",
                    media_policy=self.media_policy,
                )
            except MediaError as err:  # a bad media part or inline tag, placeholder counts: the record's fault
                raise DataError(f"{record.where}: {' '.join(str(err).split())}") from err
            ids = out["input_ids"][0].tolist()
            features = {k: v for k, v in out.items() if k in MEDIA_KEYS + AUDIO_KEYS}
        else:
            text = self.tokenizer.apply_chat_template(record.messages, tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False, media_tags=False)["input_ids"]
        if len(ids) > self.max_length:
            raise DataError(
                f"{record.where}: the record is {len(ids)} tokens long, over --max-length "
                f"{self.max_length}; shorten it or raise --max-length (records are never truncated: "
                f"that could cut an answer or a media placeholder apart)."
            )
        mask = assistant_mask(ids, self.header, self.end_id)
        labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), **features}


class ChatDataset:
    """Map-style dataset. Every record is encoded once up front, by the same encoder the data loader uses, so a bad
    record fails before training starts (its media loaded and its inline tags parsed by the processor itself, its
    length checked); text-only encodings are kept, media records are encoded again when the data loader asks for
    them (images and audio are not held in memory)."""

    def __init__(self, records: list[ChatRecord], encoder: ChatEncoder):
        self.records = records
        self.encoder = encoder
        self.cache = {}
        for i, record in enumerate(records):
            encoded = encoder(record)
            if not record.media:
                self.cache[i] = encoded

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        cached = self.cache.get(index)
        return cached if cached is not None else self.encoder(self.records[index])


@dataclass
class ChatCollator:
    """Right-pads ids (pad id) / labels (-100) / attention mask (0), and concatenates media tensors in example order
    (the model fills placeholders in order). Audio features are padded to the longest clip."""

    pad_id: int = PAD_FALLBACK

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        longest = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), longest), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            input_ids[row, :n] = example["input_ids"]
            labels[row, :n] = example["labels"]
            attention_mask[row, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        for key in MEDIA_KEYS:
            parts = [e[key] for e in examples if key in e]
            if parts:
                batch[key] = torch.cat(parts)
        clips = [e for e in examples if "input_features" in e]
        if clips:
            frames = max(e["input_features"].shape[-1] for e in clips)
            pad = [
                torch.nn.functional.pad(e["input_features"], (0, frames - e["input_features"].shape[-1]))
                for e in clips
            ]
            masks = [
                torch.nn.functional.pad(
                    e["feature_attention_mask"], (0, frames - e["feature_attention_mask"].shape[-1])
                )
                for e in clips
            ]
            batch["input_features"] = torch.cat(pad)
            batch["feature_attention_mask"] = torch.cat(masks)
        return batch


def media_policy_for(records: list[ChatRecord]):
    """The media loader may read the files the JSONL names (the user's own data), nothing else."""
    folders = sorted({str(p.parent) for r in records for p in r.files})
    if not folders:
        return None
    from ..remote.media_qwen3_multimodal import MediaPolicy

    return MediaPolicy(allowed_roots=tuple(folders))


# --------------------------------------------------------------------------------------------------------------------
# Model, tokenizer, processor
# --------------------------------------------------------------------------------------------------------------------


def load_tokenizer(folder: Path):
    from ..remote.tokenization_qwen3_multimodal import Qwen3MultimodalTokenizer

    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise FolderError(
            f"{folder} has no tokenizer files; save the model with its tokenizer "
            f"(`transformers-qwen3 init` / `import` do)."
        )
    return Qwen3MultimodalTokenizer.from_pretrained(folder)


def load_processor(folder: Path, config, tokenizer):
    """The folder's processor, or the default one for the model's towers; ``None`` for a text-only model."""
    if config.vision_config is None and config.audio_config is None:
        return None
    try:
        from ..remote.processing_qwen3_multimodal import Qwen3MultimodalProcessor
    except ImportError as err:  # the processor is optional for text-only fine-tuning
        raise DataError(
            f"records with images or audio need Qwen3MultimodalProcessor, which this installation "
            f"lacks ({err}); fine-tune on text-only records or update transformers-qwen3."
        ) from err
    if (folder / "processor_config.json").is_file():
        return Qwen3MultimodalProcessor.from_pretrained(folder)
    from ..checkpoint.hub_folder import default_processor

    return default_processor(config, tokenizer)


def validate_model(folder: Path):
    """MODEL checked as every verb checks a model folder (`validate_folder`), and in our Hub layout; returns the
    opened checkpoint (config and tensor headers, no weights loaded)."""
    from ..formats.folder import validate_folder

    ckpt = validate_folder(folder)
    if ckpt.model_type != "qwen3_multimodal":
        raise FolderError(
            f"{folder / 'config.json'} is a {ckpt.model_type} model, not qwen3_multimodal; bring a native Qwen3 / "
            f"Qwen3-VL checkpoint into our layout first with `transformers-qwen3 import`."
        )
    return ckpt


def load_model(folder: Path, dtype):
    """The model's weights (``run`` has validated the folder with :func:`validate_model`)."""
    from ..remote.modeling_qwen3_multimodal import Qwen3MultimodalForConditionalGeneration

    return Qwen3MultimodalForConditionalGeneration.from_pretrained(folder, dtype=dtype)


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------

LORA_TARGETS = ("attention-qv", "attention")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="model folder in our Hub layout")
    parser.add_argument("data", type=Path, help="chat-format JSONL; media paths relative to its folder")
    parser.add_argument("out", type=Path, help="output: adapter folder (--lora) or Hub-layout folder (--full)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--lora", dest="mode", action="store_const", const="lora", help="train LoRA adapters (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="train every weight")
    parser.set_defaults(mode="lora")

    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    lora.add_argument("--alpha", type=int, default=None, help="LoRA alpha (default 2 x rank)")
    lora.add_argument("--lora-dropout", type=float, default=0.0)
    lora.add_argument(
        "--targets",
        choices=LORA_TARGETS,
        default="attention-qv",
        help="decoder attention projections to adapt: q/v (default) or q/k/v/o",
    )
    lora.add_argument("--lora-mlp", action="store_true", help="also adapt the decoder MLPs (gate/up/down)")
    lora.add_argument("--lora-vision", action="store_true", help="also adapt the vision tower blocks")
    lora.add_argument("--lora-audio", action="store_true", help="also adapt the audio tower layers")
    lora.add_argument(
        "--lora-projectors",
        action="store_true",
        help="also adapt the vision merger(s) and the audio output projection",
    )
    lora.add_argument(
        "--merge",
        nargs="?",
        const=True,
        default=None,
        metavar="DIR",
        help="also write the merged model in our Hub layout (default DIR: OUT-merged)",
    )

    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=float, default=1.0, help="passes over the data (default 1)")
    train.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    train.add_argument("--lr", type=float, default=None, help="learning rate (default 2e-4 LoRA, 2e-5 full)")
    train.add_argument("--lr-scheduler", choices=("linear", "cosine", "constant"), default="linear")
    train.add_argument("--warmup-steps", type=float, default=0, help="steps (>= 1) or a fraction of all steps")
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--batch-size", type=int, default=4, help="records per device per step (default 4)")
    train.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    train.add_argument("--max-length", type=int, default=4096, help="longest record in tokens (default 4096)")
    train.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass (less memory, ~30 %% more compute)",
    )
    train.add_argument("--bf16", action="store_true", help="bf16 autocast (GPUs with bf16 support)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")

    ckpt = parser.add_argument_group("checkpoints")
    ckpt.add_argument("--checkpoint-dir", type=Path, default=None, help="default: OUT.checkpoints next to OUT")
    ckpt.add_argument("--save-steps", type=int, default=200, help="write a checkpoint every N steps (default 200)")
    ckpt.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept (default 2)")
    ckpt.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CKPT",
        help="continue from CKPT, or from the latest checkpoint in the checkpoint folder",
    )
    parser.add_argument("--logging-steps", type=int, default=10, help="log the loss every N steps (default 10)")
    parser.add_argument(
        "--force", action="store_true", help="replace existing outputs; without --resume also discards old checkpoints"
    )


def _paths(args):
    out = Path(args.out)
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else out.with_name(out.name + ".checkpoints")
    merge_dir = None
    if args.merge is not None:
        if args.mode != "lora":
            raise FinetuneUsageError("--merge applies to LoRA runs; --full already writes a complete model.")
        merge_dir = out.with_name(out.name + "-merged") if args.merge is True else Path(args.merge)
    return out, ckpt_dir, merge_dir


def _checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _check_outputs(args, out: Path, ckpt_dir: Path, merge_dir: Path | None, sources=()):
    """Fail before any work when an output would be overwritten or the checkpoint to resume is missing."""
    from ..outputs import check_destination

    for path, what in ((out, "OUT"), (merge_dir, "--merge DIR")):
        if path is None:
            continue
        if path.exists() and not args.force:
            raise OutputError(f"{path} ({what}) already exists; choose another path or pass --force.")
        check_destination(path, force=args.force, sources=sources)
    resume = args.resume
    if resume is True:
        found = _checkpoints(ckpt_dir)
        if not found:
            raise FinetuneUsageError(
                f"--resume: no checkpoint-N folder in {ckpt_dir}; give the checkpoint path "
                f"(--resume CKPT) or start without --resume."
            )
        resume = found[-1]
    elif resume is not None:
        resume = Path(resume)
        if not (resume / "trainer_state.json").is_file():
            raise FinetuneUsageError(f"--resume {resume}: not a Trainer checkpoint (no trainer_state.json).")
    elif _checkpoints(ckpt_dir) and not args.force:
        raise OutputError(
            f"{ckpt_dir} holds checkpoints of an earlier run; pass --resume to continue it or "
            f"--force to start over (that deletes them)."
        )
    return resume


def _source_dtype(ckpt):
    """The dtype the weights are stored in (read from the safetensors headers, whatever config.json claims)."""
    from ..formats.folder import SAFETENSORS_DTYPES

    return SAFETENSORS_DTYPES[ckpt.widest_float_dtype()]


def training_arguments(args, ckpt_dir: Path, has_towers: bool):
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps if args.max_steps is not None else -1,
        learning_rate=args.lr if args.lr is not None else (2e-4 if args.mode == "lora" else 2e-5),
        lr_scheduler_type=args.lr_scheduler,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        activation_checkpointing=args.gradient_checkpointing,
        bf16=args.bf16,
        seed=args.seed,
        logging_steps=args.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        dataloader_num_workers=args.workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        # without an accelerator, say so: a process group started by `accelerate launch` / torchrun is then run as
        # CPU DDP (gloo) instead of being ignored
        use_cpu=not torch.accelerator.is_available(),
        remove_unused_columns=False,  # the collator needs every field the encoder returns
        label_names=["labels"],
        report_to="none",
        disable_tqdm=False,  # Trainer's tqdm bar is the progress display
        # full fine-tuning of a model with towers: a batch without images leaves the vision tower without gradients
        ddp_find_unused_parameters=bool(args.mode == "full" and has_towers),
    )


def run(args) -> int:
    out, ckpt_dir, merge_dir = _paths(args)
    model_dir = Path(args.model).resolve()
    # the cheap checks, before torch and transformers load: outputs, the model folder, the data's structure
    resume = _check_outputs(args, out, ckpt_dir, merge_dir, sources=[model_dir])
    ckpt = validate_model(model_dir)
    records = read_chat_jsonl(args.data)
    # Trainer creates its output folder when it is built; a run that fails (or saves no checkpoint) must not leave
    # it behind empty. Checkpoints a failed run did save stay, for --resume.
    ours = not ckpt_dir.exists() or (args.force and resume is None)
    try:
        return _train(args, out, ckpt_dir, merge_dir, resume, model_dir, ckpt, records)
    finally:
        if ours:
            with contextlib.suppress(OSError):  # not empty, or already gone (another DDP process removed it)
                ckpt_dir.rmdir()


def _train(args, out: Path, ckpt_dir: Path, merge_dir: Path | None, resume, model_dir: Path, ckpt, records) -> int:
    import torch
    from transformers import Trainer, set_seed

    from ..checkpoint.hub_folder import save_hub_folder
    from ..outputs import atomic_folder
    from ..remote.configuration_qwen3_multimodal import Qwen3MultimodalConfig
    from .lora import apply_lora, lora_config, merge_to_hub_folder, trainable_parameters

    # TrainingArguments sets up the process group under `accelerate launch` / torchrun (one process otherwise)
    training_args = training_arguments(args, ckpt_dir, ckpt.has_towers)
    state = training_args.distributed_state

    # every record encoded once now, as the data loader will: bad media, tags or lengths fail before training
    tokenizer = load_tokenizer(model_dir)
    config = Qwen3MultimodalConfig.from_pretrained(model_dir)
    processor = load_processor(model_dir, config, tokenizer) if any(r.media for r in records) else None
    encoder = ChatEncoder(tokenizer, processor, max_length=args.max_length, media_policy=media_policy_for(records))
    dataset = ChatDataset(records, encoder)

    if resume is None and state.is_main_process:
        for old in _checkpoints(ckpt_dir):  # --force: an earlier run's checkpoints must not mix with this one's
            shutil.rmtree(old)
    state.wait_for_everyone()

    set_seed(args.seed)  # the LoRA initialisation draws from the global generator
    model = load_model(model_dir, torch.float32)
    source_dtype = _source_dtype(ckpt)
    model.config.use_cache = False  # no KV cache while training; restored before saving
    model.config.text_config.use_cache = False

    lora_settings = None
    if args.mode == "lora":
        lora = lora_config(
            rank=args.rank,
            alpha=args.alpha,
            targets=(args.targets,),
            include_mlp=args.lora_mlp,
            include_vision=args.lora_vision,
            include_audio=args.lora_audio,
            include_projectors=args.lora_projectors,
            dropout=args.lora_dropout,
        )
        model = apply_lora(model, lora)
        lora_settings = {"rank": lora.r, "alpha": lora.lora_alpha, "target_modules": lora.target_modules}
    report = trainable_parameters(model)
    if state.is_main_process:
        print(f"{args.mode}: {report}", file=sys.stderr)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else PAD_FALLBACK
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=ChatCollator(pad_id))
    start_step = 0
    if resume is not None:
        start_step = json.loads((Path(resume) / "trainer_state.json").read_text()).get("global_step", 0)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    wall = time.perf_counter() - started

    if trainer.is_world_process_zero():
        trained = trainer.accelerator.unwrap_model(trainer.model)
        summary = {
            "mode": args.mode,
            "model": str(model_dir),
            "data": str(Path(args.data).resolve()),
            "records": len(records),
            "trainable_parameters": report.trainable,
            "total_parameters": report.total,
            "trainable_fraction": report.fraction,
            "lora": lora_settings,
            "resumed_from": str(resume) if resume is not None else None,
            "start_step": start_step,
            "global_step": trainer.state.global_step,
            "epochs": trainer.state.epoch,
            "train_loss": result.training_loss,
            "wall_seconds": wall,
            "world_size": state.num_processes,
            "log_history": trainer.state.log_history,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "run"},
        }
        base = trained.get_base_model() if args.mode == "lora" else trained
        base.config.use_cache = True
        base.config.text_config.use_cache = True
        # the merged folder is written inside OUT's temporary one: if merging fails, neither is published
        with atomic_folder(out, force=args.force, sources=[model_dir]) as tmp:
            if args.mode == "lora":
                trained.save_pretrained(tmp)
            else:
                processor = processor or load_processor(model_dir, base.config, tokenizer)
                base.to(source_dtype)
                base.config.dtype = source_dtype
                save_hub_folder(base, tokenizer, tmp, force=True, processor=processor)
            (tmp / "finetune.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
            if merge_dir is not None:
                processor = processor or load_processor(model_dir, base.config, tokenizer)
                merge_to_hub_folder(
                    trained, tokenizer, merge_dir, processor=processor, dtype=source_dtype, force=args.force
                )
        print(f"wrote {out} ({args.mode}, {trainer.state.global_step} steps)", file=sys.stderr)
        if merge_dir is not None:
            print(f"wrote {merge_dir} (merged)", file=sys.stderr)
    state.wait_for_everyone()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="transformers-qwen3 finetune", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


__all__ = [
    "ChatCollator",
    "ChatDataset",
    "ChatEncoder",
    "ChatRecord",
    "DataError",
    "assistant_mask",
    "parse_record",
    "read_chat_jsonl",
    "run",
    "add_arguments",
]


if __name__ == "__main__":
    sys.exit(main())
