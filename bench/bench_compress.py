"""Quality vs bytes of compressed copies of the trained demo model in llama.cpp (issue 11, item 5).

Every row is a text GGUF of the demo model, run by llama.cpp (``runtime.llama_cpp`` through the demo's
``run_llama_cpp_one``) on held-out test questions of the synthetic task (default 50 image + 50 audio), each with the
same F32 mmproj, so only the text decoder differs between rows. Against the reference, llama.cpp on the F32 GGUF
(the checkpoint's bf16 weights exactly, computed in f32):

- KL(reference ‖ row) of the first answer token's distribution over the whole vocabulary and top-1 agreement
  (``runtime.metrics.compare_logits``);
- exact-match accuracy of the greedy answer per modality (``demo.run.accuracy``).

Methods (one line each in the picture):

- ``uniform``: llama.cpp's mixes Q8_0 / Q6_K / Q5_K_M / Q4_K_M / Q3_K_M / Q2_K from the bf16 intermediate, as
  ``convert --outtype`` makes them (Q8_0 is gguf-py's, the rest ``convert.quantize.llama_quantize``);
- ``uniform+imatrix``: the same mixes with the calibration's importance matrix (``--calib``), when
  ``llama_quantize`` takes one;
- ``planner``: ``plan.make_plan`` at each uniform row's text-weight bytes and at budgets below them
  (``--budgets``), written as a GGUF (``convert --plan`` when it exists, else per-tensor types through
  ``llama_quantize``'s overrides, for plans that only choose types);
- ``width-only`` / ``depth-only``: the planner restricted to FFN widths / skipped layers, every weight Q8_0.

Bytes: ``decoder`` = the blk.* and output_norm tensors, ``embedding`` = token_embd (tied, 38.9 M of the 44 M
parameters), from the GGUF's own tensor table; the file also holds the vocabulary metadata.

    nice -n 10 .venv/bin/python bench/bench_compress.py --calib CALIB.safetensors [--questions 50] [--threads 2]
        [--methods uniform,imatrix,planner,width,depth] [--budgets 20MB,15MB] [--json out.json] [--png out.png]
    .venv/bin/python bench/bench_compress.py --from-json out.json --png docs/compression-quality.png

GGUFs and measurements are cached under ``--work`` (default /tmp/bench-compress): a rerun measures only new rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

UNIFORM = ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k")
METHODS = ("uniform", "imatrix", "planner", "width", "depth")
CACHED_ONLY = False  # --cached-only: rows whose GGUF and measurement are already in --work, nothing new


# --- GGUFs ---------------------------------------------------------------------------------------------------------------
def gguf_bytes(path: Path) -> dict:
    from transformers_qwen3.formats.gguf_file import read_gguf

    reader = read_gguf(path)
    out = {"embedding": 0, "decoder": 0, "file": path.stat().st_size, "types": {}}
    for t in reader.tensors:
        part = "embedding" if t.name.startswith("token_embd") else "decoder"
        out[part] += int(t.n_bytes)
        if t.name.endswith(".weight") and not t.name.endswith("norm.weight"):
            out["types"][t.name] = t.tensor_type.name
    out["weights"] = out["embedding"] + out["decoder"]
    return out


def gguf_names(hf_to_value: dict) -> dict:
    """HF text weight name → the same value under its GGUF name (convert.tensor_map's table)."""
    from transformers_qwen3.convert.tensor_map import TEXT_TENSORS, gguf_base_name, match

    out = {}
    for name, value in hf_to_value.items():
        m = match(TEXT_TENSORS, name)
        if m is not None:
            out[gguf_base_name(m) + m.suffix] = value
    return out


def quantizer():
    """llama_quantize and whether it takes an importance matrix (K1's addition to convert/quantize.py)."""
    import inspect

    from transformers_qwen3.convert import quantize as q

    return q.llama_quantize, "imatrix" in inspect.signature(q.llama_quantize).parameters


def base_files(folder: Path, gguf_dir: Path) -> dict:
    from transformers_qwen3.demo import run as demo

    f32_text, f32_mmproj = demo.gguf_files(folder, "f32", gguf_dir)
    bf16_text, _ = demo.gguf_files(folder, "bf16", gguf_dir)
    q8_text, _ = demo.gguf_files(folder, "q8_0", gguf_dir)
    return {"f32": f32_text, "mmproj": f32_mmproj, "bf16": bf16_text, "q8_0": q8_text}


def uniform_gguf(base: dict, outtype: str, gguf_dir: Path, imatrix: dict | None) -> Path:
    if outtype == "q8_0" and imatrix is None:
        return base["q8_0"]  # gguf-py's Q8_0 (bit-identical to ggml's; Q8_0 ignores an imatrix anyway)
    llama_quantize, takes_imatrix = quantizer()
    tag = "-imatrix" if imatrix is not None else ""
    dst = gguf_dir / f"{base['bf16'].stem.removesuffix('-BF16')}-{outtype.upper()}{tag}.gguf"
    if not dst.is_file():
        kwargs = {"imatrix": imatrix} if imatrix is not None else {}
        tmp = dst.with_suffix(".partial")
        llama_quantize(base["bf16"], tmp, outtype, **kwargs)
        tmp.rename(dst)
    return dst


def plan_gguf(folder: Path, base: dict, plan: dict, gguf_dir: Path, imatrix: dict | None, imatrix_gguf) -> Path | str:
    """The plan as a text GGUF (``convert --plan``: sliced FFNs, dropped layers, the plan's types with the imatrix),
    or why it cannot be written here."""
    key = hashlib.sha256(json.dumps({k: plan[k] for k in ("tensors", "layers")}, sort_keys=True).encode())
    key.update(b"imatrix" if imatrix is not None else b"")
    dst = gguf_dir / f"plan-{key.hexdigest()[:12]}.gguf"
    if dst.is_file():
        return dst
    if CACHED_ONLY:
        return "not in --work (--cached-only)"
    structural = any(layer["skip"] or layer["ffn_width"] != layer["ffn_full"] for layer in plan["layers"])
    if structural:  # slicing and dropping: the converter's --plan (formats/compression.py)
        import inspect

        from transformers_qwen3.convert import converter

        if "plan" not in inspect.signature(converter.convert_checkpoint).parameters:
            return "width/depth plans need `convert --plan`, not in this checkout"
        out = gguf_dir / (dst.stem + "-out")
        plan_file = gguf_dir / (dst.stem + ".json")
        plan_file.write_text(json.dumps(plan))
        kwargs = {"imatrix": imatrix_gguf} if imatrix is not None else {}
        try:
            paths = converter.convert_checkpoint(
                folder, out, "plan", name=dst.stem, force=True, progress=False, plan=plan_file, **kwargs
            )
        except Exception as e:  # noqa: BLE001 - the applier is new: say why a row is missing, measure the rest
            return f"convert --plan failed: {type(e).__name__}: {e}"
        next(p for p in paths if not p.name.startswith("mmproj-")).rename(dst)
        return dst
    # types only: what convert --plan does for types (every weight an exact-name override of llama.cpp's
    # quantizer, the imatrix passed), from the cached bf16 intermediate instead of rewriting it per plan
    llama_quantize, takes_imatrix = quantizer()
    overrides = {f"^{name.replace('.', '[.]')}$": t["type"] for name, t in gguf_names(plan["tensors"]).items()}
    kwargs = {"imatrix": imatrix} if imatrix is not None and takes_imatrix else {}
    tmp = dst.with_suffix(".partial")
    llama_quantize(base["bf16"], tmp, "q6_k", overrides, **kwargs)  # every weight overridden: the mix only names it
    tmp.rename(dst)
    return dst


# --- calibration on the demo's own training split ---------------------------------------------------------------------------
def calibrate_demo(folder: Path, out: Path, n_items: int, types: tuple[str, ...], top_k: int) -> None:
    """``compress.calibrate`` on the demo's training-split questions with their pictures and clips (the task the
    model knows; the built-in English prompts are noise to it), batches of 8 as the trainer collates them; writes
    the calibration file and llama.cpp's imatrix GGUF beside it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoProcessor

    import transformers_qwen3  # noqa: F401  (registers our classes)
    from transformers_qwen3.compress import calibrate as C
    from transformers_qwen3.demo import data as demo_data

    processor = AutoProcessor.from_pretrained(folder)
    items = demo_data.encode_split(processor, "train", n_items)
    batches = [demo_data.collate(items[i : i + 8])[0] for i in range(0, len(items), 8)]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    t0 = time.perf_counter()
    calib = C.calibrate(model, batches, C.model_sha256(folder), types, kl_top_k=top_k)
    calib.extra = {
        "data": f"demo train split, {n_items} questions (images and clips)",
        "types": list(types),
        "kl": f"top-{top_k} + {C.KL_TAIL_SAMPLES} tail samples" if top_k else "exact",
        "seconds": time.perf_counter() - t0,
    }
    C.save(calib, out)
    C.write_llama_imatrix(calib, out.with_suffix(".imatrix.gguf"), dataset="demo train split")
    print(f"calibrated in {calib.extra['seconds']:.0f} s: {calib.tokens} tokens -> {out}", flush=True)


# --- plans -----------------------------------------------------------------------------------------------------------------
def restricted(calib, method: str):
    """A copy of the calibration whose options the planner may use for ``method``."""
    import copy

    c = copy.copy(calib)
    if method in ("width", "depth"):
        c.tensor_kl = {n: {"Q8_0": kls["Q8_0"]} for n, kls in calib.tensor_kl.items()}
    if method == "depth":
        c.width_kl = [{} for _ in calib.width_kl]
    return c


def make_plans(folder: Path, calib, budgets: list[int], method: str) -> list[dict]:
    from transformers_qwen3.compress import plan as P
    from transformers_qwen3.formats.folder import open_checkpoint

    checkpoint = open_checkpoint(folder)
    text = checkpoint.text
    n_layers = len(calib.layer_kl)
    max_skip = {"planner": None, "width": 0, "depth": n_layers - 1}[method]
    plans, seen = [], set()
    for budget in budgets:
        try:
            plan = P.make_plan(restricted(calib, method), text, budget, "gguf", 0, max_skip, checkpoint.vision)
        except P.PlanError as e:
            print(f"  {method} at {budget / 1e6:.1f} MB: {e}", file=sys.stderr)
            continue
        key = json.dumps([plan["tensors"], [(x["skip"], x["ffn_width"]) for x in plan["layers"]]], sort_keys=True)
        if key not in seen:
            seen.add(key)
            plans.append(plan)
    return plans


# --- measuring -------------------------------------------------------------------------------------------------------------
def measure(text: Path, mmproj: Path, data_dir: Path, records: list[dict], threads: int, work: Path) -> dict:
    """llama.cpp's first-answer logits and answers for one GGUF, cached by the file's bytes."""
    from transformers_qwen3.demo import run as demo

    h = hashlib.sha256()
    with open(text, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    key = f"{h.hexdigest()[:16]}-{len(records)}"
    cache = work / "measured" / key
    if (cache / "row.json").is_file():
        row = json.loads((cache / "row.json").read_text())
        row["logits"] = np.load(cache / "logits.npy")
        return row
    if CACHED_ONLY:
        return None
    t0 = time.perf_counter()
    result = demo.run_llama_cpp_one(text, mmproj, data_dir, records, threads, keep_logits=True)
    row = {"accuracy": demo.accuracy(records, result["answers"]), "seconds": time.perf_counter() - t0}
    cache.mkdir(parents=True, exist_ok=True)
    np.save(cache / "logits.npy", np.stack(result["first_logits"]).astype(np.float32))
    (cache / "row.json").write_text(json.dumps(row))
    row["logits"] = np.load(cache / "logits.npy")
    return row


def row_of(label: str, method: str, path: Path, measured: dict, ref: dict, plan: dict | None = None) -> dict:
    from transformers_qwen3.runtime.metrics import compare_logits

    m = compare_logits(ref["logits"], measured["logits"])
    sizes = gguf_bytes(path)
    acc = measured["accuracy"]
    row = {"label": label, "method": method, "gguf": path.name, **{k: m[k] for k in ("kl_mean", "kl_max")}}
    row |= {"top1": m["top1_agreement"], "accuracy": acc, "task_accuracy": float(np.mean(list(acc.values())))}
    row |= {k: sizes[k] for k in ("embedding", "decoder", "weights", "file")}
    row["type_counts"] = _counts(sizes["types"])
    row["embedding_type"] = sizes["types"].get("token_embd.weight")
    if plan is not None:
        row["predicted_kl"] = plan["predicted_kl"]
        row["planned_bytes"] = plan["weight_bytes"]
        row["skipped"] = [x["index"] for x in plan["layers"] if x["skip"]]
        row["widths"] = [x["ffn_width"] for x in plan["layers"]]
    print(
        f"  {label:34s} {sizes['weights'] / 1e6:6.2f} MB (table {sizes['embedding'] / 1e6:5.2f}, decoder "
        f"{sizes['decoder'] / 1e6:5.2f})  KL {m['kl_mean']:.3e}  top-1 {m['top1_agreement']:.0%}  acc "
        f"{row['task_accuracy']:.0%}" + (f"  predicted {plan['predicted_kl']:.3e}" if plan else ""),
        flush=True,
    )
    return row


def _counts(types: dict) -> str:
    from collections import Counter

    return ", ".join(f"{k}×{v}" for k, v in sorted(Counter(types.values()).items()))


# --- table and picture -------------------------------------------------------------------------------------------------------
def markdown(rows: list[dict], n_questions: int, load: str) -> str:
    lines = [
        f"{n_questions // 2} image + {n_questions // 2} audio held-out questions; reference: llama.cpp F32; {load}",
        "",
        "| method | row | weights MB | table MB (type) | decoder MB | KL mean | KL max | top-1 | image acc. | "
        "audio acc. | predicted KL |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (METHODS.index(r["method"]) if r["method"] in METHODS else -1, -r["weights"])):
        pred = f"{r['predicted_kl']:.2e}" if "predicted_kl" in r else ""
        lines.append(
            f"| {r['method']} | {r['label']} | {r['weights'] / 1e6:.2f} | {r['embedding'] / 1e6:.2f} "
            f"({r.get('embedding_type')}) | {r['decoder'] / 1e6:.2f} | {r['kl_mean']:.2e} | {r['kl_max']:.2e} | "
            f"{r['top1']:.0%} | {r['accuracy'].get('image', 0):.0%} | {r['accuracy'].get('audio', 0):.0%} | {pred} |"
        )
    return "\n".join(lines)


def fit(rows: list[dict]) -> dict:
    """Predicted (sum of calibrated KLs) vs measured KL over the plans: Pearson r of the logs, ratio range."""
    pts = [(r["predicted_kl"], r["kl_mean"]) for r in rows if r.get("predicted_kl", 0) > 0 and r["kl_mean"] > 0]
    if len(pts) < 2:
        return {"plans": len(pts)}
    p, m = np.log10(np.array(pts)).T
    ratio = 10 ** (m - p)
    return {
        "plans": len(pts),
        "pearson_log10": float(np.corrcoef(p, m)[0, 1]),
        "ratio_measured_over_predicted": [float(ratio.min()), float(np.median(ratio)), float(ratio.max())],
    }


def picture(rows: list[dict], png: Path, reference_accuracy: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {
        "uniform": ("tab:blue", "o", "uniform (llama.cpp mixes)"),
        "imatrix": ("tab:cyan", "s", "uniform + imatrix"),
        "planner": ("tab:red", "D", "planner (types, widths, depth)"),
        "planner-text": ("tab:orange", "x", "planner, calibrated on built-in English text"),
        "width": ("tab:green", "^", "width only (Q8_0)"),
        "depth": ("tab:purple", "v", "depth only (Q8_0)"),
    }
    fig, (ax_kl, ax_acc) = plt.subplots(2, 1, figsize=(8, 8), sharex=True)
    for method, (color, marker, label) in styles.items():
        pts = sorted(
            (r["weights"] / 1e6, r["kl_mean"], r["task_accuracy"], r["label"]) for r in rows if r["method"] == method
        )
        if not pts:
            continue
        x, kl, acc, names = zip(*pts, strict=True)
        ax_kl.plot(x, np.maximum(kl, 1e-7), marker=marker, color=color, label=label)
        ax_acc.plot(x, np.array(acc) * 100, marker=marker, color=color, label=label)
        if method == "uniform":
            for xi, ki, n in zip(x, kl, names, strict=True):
                ax_kl.annotate(
                    n.split()[-1],
                    (xi, max(ki, 1e-7)),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                    color=color,
                )
    if reference_accuracy:
        ax_acc.axhline(
            100 * float(np.mean(list(reference_accuracy.values()))), color="gray", ls="--", lw=1, label="F32 reference"
        )
        ax_acc.legend(fontsize=8)
    ax_acc.set_ylim(0, 102)
    ax_kl.set_yscale("log")
    ax_kl.set_ylabel("KL(F32 ‖ compressed), nats, mean")
    ax_kl.set_title("Demo model in llama.cpp: quality vs text-weight bytes (lower left is better)")
    ax_kl.grid(True, which="both", alpha=0.3)
    ax_kl.legend(fontsize=8)
    ax_acc.set_ylabel("held-out task accuracy, %")
    ax_acc.set_xlabel("text weights, MB (embedding table + decoder; the table is 88 % of the parameters)")
    ax_acc.grid(True, alpha=0.3)
    fig.tight_layout()
    tmp = png.with_name(png.stem + ".partial.png")
    fig.savefig(tmp, dpi=110)
    tmp.rename(png)


# --- main ------------------------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calib", type=Path, help="the demo model's calibration file (planner rows, the imatrix)")
    p.add_argument("--questions", type=int, default=50, help="held-out questions per modality")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--types", default=",".join(UNIFORM), help="uniform llama.cpp mixes")
    p.add_argument("--budgets", default="", help="extra planner budgets below the uniform sizes, e.g. 15MB,12MB")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench-compress"))
    p.add_argument("--json", type=Path)
    p.add_argument("--png", type=Path)
    p.add_argument("--from-json", type=Path, nargs="+", help="draw/print from earlier --json files, measuring nothing")
    p.add_argument("--cached-only", action="store_true", help="only rows already measured in --work")
    p.add_argument("--calibrate", type=int, metavar="N", help="first write --calib from N training-split questions")
    p.add_argument("--calib-types", default="F16,Q8_0,Q6_K,Q5_K,Q4_K,Q3_K,Q2_K")
    p.add_argument("--kl-top-k", type=int, default=256, help="calibration's KL estimate (0: exact)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import os

    args = parse_args(argv)
    global CACHED_ONLY
    CACHED_ONLY = args.cached_only
    load = f"load average {os.getloadavg()[0]:.1f} at start"
    if args.from_json:
        parts = [json.loads(p.read_text()) for p in args.from_json]
        data = {k: parts[0][k] for k in ("questions", "load", "reference_accuracy") if k in parts[0]}
        rows = [r for part in parts for r in part["rows"]]
        if args.json:
            args.json.write_text(json.dumps({**data, "rows": rows, "fit": fit(rows)}, indent=1) + "\n")
    else:
        rows, ref_acc = run_all(args)
        data = {"rows": rows, "questions": 2 * args.questions, "load": load, "fit": fit(rows)}
        data["reference_accuracy"] = ref_acc
        if args.json:
            args.json.write_text(json.dumps(data, indent=1) + "\n")
    print(markdown(rows, data["questions"], data["load"]))
    print("fit (planner rows):", json.dumps(fit(rows)))
    if args.png:
        picture(rows, args.png, data.get("reference_accuracy"))
    return 0


def run_all(args) -> list[dict]:
    import tempfile

    from transformers_qwen3.compress import calibrate as C
    from transformers_qwen3.demo import model as demo_model
    from transformers_qwen3.demo import run as demo

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    folder = demo_model.demo_checkpoint(verbose=True)
    gguf_dir = args.work / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    base = base_files(folder, gguf_dir)
    if args.calibrate:
        if not args.calib:
            raise SystemExit("--calibrate needs --calib (the file to write)")
        types = tuple(t.strip().upper() for t in args.calib_types.split(","))
        calibrate_demo(folder, args.calib, args.calibrate, types, args.kl_top_k)
    calib = C.load(args.calib, C.model_sha256(folder)) if args.calib else None
    imatrix = gguf_names({n: v.float().numpy() for n, v in calib.imatrix.items()}) if calib else None
    imatrix_gguf = args.work / "calib.imatrix.gguf"
    if calib is not None:
        C.write_llama_imatrix(calib, imatrix_gguf)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-compress-") as tmp:
        questions, records = demo.write_questions(Path(tmp) / "q", args.questions)
        data_dir = questions.parent
        ref = measure(base["f32"], base["mmproj"], data_dir, records, args.threads, args.work)
        print(f"reference F32: accuracy {ref['accuracy']}", flush=True)

        def one(label, method, path, plan=None):
            got = measure(path, base["mmproj"], data_dir, records, args.threads, args.work)
            if got is None:
                print(f"  {label}: not measured yet (--cached-only)", file=sys.stderr)
                return
            rows.append(row_of(label, method, path, got, ref, plan))

        types = [t.strip().lower() for t in args.types.split(",") if t.strip()]
        if "uniform" in methods:
            for t in types:
                one(f"uniform {t.upper()}", "uniform", uniform_gguf(base, t, gguf_dir, None))
        sizes = sorted({r["weights"] for r in rows if r["method"] == "uniform"}, reverse=True)
        extra = [_parse_bytes(b) for b in args.budgets.split(",") if b.strip()]
        for method in ("planner", "width", "depth"):
            if method not in methods or calib is None:
                continue
            budgets = sizes + extra if method == "planner" else _structural_budgets(base, calib, method)
            for plan in make_plans(folder, calib, budgets, method):
                path = plan_gguf(folder, base, plan, gguf_dir, imatrix if method == "planner" else None, imatrix_gguf)
                label = f"{method} {plan['weight_bytes'] / 1e6:.1f} MB"
                if isinstance(path, str):
                    print(f"  {label}: not run: {path}", file=sys.stderr)
                    continue
                one(label, method, path, plan)
        if "imatrix" in methods:
            if imatrix is None or not quantizer()[1]:
                print(
                    "  imatrix rows not run: "
                    + (
                        "no --calib"
                        if imatrix is None
                        else "convert/quantize.py's llama_quantize takes no imatrix yet"
                    ),
                    file=sys.stderr,
                )
            else:
                for t in types:
                    if t != "q8_0":
                        one(f"uniform+imatrix {t.upper()}", "imatrix", uniform_gguf(base, t, gguf_dir, imatrix))
    return rows, ref["accuracy"]


def _structural_budgets(base: dict, calib, method: str) -> list[int]:
    """Budgets from the Q8_0 model down in steps of what one width cut / one layer removes."""
    q8 = gguf_bytes(base["q8_0"])["weights"]
    n = len(calib.layer_kl)
    per_layer = (q8 - gguf_bytes(base["q8_0"])["embedding"]) // n
    if method == "depth":  # a quarter layer of slack: the norms and rounding must not force one more skip
        return [q8 - k * per_layer + per_layer // 4 for k in (1, 2)]
    # one step = 256 neurons of one layer's FFN (gate, up and down at Q8_0: 34 bytes per 32 weights)
    hidden = calib.shapes[next(k for k in calib.shapes if k.endswith("mlp.down_proj.weight"))][0]
    step = 256 * 3 * hidden * 34 // 32
    return [q8 - k * step for k in (n, 2 * n)]


def _parse_bytes(text: str) -> int:
    from transformers_qwen3.compress.plan import parse_bytes

    return parse_bytes(text.strip())


if __name__ == "__main__":
    sys.exit(main())
