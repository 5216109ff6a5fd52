"""``transformers-qwen3 run MODEL --prompt TEXT [--image F] [--audio F] [--budget auto|SIZE]``: one answer from
llama.cpp, without a server.

MODEL is a Hub-layout folder (converted once and cached, as ``serve`` does) or a folder of GGUF files. With
``--budget`` (``auto``: the free memory ``transformers-qwen3 hw`` reports, minus its reserve) the folder may hold
several variants of one model (F16, Q8_0, a ``convert --plan`` file, ...) and the largest whose weights, mmproj and
KV cache fit runs (``model_files.pick``, the same choice ``serve --budget`` makes). The prompt goes through the
server's chat handler (our chat template; mtmd for the media), at temperature 0: ``run`` answers as ``serve`` does.

The media files are the ones named on the command line: the loader may read those files' folders and nothing else,
with its per-item and per-prompt caps (``MediaPolicy``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import FolderError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="a Hub-layout model folder, or a folder of GGUF files (+ one mmproj)")
    parser.add_argument("--prompt", required=True, help="the user message")
    parser.add_argument(
        "--image", type=Path, action="append", default=[], metavar="FILE", help="an image (repeatable)"
    )
    parser.add_argument("--audio", type=Path, action="append", default=[], metavar="FILE", help="a clip (repeatable)")
    parser.add_argument(
        "--budget",
        default=None,
        help="memory for weights + mmproj + KV cache: 'auto' or a size (4GB, 3.5GiB); runs the largest GGUF "
        "variant in the folder that fits",
    )
    parser.add_argument("--ctx-size", type=int, default=4096, help="context length in tokens (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--thinking", action="store_true", help="let the model think first (enable_thinking)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: half the cores)")
    parser.add_argument(
        "--outtype", default="f16", help="GGUF type when a Hub folder is converted (default: %(default)s)"
    )


def conversation(prompt: str, images: list[Path], audios: list[Path]):
    """The chat of one user turn: the images, then the clips, then the text (the template writes the media blocks
    in this order, and mtmd takes the decoded media in the same order)."""
    import numpy as np

    from ..remote.media_qwen3_multimodal import MediaBudget, MediaPolicy, load_audio, load_image
    from .messages import Conversation

    named = [*images, *audios]
    policy = MediaPolicy(allowed_roots=tuple(sorted({str(p.resolve().parent) for p in named})))
    budget = MediaBudget(policy)
    media = [("image", load_image(str(p), policy, tag="--image", budget=budget)) for p in images]
    for p in audios:
        samples = load_audio(str(p), policy, tag="--audio", budget=budget)
        media.append(("audio", np.ascontiguousarray(samples.numpy(), dtype=np.float32)))
    # the template reads only the parts' types; the media travel decoded, in `media`
    parts = [{"type": "image_url", "image_url": {"url": f"file {p.name}"}} for p in images]
    parts += [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}} for _ in audios]
    parts.append({"type": "text", "text": prompt})
    return Conversation([{"role": "user", "content": parts}], media)


def run(args: argparse.Namespace) -> int:
    from ..runtime.llama_cpp import LlamaCppModel
    from .chat_handler import CURRENT, Qwen3ChatHandler
    from .model_files import resolve

    if args.ctx_size < 32:
        raise FolderError(f"--ctx-size {args.ctx_size}: give at least 32 tokens")
    chat = conversation(args.prompt, args.image, args.audio)  # bad media fail before anything is converted or loaded
    gguf, mmproj = resolve(args.model, args.outtype, args.budget, args.ctx_size, log=_log)
    if chat.media and mmproj is None:
        raise FolderError(f"{args.model} has no mmproj-*.gguf: this model reads text only; drop --image / --audio")
    _log(f"running {gguf.name}{' + ' + mmproj.name if mmproj else ''}")
    with LlamaCppModel(gguf, mmproj, n_threads=args.threads, n_ctx=args.ctx_size) as model:
        model.llm.chat_handler = Qwen3ChatHandler(model)
        # as `generate`: no thinking unless asked (the server leaves it to each request's chat_template_kwargs)
        template_kwargs = {"enable_thinking": args.thinking}
        token = CURRENT.set({"conversation": chat, "template_kwargs": template_kwargs})
        try:
            out = model.llm.create_chat_completion(
                messages=chat.messages, max_tokens=args.max_new_tokens, temperature=0.0
            )
        finally:
            CURRENT.reset(token)
    print(out["choices"][0]["message"]["content"])
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
