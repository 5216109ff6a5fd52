"""Conversion wall time and peak memory: `transformers-qwen3 convert` vs llama.cpp's convert_hf_to_gguf.py.

Both convert the same randomly initialised checkpoint (default: the 0.6b shape, bf16, a native Qwen3ForCausalLM
folder that both converters accept) to the same type, each in a fresh process whose peak resident memory is read
from the kernel (`ru_maxrss` of the waited child). The runs alternate and the median of `--repeat` is reported;
the two files are then compared tensor by tensor. Goal (issue 4): ours ≤ 0.8x the time and ≤ 0.5x the peak RSS.

    .venv/bin/python bench/bench_convert.py [--preset 0.6b] [--outtype f16] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers_qwen3.runtime.upstream import (
    add_native_tokenizer,
    gguf_contents,
    tensor_differences,
    upstream_converter,
    upstream_env,
)

# Runs `argv` as a child and prints its wall time and peak RSS (KiB on Linux) as JSON.
_MEASURE = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
wall = time.perf_counter() - t
print(json.dumps({"rc": rc, "wall_s": wall, "peak_rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def make_checkpoint(folder: Path, preset: str, work: Path) -> Path:
    """A native Qwen3ForCausalLM folder: our `init` checkpoint (its text keys are Qwen3ForCausalLM's) with a
    native config.json and tokenizer."""
    if (folder / "config.json").is_file():
        return folder
    from transformers_qwen3.checkpoint.build import init_checkpoint
    from transformers_qwen3.checkpoint.presets import text_config

    tmp = work / "init.partial"
    init_checkpoint(tmp, preset, seed=0, force=True)
    config = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "dtype": "bfloat16", **text_config(preset)}
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    for extra in tmp.glob("*.py"):
        extra.unlink()
    add_native_tokenizer(tmp, work)
    tmp.rename(folder)
    return folder


def measure(argv: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True, env=env, check=True)
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise RuntimeError(f"{argv[:3]} failed (rc {result['rc']})")
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="0.6b", help="text preset of transformers-qwen3 init (default 0.6b)")
    parser.add_argument("--outtype", default="f16", choices=["f32", "f16", "bf16", "q8_0"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="keep the checkpoint here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def commands(src: Path, out: Path, upstream: Path, outtype: str) -> dict[str, tuple[list[str], dict]]:
    """name → (argv, environment) of each converter writing ``outtype`` into ``out``."""
    ours = [sys.executable, "-m", "transformers_qwen3.cli", "convert", str(src), str(out)]
    ours += ["--outtype", outtype, "--force", "--no-progress"]
    theirs = [sys.executable, str(upstream / "convert_hf_to_gguf.py"), str(src), "--outtype", outtype]
    theirs += ["--outfile", str(out / "upstream.gguf")]
    # upstream runs on the sdist's own gguf-py
    return {"ours": (ours, dict(os.environ)), "llama.cpp": (theirs, upstream_env(upstream))}


def alternate(cmds: dict, repeat: int) -> dict[str, list[dict]]:
    """Each command ``repeat`` times, the order alternating run by run (load drift hits both)."""
    runs: dict[str, list[dict]] = {k: [] for k in cmds}
    for i in range(repeat):
        for name in cmds if i % 2 == 0 else reversed(cmds):
            cmd, cmd_env = cmds[name]
            t = time.strftime("%H:%M:%S")
            runs[name].append(measure(cmd, cmd_env))
            last = runs[name][-1]
            print(f"[{t}] {name}: {last['wall_s']:.1f} s, {last['peak_rss_kib'] / 1024:.0f} MiB", file=sys.stderr)
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    src = make_checkpoint(work / f"qwen3-{args.preset}", args.preset, work)
    upstream = upstream_converter(work)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    cmds = commands(src, out, upstream, args.outtype)
    runs = alternate(cmds, args.repeat)
    summary = {
        name: {
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "peak_rss_mib": statistics.median(r["peak_rss_kib"] for r in rs) / 1024,
            "runs": rs,
        }
        for name, rs in runs.items()
    }
    ours_file = out / f"{src.name}-{args.outtype.upper()}.gguf"
    diffs = tensor_differences(gguf_contents(ours_file)[1], gguf_contents(out / "upstream.gguf")[1])
    size_mib = sum(p.stat().st_size for p in src.glob("*.safetensors")) / 2**20
    result = {
        "preset": args.preset,
        "outtype": args.outtype,
        "checkpoint_mib": size_mib,
        "cpu_count": os.cpu_count(),
        "repeat": args.repeat,
        "time_ratio": summary["ours"]["wall_s"] / summary["llama.cpp"]["wall_s"],
        "rss_ratio": summary["ours"]["peak_rss_mib"] / summary["llama.cpp"]["peak_rss_mib"],
        "identical_tensors": not diffs,
        **summary,
    }
    print_summary(result, summary, size_mib, args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_summary(result: dict, summary: dict, size_mib: float, args: argparse.Namespace) -> None:
    print("| converter | wall time (s) | peak RSS (MiB) |\n| --- | --- | --- |")
    for name, s in summary.items():
        print(f"| {name} | {s['wall_s']:.1f} | {s['peak_rss_mib']:.0f} |")
    print(
        f"\n{args.preset} ({size_mib:.0f} MiB safetensors) → {args.outtype.upper()}, median of {args.repeat}: "
        f"time {result['time_ratio']:.2f}x, peak RSS {result['rss_ratio']:.2f}x of llama.cpp's converter; "
        f"tensors identical: {result['identical_tensors']}"
    )


if __name__ == "__main__":
    sys.exit(main())
