"""`transformers-qwen3 convert SRC OUTDIR --outtype …`: the command-line face of `convert_checkpoint`, and of
`convert_lora` when SRC is a peft adapter folder (it holds adapter_config.json)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .converter import OUTTYPES, convert_checkpoint
from .errors import ConversionError
from .lora import convert_lora, is_lora_adapter


def _tensor_type(value: str) -> tuple[str, str]:
    pattern, sep, type_name = value.rpartition("=")
    if not sep or not pattern or not type_name:
        raise argparse.ArgumentTypeError(f"{value!r}: expected REGEX=TYPE, e.g. 'ffn_down=q8_0'")
    return pattern, type_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", type=Path, help="checkpoint folder (ours, Qwen3ForCausalLM or Qwen3-VL), or a peft LoRA adapter folder"
    )
    parser.add_argument(
        "outdir",
        type=Path,
        help="folder for <name>-<TYPE>.gguf and mmproj-<name>-<TYPE>.gguf (adapter: <name>-lora-<TYPE>.gguf)",
    )
    parser.add_argument(
        "--outtype",
        default=None,
        type=str.lower,
        choices=OUTTYPES,
        help="weight type (default f16, with --plan: plan); q6_k/q5_k_m/q4_k_m/q4_0/q3_k_m/q2_k/plan run llama.cpp's quantizer "
        "and write a Q8_0 mmproj",
    )
    parser.add_argument(
        "--plan",
        type=Path,
        metavar="PLAN.json",
        help="a compression plan for SRC (transformers-qwen3 plan): FFN widths, skipped layers and, with --outtype "
        "plan (the default then), each weight's type",
    )
    parser.add_argument(
        "--imatrix",
        type=Path,
        metavar="IMATRIX.gguf",
        help="llama.cpp's imatrix GGUF (calibrate --imatrix, llama-imatrix) for llama.cpp's quantizer",
    )
    parser.add_argument("--name", help="file-name stem (default: SRC's folder name)")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument("--dry-run", action="store_true", help="print every tensor and the totals; write nothing")
    parser.add_argument(
        "--tensor-type",
        action="append",
        type=_tensor_type,
        metavar="REGEX=TYPE",
        help="K-quants/q4_0: give tensors whose name matches REGEX this ggml type (llama-quantize --tensor-type)",
    )
    parser.add_argument(
        "--base",
        type=Path,
        metavar="MODEL_DIR",
        help="when SRC is a LoRA adapter: the model folder it was trained on (default: the adapter's "
        "base_model_name_or_path when that is a local folder); adapters take --outtype f32/f16/bf16/q8_0",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    # our own progress lines (the K-quant type report) on stderr; gguf-py's INFO chatter stays off
    log = logging.getLogger(__package__)
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    # the options both converters take, under the same names
    outtype = args.outtype or ("plan" if args.plan else "f16")
    common = dict(outtype=outtype, name=args.name, force=args.force, dry_run=args.dry_run)
    common["progress"] = not args.no_progress
    if is_lora_adapter(args.src):
        if args.tensor_type or args.plan or args.imatrix:
            raise ConversionError("--tensor-type, --plan and --imatrix apply to model checkpoints, not LoRA adapters")
        paths = convert_lora(args.src, args.outdir, base=args.base, **common)
    elif args.base is not None:
        raise ConversionError(f"--base applies to LoRA adapter folders; {args.src} has no adapter_config.json")
    else:
        tensor_types = dict(args.tensor_type) if args.tensor_type else None
        # its errors are UserErrors: the CLI prints each as one line
        paths = convert_checkpoint(
            args.src, args.outdir, tensor_types=tensor_types, plan=args.plan, imatrix=args.imatrix, **common
        )
    if not args.dry_run:
        for path in paths:
            print(f"wrote {path}")
    return 0
