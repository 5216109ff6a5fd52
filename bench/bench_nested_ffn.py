"""Elastic FFN width with and without nested training, on the demo model (issue 11, item 5, last part).

From the trained demo model with its FFN neurons in importance order (the calibration's neuron scores,
``compress.importance``), two short fine-tunes with the demo's own training loop (``demo.train``: same data order,
seed, learning rate, steps; the embedding table frozen as in the recipe):

- plain: every step at the full FFN width (768)
  (the demo loop's schedule: cosine from ``--lr`` to 5 % of it, no warmup, tower probes on, as in the recipe);
- nested: every training step at one width drawn uniformly from ``--widths`` (default 32, 64, 128, 256, 768;
  ``training.nested.NestedFFN``, MatFormer-style; evaluation runs at the width being measured).

Then each model, and the importance-ordered start without fine-tuning, is measured at each of ``--widths`` (every
layer cut to its first w neurons; ``NestedFFN.set(w)``, which tests/test_nested_ffn.py checks against transformers'
own Qwen3 at intermediate_size=w from the sliced weights): held-out task accuracy (``demo.evaluate``), KL / top-1
against the same model at its full width (what the cut costs that model) and KL against the untouched demo model
(which also counts the fine-tune's drift), at the answer positions (``runtime.metrics.compare_logits``). The demo's
FFNs lose little down to 256 of 768 neurons (KL 2.6e-4 before any fine-tune), hence the narrow default widths.

    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python bench/bench_nested_ffn.py --calib demo_calib.safetensors \\
        [--steps 60] [--widths 32,64,128,256,768] [--n-train 640] [--n-test 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from transformers_qwen3.compress import calibrate as calib_mod
from transformers_qwen3.compress.importance import importance_order, permute_ffn
from transformers_qwen3.demo.data import answer_logits, collate
from transformers_qwen3.demo.evaluate import evaluate
from transformers_qwen3.demo.model import TRAINED_FILE, build_model, load_trained
from transformers_qwen3.demo.train import TrainSettings, encode_data, start_run, train_loop
from transformers_qwen3.runtime.metrics import compare_logits
from transformers_qwen3.training.nested import NestedFFN

WIDTHS = [32, 64, 128, 256, 768]  # the demo's FFN is 768; it loses little down to 256 (measured), so go lower


def log(msg: str) -> None:
    print(f"# [{time.strftime('%H:%M:%S')}] load {os.getloadavg()[0]:.2f}: {msg}", file=sys.stderr, flush=True)


@torch.no_grad()
def logits_of(model, items, batch_size: int = 32) -> list[np.ndarray]:
    model.eval()
    out = []
    for start in range(0, len(items), batch_size):
        batch, _ = collate(items[start : start + batch_size])
        out.append(answer_logits(model, batch).flatten(0, 1).double().numpy())
    return out


def measure(model, nested: NestedFFN, items, reference, widths: list[int]) -> dict:
    """Per width: accuracy, KL / top-1 against the same model at its full width (what cutting costs this model)
    and KL against the untouched demo model (which also counts the fine-tune's own drift)."""
    nested.set(nested.full)
    own = logits_of(model, items)
    rows = {}
    for w in widths:
        nested.set(w)
        acc = evaluate(model, items)
        got = logits_of(model, items)
        m, d = compare_logits(own, got), compare_logits(reference, got)
        rows[w] = {
            "image": acc["image"],
            "audio": acc["audio"],
            "kl": m["kl_mean"],
            "top1": m["top1_agreement"],
            "kl_demo": d["kl_mean"],
        }
        log(
            f"  width {w}: image {acc['image']:.1%}, audio {acc['audio']:.1%}, KL vs own full {m['kl_mean']:.4g}, "
            f"top-1 {m['top1_agreement']:.1%}, KL vs demo {d['kl_mean']:.4g}"
        )
    nested.set(nested.full)
    return rows


def ordered_run(settings: TrainSettings, orders):
    run = start_run(settings, TRAINED_FILE)
    with torch.no_grad():
        permute_ffn(run.model, orders)
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=Path, required=True, help="the demo model's calibration (neuron scores)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--n-train", type=int, default=640)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--widths", default=",".join(map(str, WIDTHS)), help="FFN widths, the full one last")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    widths = [int(w) for w in args.widths.split(",")]
    calib = calib_mod.load(args.calib)
    orders = [importance_order(s) for s in calib.neuron_scores]
    settings = TrainSettings(
        steps=args.steps,
        lr=args.lr,
        warmup=0,
        n_train=args.n_train,
        n_val=16,
        n_test=args.n_test,
        eval_every=10**9,
        batch_size=16,
    )
    t = time.perf_counter()
    train_items, val_items, test_items = encode_data(settings)
    log(f"encoded {len(train_items)} train / {len(test_items)} test items in {time.perf_counter() - t:.0f} s")
    reference = logits_of(build_model(load_trained(TRAINED_FILE)), test_items)

    results = {}
    for arm in ("start", "plain", "nested"):
        run = ordered_run(settings, orders)
        nested = NestedFFN(run.model, widths[:-1], seed=settings.seed)
        if arm != "start":
            if arm == "nested":
                # a draw per training forward (one per step); evaluation (eval mode) at full width
                def draw(module, inputs, nested=nested):
                    nested.sample() if module.training else nested.set(nested.full)

                run.model.register_forward_pre_hook(draw)
            t = time.perf_counter()
            train_loop(run, train_items, val_items, settings)
            log(f"{arm}: {settings.steps} steps in {time.perf_counter() - t:.0f} s")
            for h in run.hooks:
                h.remove()
            run.model._forward_pre_hooks.clear()
        log(f"{arm}:")
        results[arm] = measure(run.model, nested, test_items, reference, widths)
        nested.close()

    print(
        "\n| model | FFN width | image acc | audio acc | KL vs own full width | top-1 vs own full width | KL vs demo |"
        "\n|---|---|---|---|---|---|---|"
    )
    names = {
        "start": "importance-ordered, not fine-tuned",
        "plain": f"+ {args.steps} plain steps",
        "nested": f"+ {args.steps} nested steps",
    }
    for arm, rows in results.items():
        for w, r in rows.items():
            print(
                f"| {names[arm]} | {w} | {r['image']:.1%} | {r['audio']:.1%} | {r['kl']:.4g} | {r['top1']:.1%} "
                f"| {r['kl_demo']:.4g} |"
            )
    print(
        f"\n{args.n_test} test questions; fine-tunes: {args.steps} steps of 16, lr {args.lr} cosine to 5 %, "
        f"{args.n_train} training items; load average now {os.getloadavg()[0]:.1f}"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
