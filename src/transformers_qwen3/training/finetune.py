"""``transformers-qwen3 finetune MODEL DATA.jsonl OUT``: LoRA (default) or full fine-tuning with transformers' Trainer.

The data (chat JSONL, media parts, assistant-only labels) is :mod:`transformers_qwen3.training.data`'s; this module
is the run: the checks before training, the model (with peft's LoRA), the Trainer and the outputs.

Outputs (each written to a temporary folder and renamed into place at the end):

- ``--lora`` (default): OUT is a peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``);
  ``--merge [DIR]`` also writes the merged model in our Hub layout (default ``OUT-merged``).
- ``--full``: OUT is a complete Hub-layout folder (weights, config with auto_map, code files, tokenizer/processor).
- ``OUT/finetune.json``: settings, step counts, trainable parameters and the Trainer's log.

Checkpoints go to ``OUT.checkpoints/`` (``--checkpoint-dir``) every ``--save-steps``; ``--resume`` continues from the
latest one (transformers' ``get_last_checkpoint``) or from ``--resume CKPT``. Weights train in float32 (``--bf16``
turns on bf16 autocast on GPUs); outputs are written in the dtype the source checkpoint's safetensors store.

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
import shutil
import sys
import time
from pathlib import Path

from ..errors import FolderError, OutputError, UserError
from .data import PAD_FALLBACK, ChatCollator, ChatDataset, ChatEncoder, DataError, media_policy_for, read_chat_jsonl

LORA_TARGETS = ("attention-qv", "attention")


class FinetuneUsageError(UserError, ValueError):
    """Options that do not go together, or a --resume checkpoint that is not one."""


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


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters: peft's count for a LoRA model (the LoRA matrices are in the total, as in its
    ``print_trainable_parameters``), transformers' ``num_parameters`` for a plain one; tied weights count once."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    return model.num_parameters(only_trainable=True), model.num_parameters()


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="model folder in our Hub layout")
    parser.add_argument("data", type=Path, help="chat-format JSONL; media paths relative to its folder")
    parser.add_argument("out", type=Path, help="output: adapter folder (--lora) or Hub-layout folder (--full)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--lora", dest="mode", action="store_const", const="lora", help="train LoRA adapters (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="train every weight")
    parser.set_defaults(mode="lora")
    _add_lora_arguments(parser.add_argument_group("LoRA"))
    _add_training_arguments(parser.add_argument_group("training"))
    _add_checkpoint_arguments(parser.add_argument_group("checkpoints"))
    parser.add_argument("--logging-steps", type=int, default=10, help="log the loss every N steps (default 10)")
    parser.add_argument(
        "--force", action="store_true", help="replace existing outputs; without --resume also discards old checkpoints"
    )


def _add_lora_arguments(lora) -> None:
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


def _add_training_arguments(train) -> None:
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
    train.add_argument(
        "--nested-ffn",
        type=_widths,
        default=None,
        metavar="W1,W2,...",
        help="nested (MatFormer) FFN training: each step runs every decoder FFN at its first W neurons, W drawn "
        "among these widths and the full one (training/nested.py); --full, or LoRA without --lora-mlp",
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")


def _widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        widths = []
    if not widths or min(widths) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give FFN widths as positive integers, e.g. 256,512")
    return widths


def _add_checkpoint_arguments(ckpt) -> None:
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


# --------------------------------------------------------------------------------------------------------------------
# Before training: paths, outputs, checkpoints
# --------------------------------------------------------------------------------------------------------------------


def _paths(args):
    out = Path(args.out)
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else out.with_name(out.name + ".checkpoints")
    merge_dir = None
    if args.merge is not None:
        if args.mode != "lora":
            raise FinetuneUsageError("--merge applies to LoRA runs; --full already writes a complete model.")
        merge_dir = out.with_name(out.name + "-merged") if args.merge is True else Path(args.merge)
    return out, ckpt_dir, merge_dir


def _last_checkpoint(folder: Path) -> Path | None:
    """The Trainer's newest ``checkpoint-N`` in ``folder`` (the one ``--resume`` continues), if any."""
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(folder) if folder.is_dir() else None
    return Path(found) if found else None


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
        resume = _last_checkpoint(ckpt_dir)
        if resume is None:
            raise FinetuneUsageError(
                f"--resume: no checkpoint-N folder in {ckpt_dir}; give the checkpoint path "
                f"(--resume CKPT) or start without --resume."
            )
    elif resume is not None:
        resume = Path(resume)
        if not (resume / "trainer_state.json").is_file():
            raise FinetuneUsageError(f"--resume {resume}: not a Trainer checkpoint (no trainer_state.json).")
    elif _last_checkpoint(ckpt_dir) is not None and not args.force:
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


# --------------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------------


def run(args) -> int:
    out, ckpt_dir, merge_dir = _paths(args)
    if args.nested_ffn and args.mode == "lora" and args.lora_mlp:
        raise FinetuneUsageError("--nested-ffn slices the MLP weights: use --full, or LoRA without --lora-mlp")
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


def _dataset(args, model_dir: Path, records):
    """Tokenizer, processor (only for media records) and the dataset, every record encoded once now, as the data
    loader will: bad media, tags or lengths fail before training."""
    from ..remote.configuration_qwen3_multimodal import Qwen3MultimodalConfig

    tokenizer = load_tokenizer(model_dir)
    config = Qwen3MultimodalConfig.from_pretrained(model_dir)
    processor = load_processor(model_dir, config, tokenizer) if any(r.media for r in records) else None
    encoder = ChatEncoder(tokenizer, processor, max_length=args.max_length, media_policy=media_policy_for(records))
    return tokenizer, processor, ChatDataset(records, encoder)


def _model(args, model_dir: Path):
    """The model to train (LoRA-wrapped unless --full) and the LoRA settings for finetune.json."""
    import torch
    from transformers import set_seed

    from .lora import apply_lora, lora_config

    set_seed(args.seed)  # the LoRA initialisation draws from the global generator
    model = load_model(model_dir, torch.float32)
    model.config.use_cache = False  # no KV cache while training; restored before saving
    model.config.text_config.use_cache = False
    if args.mode != "lora":
        return model, None
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
    return apply_lora(model, lora), {"rank": lora.r, "alpha": lora.lora_alpha, "target_modules": lora.target_modules}


def _train(args, out: Path, ckpt_dir: Path, merge_dir: Path | None, resume, model_dir: Path, ckpt, records) -> int:
    from transformers import Trainer, TrainerState

    # TrainingArguments sets up the process group under `accelerate launch` / torchrun (one process otherwise)
    training_args = training_arguments(args, ckpt_dir, ckpt.has_towers)
    state = training_args.distributed_state
    tokenizer, processor, dataset = _dataset(args, model_dir, records)
    if resume is None and state.is_main_process and ckpt_dir.is_dir():
        from transformers.trainer_utils import sort_checkpoints

        for old in sort_checkpoints(ckpt_dir):  # --force: an earlier run's checkpoints must not mix with this one's
            shutil.rmtree(old)
    state.wait_for_everyone()

    model, lora_settings = _model(args, model_dir)
    callbacks, nested = [], None
    if args.nested_ffn:
        from .nested import NestedFFN, NestedFFNCallback

        nested = NestedFFN(model, args.nested_ffn, seed=args.seed)
        callbacks.append(NestedFFNCallback(nested))
    trainable, total = parameter_counts(model)
    if state.is_main_process:
        print(
            f"{args.mode}: trainable params: {trainable:,} of {total:,} ({100 * trainable / total:.3f} %)",
            file=sys.stderr,
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else PAD_FALLBACK
    collator = ChatCollator(pad_id, padding_side=tokenizer.padding_side)
    trainer = Trainer(
        model=model, args=training_args, train_dataset=dataset, data_collator=collator, callbacks=callbacks
    )
    start_step = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json")).global_step if resume else 0
    started = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    finally:
        if nested is not None:
            nested.close()  # the saved model runs at full width, as any checkpoint
    summary = {
        "mode": args.mode,
        "model": str(model_dir),
        "data": str(Path(args.data).resolve()),
        "records": len(records),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_fraction": trainable / total,
        "lora": lora_settings,
        "nested_ffn": {"widths": nested.widths, "steps_per_width": nested.draws} if nested is not None else None,
        "resumed_from": str(resume) if resume is not None else None,
        "start_step": start_step,
        "global_step": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "train_loss": result.training_loss,
        "wall_seconds": time.perf_counter() - started,
        "world_size": state.num_processes,
        "log_history": trainer.state.log_history,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "run"},
    }
    if trainer.is_world_process_zero():
        trained = trainer.accelerator.unwrap_model(trainer.model)
        _save(args, trained, tokenizer, processor, summary, out, merge_dir, model_dir, _source_dtype(ckpt))
    state.wait_for_everyone()
    return 0


def _save(args, trained, tokenizer, processor, summary: dict, out: Path, merge_dir, model_dir: Path, dtype) -> None:
    """OUT (adapter folder, or the full model in our Hub layout) with finetune.json, and the merged model."""
    from ..checkpoint.hub_folder import save_hub_folder
    from ..outputs import atomic_folder
    from .lora import merge_to_hub_folder

    base = trained.get_base_model() if args.mode == "lora" else trained
    base.config.use_cache = True
    base.config.text_config.use_cache = True
    # the merged folder is written inside OUT's temporary one: if merging fails, neither is published
    with atomic_folder(out, force=args.force, sources=[model_dir]) as tmp:
        if args.mode == "lora":
            trained.save_pretrained(tmp)
        else:
            processor = processor or load_processor(model_dir, base.config, tokenizer)
            base.to(dtype)
            base.config.dtype = dtype
            save_hub_folder(base, tokenizer, tmp, force=True, processor=processor)
        (tmp / "finetune.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        if merge_dir is not None:
            processor = processor or load_processor(model_dir, base.config, tokenizer)
            merge_to_hub_folder(trained, tokenizer, merge_dir, processor=processor, dtype=dtype, force=args.force)
    print(f"wrote {out} ({args.mode}, {summary['global_step']} steps)", file=sys.stderr)
    if merge_dir is not None:
        print(f"wrote {merge_dir} (merged)", file=sys.stderr)


__all__ = [
    "DataError",
    "FinetuneUsageError",
    "add_arguments",
    "load_model",
    "load_processor",
    "load_tokenizer",
    "parameter_counts",
    "run",
    "validate_model",
]
