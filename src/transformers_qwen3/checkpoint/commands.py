"""The checkpoint verbs of the CLI: ``init`` and ``import``."""

from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _tokenizer():
    from .tokenizer import build_qwen3_tokenizer

    return build_qwen3_tokenizer()


class Init:
    @staticmethod
    def add_arguments(parser):
        from .presets import PRESETS

        parser.add_argument("dst", type=Path, help="folder to create")
        parser.add_argument("--preset", required=True, choices=list(PRESETS), help="model shape")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--dtype", choices=list(DTYPES), help="default: float32 for tiny presets, else bfloat16")
        parser.add_argument("--force", action="store_true", help="replace DST if it exists")

    @staticmethod
    def run(args):
        from .build import init_checkpoint

        dtype = DTYPES[args.dtype] if args.dtype else None
        init_checkpoint(args.dst, args.preset, seed=args.seed, dtype=dtype, tokenizer=_tokenizer(), force=args.force)
        print(f"wrote {args.dst} (preset {args.preset}, seed {args.seed})")
        return 0


class Import:
    @staticmethod
    def add_arguments(parser):
        parser.add_argument("src", type=Path, help="native Qwen3 or Qwen3-VL checkpoint folder")
        parser.add_argument("dst", type=Path, help="folder to create in our Hub layout")
        parser.add_argument(
            "--audio-from",
            type=Path,
            metavar="OMNI_SRC",
            help="take the audio tower from this native Qwen3-Omni checkpoint",
        )
        parser.add_argument("--base-model", metavar="HUB_ID", help="the Hub id SRC came from (for the model card)")
        parser.add_argument("--force", action="store_true", help="replace DST if it exists")

    @staticmethod
    def run(args):
        from .build import import_checkpoint

        import_checkpoint(
            args.src,
            args.dst,
            tokenizer=_tokenizer(),
            force=args.force,
            audio_from=args.audio_from,
            base_model=args.base_model,
        )
        print(f"imported {args.src} -> {args.dst}")
        return 0
