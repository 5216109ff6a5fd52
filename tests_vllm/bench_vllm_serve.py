"""vLLM's OpenAI server (``transformers-qwen3 serve --engine vllm``) against vLLM in-process (``LLM(...)``) on the demo
model: a bounded load test, and time to first token and decode speed on the same prompts as bench/bench_serve.py
(the llama.cpp server's benchmark), whose load test and prompt builders it reuses. Not a test: run it in the vLLM
venv (docs/vllm.md, "Speed")::

    .venv-vllm/bin/python tests_vllm/bench_vllm_serve.py [--clients 16] [--requests 200] [--repeat 3]

Load: ``--clients`` threads with the official ``openai`` client share ``--requests`` chat requests (a held-out image
question, greedy, max_tokens 4) over loopback; errors, throughput, p50/p99 latency.

Speed, per prompt (text, image, audio): the server, streaming, time to the first content chunk and decode tokens/s
over the rest (64 tokens, the end-of-turn tokens suppressed by logit_bias, as the llama.cpp bench asks); then, with
the server stopped, the same chat in-process through ``LLM.chat`` (the same chat template and media decoding path):
TTFT = a 1-token request, decode = 63 / (time of 64 tokens - time of 1). Medians of ``--repeat`` after one warm-up. The server is started and stopped as a user would (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests" / "serving")]

# bench/bench_serve.py's request (server_speed, END_TOKENS): the end-of-turn tokens suppressed, so that every decoded
# token is text (the demo model answers in a word; with ignore_eos alone it would go on with end-of-turn tokens, which
# stream no text)
from bench_serve import END_TOKENS, N_DECODE, server_speed  # noqa: E402

NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}
API_KEY = "bench-key"


def prompts(tmp: Path) -> dict:
    from bench_serve import openai_content

    from transformers_qwen3.demo.run import question_parts, write_questions

    _, records = write_questions(tmp / "q", n_per_kind=1)
    qs = {kind: (tmp / "q" / media, q) for kind, media, q in map(question_parts, records)}
    kinds = {"text": (None, "Count from one to twenty in words."), "image": qs["image"], "audio": qs["audio"]}
    return {kind: openai_content(kind, path, q) for kind, (path, q) in kinds.items()}


def in_process(folder: Path, contents: dict, repeat: int, n_decode: int = N_DECODE) -> dict:
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(
        model=str(folder),
        dtype="float32",
        max_model_len=4096,
        enforce_eager=True,
        skip_mm_profiling=True,
        limit_mm_per_prompt={"image": 2, "audio": 2},
    )
    print(f"in-process engine start: {time.perf_counter() - t0:.0f} s", flush=True)

    def run(content, n):
        params = SamplingParams(
            temperature=0.0, max_tokens=n, ignore_eos=True, logit_bias={int(k): v for k, v in END_TOKENS.items()}
        )
        t = time.perf_counter()
        (out,) = llm.chat(
            [{"role": "user", "content": content}],
            params,
            use_tqdm=False,
            chat_template_kwargs=NO_THINKING["chat_template_kwargs"],
        )
        assert len(out.outputs[0].token_ids) == n
        return time.perf_counter() - t

    rows = {}
    for kind, content in contents.items():
        run(content, 2)  # warm-up
        first = statistics.median(run(content, 1) for _ in range(repeat))
        full = statistics.median(run(content, n_decode) for _ in range(repeat))
        rows[kind] = {"ttft_ms": 1000 * first, "tok_s": (n_decode - 1) / max(full - first, 1e-9)}
        print(f"in-process {kind}: {json.dumps(rows[kind])}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=N_DECODE, help="decode length (default: %(default)s)")
    parser.add_argument("--skip-speed", action="store_true", help="the load test only")
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument(
        "--base-url", default=None, help="a running vLLM server of the demo model instead of starting one"
    )
    parser.add_argument("--model", default=None, help="with --base-url: its model name")
    parser.add_argument("--api-key", default=API_KEY)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from bench_serve import load_test
    from engines import start_vllm, stop_vllm, wait_vllm
    from openai import OpenAI

    from transformers_qwen3.demo.model import demo_checkpoint
    from transformers_qwen3.serve.rpc import free_port

    folder = demo_checkpoint()
    name = folder.resolve().name
    tmp = Path(tempfile.mkdtemp(prefix="bench-vllm-serve-"))
    contents = prompts(tmp)
    port, proc, log = free_port(), None, tmp / "serve.log"
    result = {"uptime_start": os.getloadavg()}
    if args.base_url:
        base_url, name = args.base_url, args.model or name
    else:
        proc = start_vllm(folder, port, args.api_key, 4096, log, os.setsid)
        base_url = f"http://127.0.0.1:{port}/v1"
    try:
        if proc is not None:
            result["server_start_s"] = wait_vllm(proc, port, name, log)
            print(f"server ready in {result['server_start_s']:.0f} s (load {os.getloadavg()})", flush=True)
        factory = lambda: OpenAI(base_url=base_url, api_key=args.api_key, max_retries=0, timeout=900)  # noqa: E731
        client = factory()
        messages = [{"role": "user", "content": contents["image"]}]
        result["load"] = load_test(factory, name, messages, args.clients, args.requests)
        result["uptime_load"] = os.getloadavg()
        print(f"load: {json.dumps(result['load'])} (load average {os.getloadavg()})", flush=True)
        speed = {}
        for kind, content in {} if args.skip_speed else contents.items():
            runs = [server_speed(client, name, content, args.tokens) for _ in range(args.repeat + 1)][1:]
            speed[kind] = {
                "ttft_ms": 1000 * statistics.median(r[0] for r in runs),
                "tok_s": statistics.median(r[1] for r in runs),
            }
            print(f"server {kind}: {json.dumps(speed[kind])}", flush=True)
        result["server"] = speed
        result["uptime_speed"] = os.getloadavg()
    finally:
        if proc is not None:
            stop_vllm(proc, port, log)
    if not args.skip_in_process:
        result["in_process"] = in_process(folder, contents, args.repeat, args.tokens)
        result["uptime_in_process"] = os.getloadavg()
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 1 if result["load"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
