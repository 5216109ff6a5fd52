"""Prefill and decode speed of our model vs transformers' native Qwen3ForCausalLM on the same 0.6b-shape weights.

CPU, batch 1, 128-token prompt, 64 new tokens (greedy), fp32 and bf16. Both models run in the same process,
interleaved round by round, and the result is a ratio (ours / native), so machine noise hits both alike.

    .venv/bin/python bench/bench_text.py [--rounds 3] [--threads 2] [--out docs/benchmarks.md]
"""

import argparse
import statistics
import time

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from transformers_qwen3 import Qwen3MultimodalConfig, Qwen3MultimodalForConditionalGeneration
from transformers_qwen3.checkpoint.presets import text_config


def build(dtype):
    torch.manual_seed(0)
    native_config = Qwen3Config(**text_config("0.6b"))
    native = Qwen3ForCausalLM(native_config).to(dtype).eval()
    ours = Qwen3MultimodalForConditionalGeneration(Qwen3MultimodalConfig(text_config=native_config.to_dict()))
    ours = ours.to(dtype).eval()
    ours.load_state_dict(native.state_dict())
    return native, ours


def measure(model, ids, new_tokens):
    with torch.no_grad():
        t0 = time.perf_counter()
        model(ids, use_cache=True)
        prefill = ids.shape[1] / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        total = time.perf_counter() - t0
    # generate() = one prefill + (new_tokens - 1) decode steps; subtract the prefill we just timed
    decode = (new_tokens - 1) / max(total - ids.shape[1] / prefill, 1e-9)
    return prefill, decode, out


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ids = torch.randint(0, 151936, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        native, ours = build(dtype)
        results = {"native": [], "ours": []}
        outputs = {}
        for _ in range(args.rounds):
            for name, model in (("native", native), ("ours", ours)):
                prefill, decode, outputs[name] = measure(model, ids, args.new)
                results[name].append((prefill, decode))
                print(f"# {dtype} {name}: prefill {prefill:.1f} tok/s, decode {decode:.2f} tok/s", flush=True)
        same = torch.equal(outputs["native"], outputs["ours"])
        med = {k: (statistics.median(p for p, _ in v), statistics.median(d for _, d in v)) for k, v in results.items()}
        rows.append((str(dtype).removeprefix("torch."), med, same))
        del native, ours
    print(
        "| dtype | native prefill tok/s | ours prefill tok/s | prefill ratio | native decode tok/s | "
        "ours decode tok/s | decode ratio | same tokens |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for dtype, med, same in rows:
        (np_, nd), (op, od) = med["native"], med["ours"]
        print(f"| {dtype} | {np_:.1f} | {op:.1f} | {op / np_:.3f} | {nd:.2f} | {od:.2f} | {od / nd:.3f} | {same} |")


if __name__ == "__main__":
    main()
