"""The ``transformers-qwen3`` command line: one verb per job, each in the module that does the work.

Verbs live in a table (name -> module with ``add_arguments(parser)`` and ``run(args) -> int``) and their modules
are imported only when that verb runs, so ``transformers-qwen3 --help`` stays fast.
"""

import argparse
import importlib
import sys

from .errors import UserError

VERBS = {
    "init": (
        "transformers_qwen3.checkpoint.commands:Init",
        "write a randomly initialised checkpoint of a preset shape",
    ),
    "import": (
        "transformers_qwen3.checkpoint.commands:Import",
        "import a native Qwen3 checkpoint into our Hub layout",
    ),
    "generate": ("transformers_qwen3.inference.generate:Generate", "generate text from a prompt"),
    "convert": ("transformers_qwen3.convert.cli", "convert a checkpoint to GGUF (text model + mmproj)"),
    "verify": ("transformers_qwen3.runtime.verify", "compare a GGUF in llama.cpp with transformers"),
    "finetune": ("transformers_qwen3.training.finetune", "LoRA or full fine-tuning on a chat JSONL file"),
    "lora-info": (
        "transformers_qwen3.training.lora:LoraInfo",
        "trainable parameters of a LoRA setting on a preset shape",
    ),
    "export": ("transformers_qwen3.export.publish", "write a Hub-ready repository (card, licence, GGUF)"),
    "demo": ("transformers_qwen3.demo.cli", "the demo model: run, build, eval, train, retrain, synthetic data"),
    "serve": ("transformers_qwen3.serve.cli", "an OpenAI-compatible server for a model: llama.cpp, RPC or vLLM"),
    "run": ("transformers_qwen3.serve.run", "one answer from llama.cpp; --budget runs the GGUF variant that fits"),
    "hw": ("transformers_qwen3.compress.hardware", "memory, accelerators, CPU ISA and the auto budget"),
    "calibrate": ("transformers_qwen3.compress.calibrate", "measure a model's sensitivities for compression planning"),
    "plan": ("transformers_qwen3.compress.plan", "fit a model to a byte budget: per-tensor types, FFN widths, depth"),
}


def _verb(name):
    """The object (module or class) with ``add_arguments`` and ``run`` for verb ``name``."""
    module_name, _, attr = VERBS[name][0].partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="transformers-qwen3", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    # Only the chosen verb's module is imported; the others just get a help line.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (_, help_text) in VERBS.items():
        sub = subparsers.add_parser(name, help=help_text)
        if name == chosen:
            try:
                verb = _verb(name)
            except ModuleNotFoundError as err:
                parser.error(f"the '{name}' verb is not available in this installation ({err}).")
            verb.add_arguments(sub)
            sub.set_defaults(run=verb.run)
    args = parser.parse_args(argv)
    # Bad input is reported as one line; anything else is a bug and keeps its traceback.
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        # the writers' context managers have already removed their temporary outputs on the way up
        print(f"transformers-qwen3 {args.verb}: interrupted (unfinished outputs were removed)", file=sys.stderr)
        return 130
    except UserError as err:
        return _one_line(args.verb, err)
    except ValueError as err:
        if not _is_media_error(err):
            raise
        return _one_line(args.verb, err)


def _one_line(verb: str, err: Exception) -> int:
    message = " ".join(str(err).split())
    print(f"transformers-qwen3 {verb}: error: {message}", file=sys.stderr)
    return 2


def _is_media_error(err: Exception) -> bool:
    """The Hub code's MediaError cannot derive from UserError (Hub files import only transformers); its class matches
    every remote-code copy of itself, so one isinstance check covers a folder's copy too."""
    from .remote.media_qwen3_multimodal import MediaError

    return isinstance(err, MediaError)


if __name__ == "__main__":
    sys.exit(main())
