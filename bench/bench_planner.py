"""The planner's speed, and its plans against another commit's planner (``compress/plan.py`` read with ``git show``).

Plans the demo model from a calibration file at each budget and ``--max-skip``; with ``--against COMMIT`` also with
that commit's plan.py, and reports whether the two plans are the same (types, widths, skips, bytes, predicted KL)
and both times.

    .venv/bin/python bench/bench_planner.py --calib demo_calib.safetensors [--against eca3e9d]
        [--budgets 60,45,34.5,33.07,30,25,20,18,16,14] (MB)
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers_qwen3.compress import calibrate as C
from transformers_qwen3.compress import plan as P
from transformers_qwen3.demo.model import demo_checkpoint
from transformers_qwen3.formats.folder import open_checkpoint

REPO = Path(__file__).resolve().parents[1]


def planner_at(commit: str):
    """compress/plan.py as it was at ``commit``, imported as a sibling of the installed package's modules."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{commit}:src/transformers_qwen3/compress/plan.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "plan_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("transformers_qwen3.compress._plan_then", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def timed(planner, *args, **kwargs):
    t = time.perf_counter()
    try:
        return planner.make_plan(*args, **kwargs), time.perf_counter() - t
    except P.PlanError as e:
        return str(e), time.perf_counter() - t


def same(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return type(a) is type(b)
    keys = ("tensors", "layers", "bytes")
    return all(a[k] == b[k] for k in keys) and math.isclose(a["predicted_kl"], b["predicted_kl"], rel_tol=1e-9)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--against", default=None, help="a commit whose planner to compare with")
    parser.add_argument("--budgets", default="60,45,34.5,33.07,30,25,20,18,16,14", help="MB")
    args = parser.parse_args(argv)
    folder = demo_checkpoint()
    calib = C.load(args.calib, C.model_sha256(folder))
    text = open_checkpoint(folder).text
    then = planner_at(args.against) if args.against else None
    for mb in (float(b) for b in args.budgets.split(",")):
        for max_skip in (None, 0, 3):
            # the text config alone: both planners see the same problem (the old one knew no deepstack rule)
            now, t_now = timed(P, calib, text, int(mb * 1e6), max_skip=max_skip)
            line = f"{mb:6.2f} MB max_skip={max_skip}: {t_now:.2f} s"
            if then is not None:
                old, t_old = timed(then, calib, text, int(mb * 1e6), max_skip=max_skip)
                line += f", {args.against}: {t_old:.2f} s, same plan: {same(now, old)}"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
