"""Time to first token and decoding speed of vLLM (our plugin) against transformers in-process, on the demo model,
on the CPU (docs/vllm.md, "Speed"). Not a test: run it in the vLLM venv on an idle machine::

    .venv-vllm/bin/python tests_vllm/bench_vllm.py [--repeats 3] [--tokens 32]

Each prompt (text, image, audio, image + audio: the demo's own synthetic media) is run with 1 new token (the time to
first token: media encoding + prefill + one step) and with N new tokens, end of turn ignored; decoding speed is
(N - 1) / (time(N) - time(1)). Medians of the repeats; one request at a time, float32, both engines in this
process (vLLM with VLLM_ENABLE_V1_MULTIPROCESSING=0, as the tests run it).
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from test_vllm_parity import KINDS, SAMPLE_RATE, Oracle, demo_media, engine  # noqa: E402


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()

    from vllm import SamplingParams

    from transformers_qwen3.demo.model import demo_checkpoint

    folder = demo_checkpoint()
    oracle = Oracle(folder)
    start = time.perf_counter()
    llm = engine(folder)
    print(f"vLLM engine start: {time.perf_counter() - start:.1f} s", flush=True)
    image, clip = demo_media()

    def run_vllm(kind, n):
        data = {k: v for k, v in (("image", image), ("audio", (clip, SAMPLE_RATE))) if k in kind}
        prompt = oracle.prompt(kind)
        request = {"prompt": prompt, "multi_modal_data": data} if data else {"prompt": prompt}
        params = SamplingParams(temperature=0.0, max_tokens=n, min_tokens=n, ignore_eos=True)
        (out,) = llm.generate(request, params, use_tqdm=False)
        assert len(out.outputs[0].token_ids) == n

    def run_hf(kind, n):
        inputs = oracle.processor(
            text=oracle.prompt(kind),
            images=[image] if "image" in kind else None,
            audio=[clip] if "audio" in kind else None,
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
        )
        with torch.no_grad():
            out = oracle.model.generate(**inputs, do_sample=False, max_new_tokens=n, min_new_tokens=n)
        assert out.shape[1] - inputs["input_ids"].shape[1] == n

    print(f"torch threads: {torch.get_num_threads()}; {args.tokens} new tokens; median of {args.repeats}")
    print("| prompt | engine | prompt tokens | TTFT (ms) | decode (tokens/s) |")
    print("| --- | --- | --- | --- | --- |")
    for kind in KINDS:
        n_prompt = len(oracle.generate(kind, image, clip)[0])
        for name, run in (("vLLM", run_vllm), ("transformers", run_hf)):
            run(kind, 2)  # warm-up
            first = timed(lambda run=run, kind=kind: run(kind, 1), args.repeats)
            full = timed(lambda run=run, kind=kind: run(kind, args.tokens), args.repeats)
            speed = (args.tokens - 1) / max(full - first, 1e-9)
            print(f"| {kind} | {name} | {n_prompt} | {first * 1000:.0f} | {speed:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
