"""Serving on the demo model (F16 GGUF + mmproj): a bounded load test, and time to first token and decode speed of
the server against the in-process llama.cpp runtime on the same prompts.

    .venv/bin/python bench/bench_serve.py [--threads 2] [--clients 16] [--requests 200]
    .venv/bin/python bench/bench_serve.py --base-url http://127.0.0.1:8000/v1 --model NAME   # a running server

Load: ``--clients`` threads with the official ``openai`` client share ``--requests`` chat requests (a held-out
image question, greedy, max_tokens 4) over loopback; errors, throughput and p50/p99 latency. The server decodes one
request at a time (llama-cpp-python serializes them), so latency under load is mostly queueing.

Speed: per prompt (text, image, audio), the median of ``--repeat`` runs of: the server, streaming, time to the
first content chunk and decode tokens/s over the rest (64 tokens, end-of-turn suppressed by logit_bias); and the
same prompt in-process through ``runtime.llama_cpp.LlamaCppModel`` (eval + first argmax; 64 greedy steps). Server
and in-process runs alternate (one of each, ``--repeat`` times), so a shared machine's changing load falls on both;
the load averages are printed and written with the results.
Serving overhead = server TTFT − in-process TTFT (HTTP, JSON, base64, media decoding by PIL/soundfile, template).
Single-process timings on a shared machine: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from transformers_qwen3.remote.tokens_qwen3_multimodal import ENDOFTEXT_ID, IM_END_ID

N_DECODE = 64
# <|im_end|>, <|endoftext|> suppressed: decode N_DECODE tokens, never stop early (JSON keys: strings)
END_TOKENS = {str(IM_END_ID): -100, str(ENDOFTEXT_ID): -100}


def demo_files(tmp: Path):
    from transformers_qwen3.demo.model import cache_root, demo_checkpoint
    from transformers_qwen3.demo.run import gguf_files, question_parts, write_questions

    folder = demo_checkpoint(verbose=True)
    gguf_dir = cache_root() / "demo" / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    text, mmproj = gguf_files(folder, "f16", gguf_dir)
    served = tmp / "qwen3-multimodal-demo"
    served.mkdir()
    (served / text.name).symlink_to(text)
    (served / mmproj.name).symlink_to(mmproj)
    _, records = write_questions(tmp / "q", n_per_kind=1)
    qs = {kind: (tmp / "q" / media, q) for kind, media, q in map(question_parts, records)}
    return text, mmproj, served, qs


def openai_content(kind: str, path: Path | None, question: str) -> list[dict]:
    parts = []
    if kind == "image":
        url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        parts.append({"type": "image_url", "image_url": {"url": url}})
    elif kind == "audio":
        parts.append(
            {
                "type": "input_audio",
                "input_audio": {"data": base64.b64encode(path.read_bytes()).decode(), "format": "wav"},
            }
        )
    return parts + [{"type": "text", "text": question}]


def start_server(served: Path, threads: int, log: Path):
    from transformers_qwen3.serve.rpc import free_port, wait_for_port

    port = free_port()
    cmd = [sys.executable, "-m", "transformers_qwen3.cli", "serve", str(served), "--port", str(port)]
    cmd += ["--threads", str(threads)]
    out = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port("127.0.0.1", port, proc, log, timeout_s=300)
    return proc, f"http://127.0.0.1:{port}/v1"


def load_test(client_factory, model: str, messages, clients: int, requests: int) -> dict:
    latencies, errors, lock, todo = [], [], threading.Lock(), iter(range(requests))

    def loop():
        client = client_factory()
        while True:
            with lock:
                if next(todo, None) is None:
                    return
            t0 = time.perf_counter()
            try:
                client.chat.completions.create(
                    model=model,
                    messages=messages,
                    max_tokens=4,
                    temperature=0,
                    extra_body={"chat_template_kwargs": {"enable_thinking": False}},
                )
                with lock:
                    latencies.append(time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - counted
                with lock:
                    errors.append(repr(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {
        "clients": clients,
        "requests": requests,
        "errors": len(errors),
        "wall_s": wall,
        "req_per_s": len(latencies) / wall,
        "p50_ms": 1000 * q[49],
        "p99_ms": 1000 * q[98],
        "first_error": errors[0] if errors else None,
    }


def server_speed(client, model: str, content, n_decode: int = N_DECODE) -> tuple[float, float]:
    """(TTFT s, decode tokens/s) of one streamed request (any OpenAI-compatible server: tests_vllm uses it too)."""
    t0 = time.perf_counter()
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        max_tokens=n_decode,
        temperature=0,
        stream=True,
        logit_bias=END_TOKENS,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    first, n, last = None, 0, None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            now = time.perf_counter()
            first = first or now
            last = now
            n += 1
    # one chunk per token (llama-cpp-python streams token by token)
    return first - t0, (n - 1) / (last - first) if n > 1 else float("nan")


def in_process_speed(model, tokenizer, kind: str, path, question: str) -> tuple[float, float]:
    messages = [
        {
            "role": "user",
            "content": ([{"type": kind}] if kind != "text" else []) + [{"type": "text", "text": question}],
        }
    ]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False, tokenize=False)
    kinds = [kind] if kind != "text" else []
    prompt = model.media_prompt(prompt, kinds)
    t0 = time.perf_counter()
    bitmaps = [model.file_bitmap(path)] if kind != "text" else []
    model.eval_prompt(prompt, bitmaps)
    int(model.last_logits().argmax())
    ttft = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.greedy(N_DECODE - 1, stop_at_eog=False)
    return ttft, (N_DECODE - 1) / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--base-url", default=None, help="a running server instead of starting one")
    parser.add_argument("--model", default="qwen3-multimodal-demo")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    from openai import OpenAI

    from transformers_qwen3.checkpoint.tokenizer import build_qwen3_tokenizer
    from transformers_qwen3.runtime.llama_cpp import LlamaCppModel
    from transformers_qwen3.serve.rpc import stop

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    text, mmproj, served, qs = demo_files(tmp)
    proc = None
    try:
        if args.base_url:
            base_url = args.base_url
        else:
            proc, base_url = start_server(served, args.threads, tmp / "serve.log")
        factory = lambda: OpenAI(base_url=base_url, api_key=args.api_key, max_retries=0, timeout=600)  # noqa: E731
        image, image_q = qs["image"]
        load = load_test(
            factory,
            args.model,
            [{"role": "user", "content": openai_content("image", image, image_q)}],
            args.clients,
            args.requests,
        )
        load["loadavg"] = os.getloadavg()
        print(f"load: {json.dumps(load)}", flush=True)
        prompts = {"text": (None, "Count from one to twenty in words."), "image": qs["image"], "audio": qs["audio"]}
        client = factory()
        tokenizer = build_qwen3_tokenizer()
        rows, load_avg = {}, {"load": os.getloadavg()}
        # server and in-process runs alternate, so that both see the same load on a shared machine (run one after
        # the other, their ratio measured the load's change: docs/serving.md); the idle side only waits
        with LlamaCppModel(text, mmproj, n_threads=args.threads, n_ctx=4096) as model:
            for kind, (path, q) in prompts.items():
                server, local = [], []
                for _ in range(args.repeat + 1):  # the first of each is a warm-up
                    server.append(server_speed(client, args.model, openai_content(kind, path, q)))
                    local.append(in_process_speed(model, tokenizer, kind, path, q))
                server, local = server[1:], local[1:]
                rows[kind] = {
                    "server_ttft_ms": 1000 * statistics.median(r[0] for r in server),
                    "server_tok_s": statistics.median(r[1] for r in server),
                    "in_process_ttft_ms": 1000 * statistics.median(r[0] for r in local),
                    "in_process_tok_s": statistics.median(r[1] for r in local),
                }
        load_avg["speed"] = os.getloadavg()
        print("\n| prompt | server TTFT ms | in-process TTFT ms | overhead ms | server tok/s | in-process tok/s |")
        print("|---|---:|---:|---:|---:|---:|")
        for kind, r in rows.items():
            print(
                f"| {kind} | {r['server_ttft_ms']:.1f} | {r['in_process_ttft_ms']:.1f} | "
                f"{r['server_ttft_ms'] - r['in_process_ttft_ms']:.1f} | {r['server_tok_s']:.1f} | {r['in_process_tok_s']:.1f} |"
            )
        print(
            f"\nload: {args.clients} clients, {args.requests} requests: {load['errors']} errors, "
            f"{load['req_per_s']:.2f} req/s, p50 {load['p50_ms']:.0f} ms, p99 {load['p99_ms']:.0f} ms "
            f"(wall {load['wall_s']:.1f} s; threads {args.threads})"
        )
        print(
            f"load average (1/5/15 min): before {load_avg['load']}, after the load test {load['loadavg']}, "
            f"after the speed runs {load_avg['speed']}"
        )
        if args.json:
            args.json.write_text(
                json.dumps({"load": load, "speed": rows, "threads": args.threads, "loadavg": load_avg}, indent=1)
            )
        return 1 if load["errors"] else 0
    finally:
        if proc is not None:
            stop(proc)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
