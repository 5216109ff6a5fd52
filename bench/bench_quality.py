"""Quality of compressed copies of the trained demo model: the reference table for hardware-adaptive compression.

For every runtime / weight type, on held-out test questions of the synthetic task (default 100 image + 100 audio):

- top-1 agreement: the first answer token's argmax equals the full-precision model's;
- KL(full ‖ compressed) of the first answer token's distribution over the whole 151,936-token vocabulary (nats,
  mean over questions; a forward pass that ends at the answer position, so it covers the prompt, the image or clip
  through its tower, and the decoder);
- exact-match accuracy per modality of the greedy answer (answer word then ``<|im_end|>``).

Full precision = transformers in fp32 on the checkpoint's bf16 weights. Rows:

- transformers bf16: the same weights computed in bf16;
- transformers int8 (bitsandbytes LLM.int8 on CPU, ``BitsAndBytesConfig(load_in_8bit=True)``): every ``nn.Linear``
  of decoder *and towers*, except the tied output head which transformers keeps in full precision;
- llama.cpp GGUF F32 (the runtime alone, no weight rounding), F16, Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0 via
  ``transformers_qwen3.convert`` + the patched llama-cpp-python. The K-quant / Q4_0 files come with a Q8_0 mmproj
  (the converter's rule: llama.cpp's quantizer does not read mmproj files), F16 / Q8_0 with their own type; the
  ``types`` column lists what llama.cpp actually wrote for the text weights.

    .venv/bin/python bench/bench_quality.py [--questions 100] [--threads 2] [--json out.json]
        [--gguf-types f32,f16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0] [--no-gguf] [--no-bnb]

Without the converter or llama-cpp-python the GGUF rows say "not run" and why; nothing is estimated.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from transformers_qwen3.demo import data as demo_data
from transformers_qwen3.demo import model as demo_model
from transformers_qwen3.demo import run as demo
from transformers_qwen3.runtime.metrics import compare_logits

GGUF_TYPES = ("f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")


def transformers_row(model, items, label: str) -> dict:
    """First-answer-token logits and teacher-forced exact match (= greedy generation's answer)."""
    logits, hits = [], {"image": [], "audio": []}
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(items), 16):
            chunk = items[start : start + 16]
            batch, targets = demo_data.collate(chunk)
            out = demo_data.answer_logits(model, batch).float()
            logits.append(out[:, 0].numpy())
            ok = (out.argmax(-1) == targets).all(-1).tolist()
            for it, good in zip(chunk, ok, strict=True):
                hits[it.kind].append(good)
    return {
        "label": label,
        "logits": np.concatenate(logits),
        "seconds": time.perf_counter() - t0,
        "accuracy": {k: sum(v) / len(v) for k, v in hits.items()},
    }


def load_bnb_int8(folder: Path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    import transformers_qwen3  # noqa: F401  (registers the model class)

    model = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map="cpu", dtype=torch.float32
    )
    linear8 = sum(type(m).__name__ == "Linear8bitLt" for m in model.modules())
    return model.eval(), linear8


def gguf_rows(folder: Path, records: list[dict], data_dir: Path, outtypes, threads: int) -> list[dict]:
    reason = demo.llama_cpp_status()
    if reason:
        return [{"label": f"llama.cpp {t.upper()}", "skipped": reason} for t in outtypes]
    from transformers_qwen3.convert import written_types

    gguf_dir = demo_model.cache_root() / "demo" / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for outtype in outtypes:
        text, mmproj = demo.gguf_files(folder, outtype, gguf_dir)
        result = demo.run_llama_cpp_one(text, mmproj, data_dir, records, threads, keep_logits=True)
        types = Counter(
            t
            for name, t in written_types(text).items()
            if name.endswith(".weight") and not name.endswith("norm.weight")
        )
        acc = demo.accuracy(records, result["answers"])
        rows.append(
            {
                "label": f"llama.cpp {outtype.upper()}",
                "logits": np.stack(result["first_logits"]),
                "seconds": sum(result["seconds"]),
                "accuracy": acc,
                "bytes": text.stat().st_size,
                "mmproj": mmproj.name,
                "types": ", ".join(f"{k}×{v}" for k, v in sorted(types.items())),
            }
        )
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=100, help="test questions per modality")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gguf-types", default=",".join(GGUF_TYPES))
    parser.add_argument("--no-gguf", action="store_true")
    parser.add_argument("--no-bnb", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the table as JSON")
    return parser.parse_args(argv)


def encoded_items(processor, records: list[dict], questions: int) -> list:
    """The same test questions :func:`demo.write_questions` wrote, encoded once for the transformers rows."""
    from transformers_qwen3.demo.synthetic import SyntheticSplit

    items = [demo_data.encode(processor, s) for s in SyntheticSplit(demo_data.DATA_SEED, "test", 2 * questions)]
    if [it.answer for it in items] != [demo.truth(r) for r in records]:
        raise RuntimeError("the encoded test split is not the one written to disk: the two runtimes would differ")
    return items


def transformers_rows(folder: Path, items: list, no_bnb: bool) -> list[dict]:
    """fp32 (the reference, first), bf16, and bitsandbytes int8 (or why it did not run)."""
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    rows = [transformers_row(full, items, "transformers fp32 (reference)")]
    rows.append(transformers_row(full.to(torch.bfloat16), items, "transformers bf16"))
    del full
    label = "transformers int8 (bitsandbytes)"
    if no_bnb:
        return [*rows, {"label": label, "skipped": "--no-bnb"}]
    try:
        model, n8 = load_bnb_int8(folder)
    except Exception as e:  # noqa: BLE001 - report why, do not guess a number
        return [*rows, {"label": label, "skipped": f"{type(e).__name__}: {e}"}]
    row = transformers_row(model, items, label)
    row["types"] = f"{n8} Linear8bitLt"
    return [*rows, row]


def print_table(rows: list[dict], n_questions: int) -> list[dict]:
    """The Markdown table (reference: the first row); returns its rows for --json."""
    ref = rows[0]
    print(
        f"\nDemo model, {n_questions // 2} image + {n_questions // 2} audio held-out questions; reference: transformers fp32.\n"
    )
    print(
        "| runtime / weights | top-1 agreement | KL mean (nats) | KL max | image acc. | audio acc. | text GGUF size | "
        "text weight types |"
    )
    print("|---|---|---|---|---|---|---|---|")
    table = []
    for row in rows:
        if "skipped" in row:
            print(f"| {row['label']} | not run: {row['skipped']} | | | | | | |")
            table.append({"label": row["label"], "skipped": row["skipped"]})
            continue
        m = compare_logits(ref["logits"], row["logits"])
        size = f"{row['bytes'] / 1e6:.1f} MB" if "bytes" in row else ""
        print(
            f"| {row['label']} | {m['top1_agreement']:.1%} | {m['kl_mean']:.2e} | {m['kl_max']:.2e} | "
            f"{row['accuracy']['image']:.0%} | {row['accuracy']['audio']:.0%} | {size} | {row.get('types', '')} |"
        )
        extra = {k: row[k] for k in ("bytes", "types", "mmproj") if k in row}
        table.append({"label": row["label"], **m, "accuracy": row["accuracy"], "seconds": row["seconds"], **extra})
    return table


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = demo_model.demo_checkpoint(verbose=True)
    from transformers import AutoProcessor

    import transformers_qwen3  # noqa: F401  (registers our classes with the Auto classes)

    processor = AutoProcessor.from_pretrained(folder)
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        questions, records = demo.write_questions(Path(tmp) / "q", args.questions)
        items = encoded_items(processor, records, args.questions)
        rows = transformers_rows(folder, items, args.no_bnb)
        if not args.no_gguf:
            outtypes = [t.strip().lower() for t in args.gguf_types.split(",") if t.strip()]
            rows += gguf_rows(folder, records, questions.parent, outtypes, args.threads)
    table = print_table(rows, len(records))
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
