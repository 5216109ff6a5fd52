"""Torch quantizers on CPU, measured (issue 11, item 4b): which one holds a compression plan's torch types.

For each method, through transformers' own ``quantization_config`` on our remote-code model, quantizing the text
decoder's ``nn.Linear`` weights only (the plan's scope; skipped: ``lm_head``, tied to the embedding, and the towers
``model.visual`` / ``model.audio_tower``; no method here quantizes ``nn.Embedding``):

- ``fp32``: the anchor, through the same save → reload path;
- ``bnb8``: bitsandbytes LLM.int8 (``BitsAndBytesConfig(load_in_8bit=True)``);
- ``bnb4``: bitsandbytes NF4 (``load_in_4bit=True, bnb_4bit_quant_type="nf4"``, fp32 compute);
- ``ao8`` / ``ao4``: torchao int8 weight-only / int4 weight-only (``TorchAoConfig``);
- ``hqq8`` / ``hqq4``: HQQ 8-bit / 4-bit, group 64 (``HqqConfig``).

Each method runs in two child processes (so peak RSS is the method's own): *quantize* loads the fp32 folder with the
config, computes the held-out logits and saves the result; *reload* loads the saved folder (``trust_remote_code``),
computes the logits again (equal to the first?), times greedy decoding and reports its peak RSS (``ru_maxrss``).
Size = the saved folder's ``*.safetensors``/``*.bin`` bytes (not ``get_memory_footprint()``, which misreports
torchao); ``decoder`` = the bytes of the tensors under ``model.layers.`` in the saved files.

Quality against fp32 (``runtime/metrics.py``): KL(fp32 ‖ method) per position and top-1 agreement. Held-out prompts:
for the demo model its synthetic test split (first answer token, image and audio questions through the towers) and
greedy accuracy; for a random-weight model, fixed text prompts (every position; random weights make KL a measure of
weight error only, not of quality).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_torch_quant.py MODEL_DIR [--methods fp32,bnb8,...]
        [--questions 16] [--decode 32] [--json out.json] [--ao-path DIR]

``--ao-path``: a folder holding torchao (pip install --target DIR torchao==0.18.0), put on the children's path for
the ``ao*`` methods only: torchao installed in the project venv makes every ``import transformers`` print torch
warnings and load errors (transformers' quantizer registry imports it), so the venv does not carry it.
MODEL_DIR ``68m`` makes the 68 M-parameter random test shape (hidden 384, FFN 1024, 6 layers, Qwen3 vocabulary).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

METHODS = ("fp32", "bnb8", "bnb4", "ao8", "ao4", "hqq8", "hqq4")
SKIP = ["lm_head", "model.visual", "model.audio_tower"]
TEXT_PROMPTS = [
    "The lighthouse keeper counted the ships that passed each night and wrote their names in a ledger.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)",
    "Water boils at a lower temperature on a mountain because the air pressure there is lower.",
    "In 1887 the committee met again, and this time the vote was unanimous: the bridge would be built.",
]
SHAPE_68M = {
    "hidden_size": 384,
    "intermediate_size": 1024,
    "num_hidden_layers": 6,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "layer_types": ["full_attention"] * 6,
}


def quantization_config(method: str):
    import transformers

    if method == "fp32":
        return None
    if method == "bnb8":
        return transformers.BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=SKIP)
    if method == "bnb4":
        return transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.float32,
            llm_int8_skip_modules=SKIP,
        )
    if method in ("ao8", "ao4"):
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig

        inner = Int8WeightOnlyConfig() if method == "ao8" else Int4WeightOnlyConfig(group_size=64)
        return transformers.TorchAoConfig(inner, modules_to_not_convert=SKIP)
    if method in ("hqq8", "hqq4"):
        return transformers.HqqConfig(nbits=8 if method == "hqq8" else 4, group_size=64, skip_modules=SKIP)
    raise ValueError(method)


def folder_bytes(folder: Path) -> dict:
    from safetensors import safe_open

    total, decoder = 0, 0
    for f in sorted(folder.iterdir()):
        if f.suffix not in (".safetensors", ".bin"):
            continue
        total += f.stat().st_size
        if f.suffix == ".safetensors":
            with safe_open(f, "pt") as st:
                for k in st.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    if k.startswith("model.layers."):
                        t = st.get_slice(k)
                        n = 1
                        for d in t.get_shape():
                            n *= d
                        decoder += n * torch.empty((), dtype=_dtype(t.get_dtype())).element_size()
    return {"saved_bytes": total, "decoder_bytes": decoder or None}


def _dtype(name: str):
    return {
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "I32": torch.int32,
        "I64": torch.int64,
        "F64": torch.float64,
        "BOOL": torch.bool,
        "I16": torch.int16,
    }.get(name, torch.uint8)


def held_out(folder: Path, questions: int):
    """(kind, payload): the demo's test split when the folder is a demo model, else the text prompts."""
    from transformers import AutoProcessor, AutoTokenizer

    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("vision_config") and cfg.get("audio_config") and (folder / "processor_config.json").exists():
        from transformers_qwen3.demo import data as demo_data
        from transformers_qwen3.demo.synthetic import SyntheticSplit

        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        items = [demo_data.encode(processor, s) for s in SyntheticSplit(demo_data.DATA_SEED, "test", questions)]
        return "demo", items
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    return "text", [tok(p, return_tensors="pt")["input_ids"] for p in TEXT_PROMPTS]


def logits_of(model, kind: str, items) -> tuple[np.ndarray, float | None]:
    with torch.no_grad():
        if kind == "text":
            return np.concatenate([model(input_ids=ids).logits[0].float().numpy() for ids in items]), None
        from transformers_qwen3.demo import data as demo_data

        out, hits = [], []
        for start in range(0, len(items), 8):
            batch, targets = demo_data.collate(items[start : start + 8])
            lg = demo_data.answer_logits(model, batch).float()
            out.append(lg[:, 0].numpy())
            hits += (lg.argmax(-1) == targets).all(-1).tolist()
        return np.concatenate(out), sum(hits) / len(hits)


def decode_tps(model, tokens: int) -> float:
    ids = torch.arange(1000, 1016)[None]
    kw = {"do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)  # warm-up
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, **kw)
    return tokens / (time.perf_counter() - t0)


def child(args) -> dict:
    from transformers import AutoModelForCausalLM

    import transformers_qwen3  # noqa: F401  (registers the model classes)

    torch.manual_seed(0)
    work = Path(args.work)
    saved = work / args.method
    kind, items = held_out(Path(args.folder), args.questions)
    result = {}
    t0 = time.perf_counter()
    if args.phase == "quantize":
        qc = quantization_config(args.method)
        kw = {} if qc is None else {"quantization_config": qc, "device_map": "cpu"}
        model = AutoModelForCausalLM.from_pretrained(args.folder, dtype=torch.float32, trust_remote_code=True, **kw)
        result["load_s"] = time.perf_counter() - t0
        logits, acc = logits_of(model.eval(), kind, items)
        np.save(work / f"{args.method}.quantize.npy", logits)
        try:
            model.save_pretrained(saved)
            result.update(folder_bytes(saved))
        except Exception as e:  # noqa: BLE001 - the failure is the measurement
            result["save_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    else:
        model = AutoModelForCausalLM.from_pretrained(
            saved, dtype=torch.float32, trust_remote_code=True, device_map="cpu"
        )
        result["load_s"] = time.perf_counter() - t0
        rss_loaded = _rss()
        logits, acc = logits_of(model.eval(), kind, items)
        np.save(work / f"{args.method}.reload.npy", logits)
        result["decode_tps"] = decode_tps(model, args.decode)
        result["rss_after_load"] = rss_loaded
        result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result["linear_types"] = sorted(
            {
                type(m).__name__
                for n, m in model.named_modules()
                if n.startswith("model.layers.")
                and hasattr(m, "weight")
                and not n.endswith("norm")
                and "layernorm" not in n
            }
        )
    result["accuracy"] = acc
    return result


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def make_68m(dst: Path) -> Path:
    if (dst / "model.safetensors").exists():
        return dst
    subprocess.run(
        [sys.executable, "-m", "transformers_qwen3.cli", "init", "--preset", "tiny", str(dst), "--force"], check=True
    )
    cfg = json.loads((dst / "config.json").read_text())
    cfg["text_config"].update(SHAPE_68M)
    from transformers import AutoConfig, AutoModelForCausalLM

    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    (dst / "model.safetensors").unlink()
    import transformers_qwen3  # noqa: F401

    config = AutoConfig.from_pretrained(dst, trust_remote_code=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=True, dtype=torch.float32)
    model.save_pretrained(dst)
    return dst


def run_child(args, method: str, phase: str, work: Path) -> dict:
    env = dict(os.environ)
    if method.startswith("ao") and args.ao_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (args.ao_path, env.get("PYTHONPATH")) if p)
    cmd = [
        sys.executable,
        __file__,
        str(args.folder),
        "--child",
        method,
        "--phase",
        phase,
        "--work",
        str(work),
        "--questions",
        str(args.questions),
        "--decode",
        str(args.decode),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return {"error": (err[-1] if err else f"exit {proc.returncode}")[:300]}
    return json.loads(lines[-1][7:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--questions", type=int, default=16)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--json", type=Path)
    p.add_argument("--ao-path")
    p.add_argument("--child")
    p.add_argument("--phase")
    p.add_argument("--work")
    args = p.parse_args(argv)
    if args.child:
        args.method = args.child
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0
    from transformers_qwen3.runtime.metrics import compare_logits

    if args.folder == "68m":
        args.folder = make_68m(Path(tempfile.gettempdir()) / "bench_torch_quant_68m")
    print(
        f"model {args.folder}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_torch_quant_") as tmp:
        work = Path(tmp)
        for method in args.methods.split(","):
            load_before = os.getloadavg()[0]
            q = run_child(args, method, "quantize", work)
            r = run_child(args, method, "reload", work) if "error" not in q and "save_error" not in q else {}
            row = {"method": method, "quantize": q, "reload": r, "load": [load_before, os.getloadavg()[0]]}
            ref = work / "fp32.reload.npy"
            for phase in ("quantize", "reload"):
                got = work / f"{method}.{phase}.npy"
                if ref.exists() and got.exists():
                    row[f"vs_fp32_{phase}"] = compare_logits(np.load(ref), np.load(got))
            a, b = work / f"{method}.quantize.npy", work / f"{method}.reload.npy"
            if a.exists() and b.exists():
                la, lb = np.load(a), np.load(b)
                row["reload_max_abs_diff"] = float(np.max(np.abs(la - lb)))
            rows.append(row)
            print(json.dumps(row), flush=True)
    anchor = next((r["reload"].get("decode_tps") for r in rows if r["method"] == "fp32"), None)
    print(
        "\n| method | saved MB | decoder MB | peak RSS MB | decode tok/s (×fp32) | KL mean | top-1 | acc | "
        "reload Δ | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        q, rl, m = r["quantize"], r["reload"], r.get("vs_fp32_reload") or r.get("vs_fp32_quantize") or {}
        if "error" in q or "save_error" in q:
            print(f"| {r['method']} | {q.get('error') or q.get('save_error')} |")
            continue
        tps = rl.get("decode_tps")
        ratio = f" ({tps / anchor:.2f}×)" if tps and anchor else ""
        print(
            f"| {r['method']} | {q['saved_bytes'] / 1e6:.2f} | {(q['decoder_bytes'] or 0) / 1e6:.2f} | "
            f"{rl.get('peak_rss', 0) / 1e6:.0f} | {tps or float('nan'):.1f}{ratio} | {m.get('kl_mean', float('nan')):.2e} | "
            f"{m.get('top1_agreement', float('nan')):.3f} | {rl.get('accuracy')} | "
            f"{r.get('reload_max_abs_diff', rl.get('error'))} | {r['load'][0]:.1f}–{r['load'][1]:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
