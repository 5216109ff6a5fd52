"""``transformers-qwen3 serve MODEL``: an OpenAI-compatible server for a model folder, on an existing engine.

Engines:

- ``llama.cpp`` (default): llama-cpp-python's server with our chat handler (text, ``image_url``, ``input_audio``),
  :mod:`transformers_qwen3.serve.llama_cpp_server`. MODEL is a Hub-layout folder (converted to GGUF on first use and
  cached, :mod:`~transformers_qwen3.serve.model_files`) or a folder with one text GGUF and one mmproj.
- ``llama.cpp`` with ``--rpc HOST:PORT,...``: llama.cpp's own ``llama-server`` with the layers on rpc-servers
  (:mod:`~transformers_qwen3.serve.rpc`).
- ``vllm``: vLLM's OpenAI server on the Hub-layout folder (our vLLM plugin registers the architecture), started from
  the interpreter that has vLLM (``--vllm-python``, this one, or a checkout's ``.venv-vllm``):
  :mod:`~transformers_qwen3.serve.vllm_engine`.

The API's model name is the folder's name. The server binds 127.0.0.1 unless ``--host`` says otherwise, prints its
URL, and stops on Ctrl-C.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from ..errors import FolderError, MissingDependencyError

ENGINES = ("llama.cpp", "vllm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="a Hub-layout model folder, or a folder with a GGUF and its mmproj")
    parser.add_argument("--engine", choices=ENGINES, default="llama.cpp", help="default: %(default)s")
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s (loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request")
    parser.add_argument("--ctx-size", type=int, default=4096, help="context length in tokens (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: half the cores)")
    parser.add_argument(
        "--outtype", default="f16", help="GGUF type when a Hub folder is converted (default: %(default)s)"
    )
    parser.add_argument(
        "--budget",
        default=None,
        help="llama.cpp engine: memory for weights + mmproj + KV cache ('auto' or a size such as 4GB); serves the "
        "largest GGUF variant in the folder that fits (as `run --budget`)",
    )
    parser.add_argument(
        "--rpc",
        default=None,
        metavar="HOST:PORT,...",
        help="llama.cpp engine only: serve with llama.cpp's llama-server, the layers on these rpc-servers "
        "(no authentication: loopback or a private network only; docs/serving.md)",
    )
    parser.add_argument(
        "--vllm-python",
        default=None,
        metavar="PATH",
        help="vllm engine: the python that has vLLM and this package (default: $TRANSFORMERS_QWEN3_VLLM_PYTHON, "
        "this interpreter if it has vLLM, else a source checkout's .venv-vllm; docs/vllm.md)",
    )
    parser.add_argument(
        "--vllm-args",
        default=None,
        metavar="ARGS",
        help="vllm engine: more arguments for vLLM's server, last (so they override ours), "
        "e.g. '--tensor-parallel-size 4'",
    )


def run(args: argparse.Namespace) -> int:
    name = args.model.resolve().name
    if args.engine == "vllm":
        if args.budget is not None:
            raise FolderError(
                "--budget chooses among GGUF files: the llama.cpp engine only (vLLM sizes its own cache)"
            )
        from .vllm_engine import serve

        return serve(args.model, name, args)
    from .model_files import resolve

    gguf, mmproj = resolve(args.model, args.outtype, args.budget, args.ctx_size, log=print)
    if args.rpc:
        from .chat_handler import chat_template_file
        from .rpc import llama_server_command

        cmd = llama_server_command(
            gguf,
            mmproj,
            name,
            host=args.host,
            port=args.port,
            rpc=args.rpc.split(","),
            api_key=args.api_key,
            n_ctx=args.ctx_size,
            threads=args.threads,
            template=chat_template_file(),
        )
        return _run(cmd, args)
    return serve_llama_cpp(gguf, mmproj, name, args)


def serve_llama_cpp(gguf: Path, mmproj: Path | None, name: str, args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .llama_cpp_server import build_app
    except ImportError as e:
        raise MissingDependencyError(
            "the server's packages (fastapi, uvicorn, sse-starlette, starlette-context, pydantic-settings)",
            "pip install 'transformers-qwen3[serve]'",
            "serve",
        ) from e
    app, model = build_app(
        gguf, mmproj, name, api_key=args.api_key, n_ctx=args.ctx_size, n_threads=args.threads, host=args.host
    )
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    server = uvicorn.Server(config)
    print(f"serving {name} ({gguf.name}{' + ' + mmproj.name if mmproj else ''}) with llama-cpp-python", flush=True)
    print(f"OpenAI API: http://{args.host}:{args.port}/v1  (model name: {name}; Ctrl-C stops)", flush=True)
    try:
        server.run()  # uvicorn handles SIGINT/SIGTERM: stops accepting, finishes the requests under way
    except KeyboardInterrupt:  # uvicorn re-raises the signal it caught once it has shut down
        pass
    finally:
        model.close()
    print(f"stopped serving {name}", flush=True)
    return 0


def _run(cmd: list[str], args: argparse.Namespace) -> int:
    """Run an engine's own server in the foreground; Ctrl-C reaches it (same process group) and we wait for it."""
    print(f"OpenAI API: http://{args.host}:{args.port}/v1  (Ctrl-C stops)\n$ {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
