"""llama.cpp decode speed: our f16 / q8_0 / q4_k_m GGUFs vs llama.cpp's own converter's, and vs the bandwidth bound.

One randomly initialised checkpoint (default: the 0.6b shape, bf16, the native Qwen3ForCausalLM folder of
bench_convert.py) is converted by `transformers-qwen3 convert` and by the sdist's convert_hf_to_gguf.py (K-quants:
upstream writes the checkpoint's own precision, bf16 here, as ours does internally, and llama.cpp's quantizer makes
the K-quant from that file). The two files of each type are first compared tensor by tensor: equal speed is expected only because the
bytes are the same. Decode is then timed as llama-bench's tg test does it: after a short prompt, `--tokens`
single-token `llama_decode` calls with fixed token ids (no sampling), on `--threads` threads; the two files are
timed alternately (ours, upstream, upstream, ours, ...), median of `--repeat`. Each run loads its file afresh (and
warms it up with 8 untimed tokens) and frees it afterwards: with both models resident, whichever was loaded first
decoded ~5 % slower (an A/A check, the same f16 file twice: 11.0 vs 11.6 tok/s), which would bias the comparison.

Weights are read into memory (`use_mmap=False`), not mapped: this VM runs a DAMON "pageout" scheme that drops
file pages left idle for a while, so the mapped model waiting for its turn was partly re-read from disk
(decode fell to a fraction of a token per second).

The bound: this CPU's sustained read bandwidth, measured in a child process (so torch's thread pool never competes
with llama.cpp's) as the best of 7 `torch.sum` passes over a 1 GiB float32 array (32x the L3) on `--threads`
threads, once after every repeat, so that it sees the same machine load as the decode; bound = the type's median
bandwidth / bytes read per generated token, where the bytes are every tensor in the GGUF (token_embd in full when
the output projection is tied to it, one row otherwise) plus the f16 KV cache read at the mean context length of
the timed tokens.

    nice -n 10 .venv/bin/python bench/bench_decode.py [--preset 0.6b] [--types f16 q8_0 q4_k_m] [--tokens 64]
        [--repeat 5] [--threads 2] [--workdir DIR] [--json out.json]

About 10 minutes on this 2-core VM, two thirds of it converting; with `--workdir` the checkpoint and the GGUFs are
kept and reused by the next run (delete them after changing a converter).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

# the same 0.6b native checkpoint as the convert bench (bench/ is on sys.path: it is the running script's folder)
from bench_convert import make_checkpoint
from transformers_qwen3.convert.converter import OUTTYPES

from transformers_qwen3.runtime.llama_cpp import llama_cpp_module, load_llama
from transformers_qwen3.runtime.upstream import gguf_contents, run_upstream, tensor_differences

GIB = 2**30
MIB = 2**20


# --- memory bandwidth -------------------------------------------------------------------------------------------
def read_bandwidth(threads: int, gib: float = 1.0, passes: int = 7) -> float:
    """Best of `passes` timed `torch.sum` reads of a `gib`-GiB float32 array on `threads` threads, in bytes/s."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(int(gib * GIB) // 4)  # ones(), not empty(): every page is touched before timing
    x.sum()
    best = float("inf")
    for _ in range(passes):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.nbytes / best


# --- files --------------------------------------------------------------------------------------------------------
def ours_file(src: Path, out: Path, outtype: str) -> Path:
    from transformers_qwen3.convert import convert_checkpoint

    path = out / f"{src.name}-{outtype.upper()}.gguf"
    if not path.is_file():
        convert_checkpoint(src, out, outtype, progress=False, force=True)
    return path


def upstream_file(work: Path, src: Path, out: Path, outtype: str) -> Path:
    """convert_hf_to_gguf.py's file; K-quants: its lossless file, then llama.cpp's quantizer."""
    from transformers_qwen3.convert.quantize import LLAMA_FTYPES, llama_quantize

    from transformers_qwen3.formats.folder import open_checkpoint

    path = out / f"upstream-{outtype.upper()}.gguf"
    if path.is_file():
        return path
    partial = out / f"{path.name}.partial"
    if outtype in LLAMA_FTYPES:
        # the checkpoint's own precision (bf16 for 0.6b), as ours uses: an f16 step would round differently
        lossless_type = open_checkpoint(src).widest_float_dtype().lower()
        lossless = run_upstream(work, src, out / f"upstream-{lossless_type.upper()}.gguf.partial", lossless_type)
        llama_quantize(lossless, partial, outtype)
        lossless.unlink()
    else:
        run_upstream(work, src, partial, outtype)
    partial.rename(path)
    return path


def bytes_per_token(kv: dict, tensors: dict, mean_ctx: float) -> tuple[float, bool]:
    """(bytes read per generated token, whether the output projection is tied to token_embd) from `gguf_contents`'s
    metadata and tensors: see the module docstring."""
    tied = "output.weight" not in tensors
    total = 0.0
    for name, (_, shape, data) in tensors.items():
        # ggml shape is [row width, rows]: an untied token_embd is only gathered (one row per token)
        total += len(data) if (name != "token_embd.weight" or tied) else len(data) / shape[1]
    arch = kv["general.architecture"]
    layers, kv_heads, head_dim = (
        kv[f"{arch}.{k}"] for k in ("block_count", "attention.head_count_kv", "attention.key_length")
    )
    kv_per_position = layers * 2 * kv_heads * head_dim * 2  # K and V, f16
    return total + kv_per_position * mean_ctx, tied


# --- decode -------------------------------------------------------------------------------------------------------
def load(path: Path, n_ctx: int, threads: int):
    # use_mmap=False: anonymous memory (there is no swap) stays resident while the other file is timed
    return load_llama(path, n_ctx, threads, use_mmap=False)


def decode_tokens_per_s(llm, prompt: list[int], gen: list[int]) -> float:
    """Clear the KV cache, decode `prompt` in one batch (untimed), then time one `llama_decode` per token of `gen`."""
    llama_cpp = llama_cpp_module("the decode benchmark")

    ctx = llm.ctx
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    ids = (llama_cpp.llama_token * len(prompt))(*prompt)
    if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(ids, len(prompt))) != 0:
        raise RuntimeError("llama_decode failed on the prompt")
    one = (llama_cpp.llama_token * 1)()
    t = time.perf_counter()
    for token in gen:
        one[0] = token
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1)) != 0:
            raise RuntimeError("llama_decode failed")
        llama_cpp.llama_synchronize(ctx)
    return len(gen) / (time.perf_counter() - t)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="0.6b", help="text preset of transformers-qwen3 init (default 0.6b)")
    parser.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_k_m"], choices=OUTTYPES, metavar="TYPE")
    parser.add_argument("--tokens", type=int, default=64, help="timed single-token decodes per run")
    parser.add_argument("--prompt", type=int, default=16, help="untimed prompt tokens before them")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads and bandwidth threads")
    parser.add_argument("--workdir", type=Path, help="keep checkpoint and GGUFs here, reused (default: temporary)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def log(msg: str) -> None:
    print(f"# [{time.strftime('%H:%M:%S')}] load {os.getloadavg()[0]:.1f}: {msg}", file=sys.stderr)


def prepare_files(work: Path, src: Path, types: list[str], mean_ctx: float) -> dict[str, tuple]:
    """type → (ours, upstream, tensor differences, bytes per token, tied) for each type, files converted once."""
    files = {}
    for outtype in types:
        t = time.perf_counter()
        ours, upstream = ours_file(src, work / "ours", outtype), upstream_file(work, src, work / "upstream", outtype)
        kv, ours_tensors = gguf_contents(ours)
        diffs = tensor_differences(ours_tensors, gguf_contents(upstream)[1])
        files[outtype] = (ours, upstream, diffs, *bytes_per_token(kv, ours_tensors, mean_ctx))
        del ours_tensors
        log(f"{outtype}: both files in {time.perf_counter() - t:.0f} s; tensor differences: {len(diffs)}")
    return files


def time_type(outtype: str, paths: dict[str, Path], child, args, n_ctx: int, prompt: list, gen: list) -> dict:
    """Decode speeds of both files (alternating, each loaded afresh) and a bandwidth reading after each repeat."""
    speeds = {name: [] for name in paths}
    bandwidths, load_avg = [], []
    for r in range(args.repeat):
        for name in paths if r % 2 == 0 else reversed(paths):
            llm = load(paths[name], n_ctx, args.threads)
            decode_tokens_per_s(llm, prompt, gen[:8])  # warm-up: first graph build, repacking
            speeds[name].append(decode_tokens_per_s(llm, prompt, gen))
            llm.close()
            load_avg.append(os.getloadavg()[0])
        bandwidths.append(child.submit(read_bandwidth, args.threads).result())
        got = ", ".join(f"{n} {s[-1]:.2f} tok/s" for n, s in speeds.items())
        log(f"{outtype} repeat {r + 1}: {got}, read bandwidth {bandwidths[-1] / 1e9:.2f} GB/s")
    return {"speeds": speeds, "bandwidths": bandwidths, "load_avg": load_avg}


def row(outtype: str, file_info: tuple, timing: dict) -> dict:
    ours_path, up_path, diffs, per_token, tied = file_info
    speeds, bandwidths, load_avg = timing["speeds"], timing["bandwidths"], timing["load_avg"]
    bandwidth = statistics.median(bandwidths)
    ours_tok_s, up_tok_s = statistics.median(speeds["ours"]), statistics.median(speeds["upstream"])
    return {
        "type": outtype,
        "ours_tok_s": ours_tok_s,
        "upstream_tok_s": up_tok_s,
        "ratio": ours_tok_s / up_tok_s,
        "bytes_per_token": per_token,
        "bandwidth_bytes_s": bandwidth,
        "bound_tok_s": bandwidth / per_token,
        "fraction_of_bound": ours_tok_s * per_token / bandwidth,
        "runs": speeds,
        "bandwidth_runs": bandwidths,
        "tied_embeddings": tied,
        "file_bytes": [ours_path.stat().st_size, up_path.stat().st_size],
        "identical_tensors": not diffs,
        "tensor_differences": diffs[:20],
        "load_avg": [min(load_avg), max(load_avg)],
    }


def print_rows(rows: list[dict], args: argparse.Namespace) -> None:
    print(
        "| file type | ours tok/s | upstream tok/s | ratio ours/upstream | bytes/token (MiB) | bandwidth bound tok/s "
        "| fraction of bound | read GB/s | identical tensors |\n|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['type'].upper()} | {r['ours_tok_s']:.2f} | {r['upstream_tok_s']:.2f} | {r['ratio']:.3f} "
            f"| {r['bytes_per_token'] / MIB:.1f} | {r['bound_tok_s']:.2f} | {r['fraction_of_bound']:.2f} "
            f"| {r['bandwidth_bytes_s'] / 1e9:.1f} | {r['identical_tensors']} |"
        )
    print(
        f"\n{args.preset}, {args.threads} threads: {args.prompt}-token prompt, then {args.tokens} timed single-token "
        f"decodes, median of {args.repeat} (ours/upstream alternating); read bandwidth = median per type of the "
        f"best-of-7 {args.threads}-thread sums of 1 GiB taken after each repeat; load average during decode "
        f"{min(r['load_avg'][0] for r in rows):.1f}-{max(r['load_avg'][1] for r in rows):.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-decode-"))
    (work / "ours").mkdir(parents=True, exist_ok=True)
    (work / "upstream").mkdir(exist_ok=True)
    # fixed, spread-out token ids (llama-bench uses random ones); the same for every file and repeat
    vocab = 151_000
    prompt = [(1000 + 7919 * i) % vocab for i in range(args.prompt)]
    gen = [(5000 + 104_729 * i) % vocab for i in range(args.tokens)]
    n_ctx = args.prompt + args.tokens + 16
    src = make_checkpoint(work / f"qwen3-{args.preset}", args.preset, work)
    files = prepare_files(work, src, args.types, mean_ctx=args.prompt + (args.tokens + 1) / 2)
    system_info = llama_cpp_module("the decode benchmark").llama_print_system_info().decode()
    rows = []
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as child:
        for outtype, info in files.items():
            timing = time_type(outtype, {"ours": info[0], "upstream": info[1]}, child, args, n_ctx, prompt, gen)
            rows.append(row(outtype, info, timing))
    print_rows(rows, args)
    if args.json:
        keys = ("preset", "threads", "tokens", "prompt", "repeat")
        result = {**{k: getattr(args, k) for k in keys}, "system_info": system_info, "rows": rows}
        args.json.write_text(json.dumps(result, indent=2))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
