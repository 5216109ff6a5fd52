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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_convert_fixtures import (  # noqa: E402  (shared with the tests: the pinned upstream converter)
    add_native_tokenizer,
    read_gguf,
    tensor_differences,
    upstream_converter,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="0.6b", help="text preset of transformers-qwen3 init (default 0.6b)")
    parser.add_argument("--outtype", default="f16", choices=["f32", "f16", "bf16", "q8_0"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="keep the checkpoint here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    src = make_checkpoint(work / f"qwen3-{args.preset}", args.preset, work)
    upstream = upstream_converter(work)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    env = dict(os.environ)
    up_env = {**os.environ, "PYTHONPATH": str(upstream / "gguf-py")}  # the sdist's own gguf-py
    ours_file = out / f"{src.name}-{args.outtype.upper()}.gguf"
    up_file = out / "upstream.gguf"
    commands = {
        "ours": (
            [
                sys.executable,
                "-m",
                "transformers_qwen3.cli",
                "convert",
                str(src),
                str(out),
                "--outtype",
                args.outtype,
                "--force",
                "--no-progress",
            ],
            env,
        ),
        "llama.cpp": (
            [
                sys.executable,
                str(upstream / "convert_hf_to_gguf.py"),
                str(src),
                "--outtype",
                args.outtype,
                "--outfile",
                str(up_file),
            ],
            up_env,
        ),
    }
    runs: dict[str, list[dict]] = {k: [] for k in commands}
    for i in range(args.repeat):
        for name in commands if i % 2 == 0 else reversed(commands):
            cmd, cmd_env = commands[name]
            t = time.strftime("%H:%M:%S")
            runs[name].append(measure(cmd, cmd_env))
            print(
                f"[{t}] {name}: {runs[name][-1]['wall_s']:.1f} s, {runs[name][-1]['peak_rss_kib'] / 1024:.0f} MiB",
                file=sys.stderr,
            )
    summary = {
        name: {
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "peak_rss_mib": statistics.median(r["peak_rss_kib"] for r in rs) / 1024,
            "runs": rs,
        }
        for name, rs in runs.items()
    }
    diffs = tensor_differences(read_gguf(ours_file)[1], read_gguf(up_file)[1])
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
    print("| converter | wall time (s) | peak RSS (MiB) |\n| --- | --- | --- |")
    for name in commands:
        print(f"| {name} | {summary[name]['wall_s']:.1f} | {summary[name]['peak_rss_mib']:.0f} |")
    print(
        f"\n{args.preset} ({size_mib:.0f} MiB safetensors) → {args.outtype.upper()}, median of {args.repeat}: "
        f"time {result['time_ratio']:.2f}x, peak RSS {result['rss_ratio']:.2f}x of llama.cpp's converter; "
        f"tensors identical: {not diffs}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
