"""The ``generate`` verb: one prompt through transformers' ``generate`` with the folder's tokenizer and model."""

import sys
from pathlib import Path

import torch


class Generate:
    @staticmethod
    def add_arguments(parser):
        parser.add_argument("model", type=Path, help="model folder (our Hub layout)")
        parser.add_argument("--prompt", required=True, help="user message")
        parser.add_argument("--max-new-tokens", type=int, default=64)
        parser.add_argument("--raw", action="store_true", help="tokenize the prompt as is, without the chat template")
        parser.add_argument("--thinking", action="store_true", help="let the model think first (enable_thinking)")
        parser.add_argument(
            "--no-media-tags",
            action="store_true",
            help="keep <image>/<img>/<audio>/<video> tags in the prompt as plain text (e.g. a question about HTML)",
        )
        parser.add_argument(
            "--trust-remote-code",
            action="store_true",
            help="run MODEL's own code files instead of the installed package's (only for folders you trust)",
        )

    @staticmethod
    def run(args):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..checkpoint.hub_folder import code_differences
        from ..formats.folder import validate_folder

        validate_folder(args.model)  # one clear error for a broken folder, before transformers reads it
        # Without --trust-remote-code the installed classes (registered by importing this package) load the folder:
        # its code files never run, and so neither do their media rules for --prompt's tags.
        differing = code_differences(args.model)
        if differing and not args.trust_remote_code:
            print(
                f"note: {args.model}'s {', '.join(differing)} differ from the installed transformers-qwen3; running "
                "the installed code (--trust-remote-code runs the folder's own)",
                file=sys.stderr,
            )
        trust = args.trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=trust)
        if args.no_media_tags:
            tokenizer.media_tags = False  # the tokenizer's switch; its chat template path reads it too
        if args.raw:
            inputs = tokenizer(args.prompt, return_tensors="pt")
        else:
            messages = [{"role": "user", "content": args.prompt}]
            inputs = tokenizer.apply_chat_template(
                messages,
                add_generation_prompt=True,
                enable_thinking=args.thinking,
                return_tensors="pt",
                return_dict=True,
            )
        # the prompt (and its media) is checked before the weights are loaded
        model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=trust).eval()
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        print(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
        return 0
