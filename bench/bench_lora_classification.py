"""LoRA vs full fine-tuning on a text-classification task the project builds itself: trainable fraction, training
time, peak memory and accuracy, against the product brief's claims (LoRA trains ~1.2 % of the parameters, saves 83 %
of the compute and loses < 2 % accuracy).

Setup (all offline, seeded):

1. **Task**: aspect sentiment of template reviews: is the review positive about the FIRST thing it mentions?
   ("Honestly, the food was not very good." -> negative; "The staff was rude, but the room was excellent." ->
   negative.) Negation and "X, but Y" make the label depend on word order, not on one word. Sentences never repeat
   across train, validation and test.
2. **Base model** (the "pretrained" model that fine-tuning starts from; no real weights can be downloaded here): a small
   Qwen3 decoder with the real 151,936-token vocabulary, trained as a causal LM on *unlabelled* reviews from the same
   generator, each followed by a sentence that reflects the *overall* verdict ("Loved it." / "Never again."; in
   "X, but Y" the verdict is Y's). So the base knows word polarity and negation, but its last-token state tracks the
   overall verdict, which differs from the label on ~20 % of reviews: fine-tuning has something to learn (the
   head-only row shows how far the base alone gets).
   To keep that cheap, the softmax runs over the ~70 token ids the corpus uses (the tied embedding rows), not the
   whole vocabulary; this is the only deviation from ordinary LM training. The LM never sees the labels.
3. **Fine-tuning**: ``Qwen3MultimodalForSequenceClassification`` (through ``AutoModelForSequenceClassification``)
   loads the base weights and a fresh ``score`` head. Each arm (full, head only, LoRA q/v, LoRA on all seven decoder
   projections) sees the same batch sequence with its own learning rate (best of a small sweep, in ``ARMS``), is
   validated every ``--eval-every`` steps and stops when validation accuracy reaches ``--target`` (or after
   ``--steps``): the time column is the compute to reach the same quality, the last column the test-accuracy gap.
   Each arm runs in its own process so that peak memory (VmHWM) is its own. Time is the training steps only (CPU
   time and wall time; CPU time is the steadier number on a shared machine).

    .venv/bin/python bench/bench_lora_classification.py [--steps 200] [--target 0.98] [--lr ARM=LR] [--keep DIR] [--out FILE]

Prints a Markdown table (also written to ``--out``, default none).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from transformers_qwen3.remote.tokens_qwen3_multimodal import ENDOFTEXT_ID

HERE = Path(__file__).resolve().parent
PAD = ENDOFTEXT_ID

# ---- the task ------------------------------------------------------------------------------------------------------

SUBJECTS = (
    "the food",
    "the movie",
    "the service",
    "the room",
    "the staff",
    "the book",
    "the concert",
    "the phone",
    "the hotel",
    "the coffee",
    "the show",
    "the trip",
)
POSITIVE = (
    "good",
    "great",
    "excellent",
    "wonderful",
    "delightful",
    "fantastic",
    "pleasant",
    "superb",
    "lovely",
    "brilliant",
)
NEGATIVE = ("bad", "awful", "terrible", "boring", "disappointing", "horrible", "poor", "dreadful", "rude", "bland")
INTENSIFIERS = ("", "very ", "really ", "quite ", "truly ")
FILLERS = ("", "Honestly, ", "Overall, ", "To be fair, ", "I think ", "Sadly, ", "Luckily, ")
# every follow-up starts with a word of its own polarity, so predicting it needs the review's sentiment
FOLLOW_UP = {
    1: ("Recommended.", "Loved it.", "Five stars.", "Would go again."),
    0: ("Avoid it.", "Hated it.", "One star.", "Never again."),
}
LABELS = ("negative", "positive")


def clause(rng: random.Random) -> tuple[str, int]:
    """'the food was not very good' and its polarity (1 positive)."""
    positive = rng.random() < 0.5
    adjective = rng.choice(POSITIVE if positive else NEGATIVE)
    negated = rng.random() < 0.4
    verb = "was not " if negated else "was "
    return f"{rng.choice(SUBJECTS)} {verb}{rng.choice(INTENSIFIERS)}{adjective}", int(positive != negated)


def sentence(rng: random.Random) -> tuple[str, int, int]:
    """A review, its overall polarity (what its follow-up sentence reflects) and the polarity of its FIRST clause
    (the sentiment about the first thing it mentions: the classification label)."""
    text, first = clause(rng)
    overall = first
    if rng.random() < 0.4:  # "X, but Y": the second clause decides the overall verdict
        second, overall = clause(rng)
        text = f"{text}, but {second}"
    filler = rng.choice(FILLERS)
    text = filler + text if filler else text[0].upper() + text[1:]
    return text + ".", overall, first


def make_split(seed: int, n: int, exclude: set[str] = frozenset()) -> list[tuple[str, int, int]]:
    rng, out, seen = random.Random(seed), [], set(exclude)
    while len(out) < n:
        text, overall, first = sentence(rng)
        if text not in seen:
            seen.add(text)
            out.append((text, overall, first))
    return out


# ---- model ---------------------------------------------------------------------------------------------------------


def text_config(args) -> dict:
    from transformers_qwen3.checkpoint.presets import QWEN3_COMMON

    return {
        **QWEN3_COMMON,
        "hidden_size": args.hidden,
        "intermediate_size": args.intermediate,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.hidden // 64,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "tie_word_embeddings": True,
        "max_position_embeddings": 512,
        "pad_token_id": PAD,
    }


def pad_batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(map(len, rows))
    ids = torch.full((len(rows), longest), PAD)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def pretrain(args, data: dict, folder: Path) -> dict:
    """Causal-LM training of the base on unlabelled reviews + follow-up sentence (softmax over the corpus's ids).

    Only the corpus's embedding rows ever receive a gradient, so they are trained as a small table and written back
    into the full one afterwards: with AdamW and no weight decay the other rows would not move anyway, so this is the
    same result as training the full table, without a 39M-row optimizer step.
    """
    from transformers_qwen3 import Qwen3MultimodalConfig, Qwen3MultimodalForConditionalGeneration

    torch.manual_seed(args.seed)
    config = Qwen3MultimodalConfig(text_config=text_config(args))
    model = Qwen3MultimodalForConditionalGeneration(config).train()
    corpus = data["lm"]
    vocab = torch.tensor(sorted({t for row in corpus for t in row} | {PAD}))
    remap = torch.full((config.text_config.vocab_size,), -100)
    remap[vocab] = torch.arange(len(vocab))
    table = model.model.embed_tokens.weight  # tied with lm_head
    table.requires_grad_(False)
    rows = torch.nn.Parameter(table[vocab].clone())
    params = [rows] + [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.pretrain_lr, weight_decay=0.0, fused=True)
    rng = random.Random(args.seed)
    started, losses = time.perf_counter(), []
    for step in range(args.pretrain_steps):
        ids, mask = pad_batch(rng.sample(corpus, args.batch_size))
        small_ids = remap[ids]
        hidden = model.model(inputs_embeds=rows[small_ids], attention_mask=mask).last_hidden_state[:, :-1]
        logits = hidden @ rows.T  # tied head over the corpus ids: [B, S-1, |V|]
        targets = small_ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == args.pretrain_steps - 1:
            print(f"  pretrain step {step:4d}  loss {loss.item():.3f}", file=sys.stderr, flush=True)
    with torch.no_grad():
        table[vocab] = rows
    table.requires_grad_(True)
    model.save_pretrained(folder)
    return {
        "pretrain_seconds": time.perf_counter() - started,
        "pretrain_loss": sum(losses[-20:]) / 20,
        "corpus_vocab": len(vocab),
    }


# ---- one fine-tuning arm (own process) -----------------------------------------------------------------------------

# learning rates: the best of a small sweep per arm on the validation split of this task (full 1e-4 / 3e-4; LoRA and
# head 2e-3 / 5e-3 / 1e-2 / 2e-2); LoRA is sensitive to it (lora-all-r8 at 5e-3 stalled at 82 %). Override with
# --lr ARM=LR.
ARMS = {
    "full": {"lr": 3e-4},
    # the floor: only the new score head trains (a linear probe of the base's last-token state)
    "head-only": {"lr": 2e-3},
    "lora-qv-r8": {"lr": 5e-3, "rank": 8, "targets": ("attention-qv",)},
    "lora-all-r8": {"lr": 2e-3, "rank": 8, "targets": ("attention",), "include_mlp": True},
}


def arm_lr(args, arm: str) -> float:
    overrides = dict(item.split("=", 1) for item in args.lr or [])
    return float(overrides.get(arm, ARMS[arm]["lr"]))


def memory_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process. Not ru_maxrss: Linux carries that over exec from the parent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def evaluate(model, rows, labels, batch=100) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            ids, mask = pad_batch(rows[i : i + batch])
            pred = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
            correct += int((pred == torch.tensor(labels[i : i + batch])).sum())
    model.train()
    return correct / len(rows)


def prepare_arm(args):
    """(model with only this arm's parameters trainable, head description, embedding size, optimizer, lr)."""
    from transformers import AutoModelForSequenceClassification

    import transformers_qwen3  # noqa: F401  (registers our classes with the Auto mappings)
    from transformers_qwen3.training.lora import apply_lora, lora_config

    arm = ARMS[args.arm]
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(Path(args.work) / "base", num_labels=2)
    head = f"{type(model).__name__}.score: {type(model.score).__name__}(bias={model.score.bias is not None})"
    embedding = model.model.embed_tokens.weight.numel()
    if args.arm == "head-only":
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("score."))
    elif args.arm != "full":
        config = lora_config(
            rank=arm["rank"],
            alpha=2 * arm["rank"],
            targets=arm["targets"],
            include_mlp=arm.get("include_mlp", False),
            task_type="SEQ_CLS",
        )
        model = apply_lora(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # fused AdamW (one kernel over all tensors) keeps the full arm's optimizer step as cheap as torch makes it
    lr = arm_lr(args, args.arm)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    return model, head, embedding, optimizer, lr


def fine_tune(model, optimizer, data: dict, args) -> dict:
    """The arm's training steps (timed: wall and CPU) until the validation target or ``--steps``."""
    rows, labels = data["train"], data["train_labels"]
    order = random.Random(args.seed)  # the same batches, in the same order, for every arm
    batches = [order.sample(range(len(rows)), args.batch_size) for _ in range(args.steps)]
    wall = cpu = 0.0
    reached, val_accuracy, curve = None, 0.0, []
    for step, index in enumerate(batches, 1):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        ids, mask = pad_batch([rows[i] for i in index])
        loss = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([labels[i] for i in index])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        wall, cpu = wall + time.perf_counter() - wall0, cpu + time.process_time() - cpu0
        if step % args.eval_every == 0 or step == args.steps:  # validation is not counted as training time
            val_accuracy = evaluate(model, data["val"], data["val_labels"])
            curve.append((step, round(val_accuracy, 3)))
            if val_accuracy >= args.target:
                reached = step
                break
    return {
        "steps": step,
        "reached": reached,
        "val_accuracy": val_accuracy,
        "curve": curve,
        "wall_s": wall,
        "cpu_s": cpu,
        "final_loss": loss.item(),
    }


def run_arm(args) -> dict:
    from transformers_qwen3.training.finetune import parameter_counts

    torch.set_num_threads(args.threads)
    data = torch.load(Path(args.work) / "data.pt")
    model, head, embedding, optimizer, lr = prepare_arm(args)
    trainable, total = parameter_counts(model)
    trainable_embedding = embedding if args.arm == "full" else 0
    rss_loaded = memory_mb("VmRSS")
    trained = fine_tune(model, optimizer, data, args)
    return {
        "arm": args.arm,
        "trainable": trainable,
        "total": total,
        "fraction": trainable / total,
        "non_embedding_total": total - embedding,
        "non_embedding_trainable": trainable - trainable_embedding,
        "lr": lr,
        **trained,
        "peak_rss_mb": memory_mb("VmHWM"),
        "loaded_rss_mb": rss_loaded,
        "accuracy": evaluate(model, data["test"], data["test_labels"]),
        "head": head,
    }


# ---- driver --------------------------------------------------------------------------------------------------------


def build_data(args) -> dict:
    from transformers_qwen3.checkpoint.tokenizer import build_qwen3_tokenizer

    tok = build_qwen3_tokenizer()
    test = make_split(args.seed + 1, args.n_test)
    val = make_split(args.seed + 4, args.n_val, exclude={t for t, *_ in test})
    train = make_split(args.seed, args.n_train, exclude={t for t, *_ in test + val})
    # the LM corpus: other reviews (never the test sentences), each followed by a sentence that reflects the overall
    # verdict; the classification label (first clause) is never shown
    rng = random.Random(args.seed + 2)
    held_out = {t for t, *_ in test + val}
    lm = [f"{t} {rng.choice(FOLLOW_UP[y])}" for t, y, _ in make_split(args.seed + 3, args.n_lm, held_out)]

    def encode(texts):
        return [tok.encode(t, add_special_tokens=False) for t in texts]

    return {
        "train": encode([t for t, *_ in train]),
        "train_labels": [first for *_, first in train],
        "val": encode([t for t, *_ in val]),
        "val_labels": [first for *_, first in val],
        "test": encode([t for t, *_ in test]),
        "test_labels": [first for *_, first in test],
        # share of test reviews whose overall verdict differs from the label ("X, but not-X")
        "test_disagree": sum(o != f for _, o, f in test) / len(test),
        "lm": encode(lm),
        "examples": [(t, f) for t, _, f in train[:6]],
    }


def check_head_layout() -> str:
    """Our classification model's parameters vs transformers' Qwen3ForSequenceClassification on one config."""
    from transformers import AutoModelForSequenceClassification, Qwen3Config, Qwen3ForSequenceClassification

    from transformers_qwen3 import Qwen3MultimodalConfig
    from transformers_qwen3.checkpoint.presets import text_config as preset_text

    text = {**preset_text("tiny"), "vocab_size": 512, "pad_token_id": 0, "bos_token_id": None, "eos_token_id": None}
    ours = AutoModelForSequenceClassification.from_config(Qwen3MultimodalConfig(text_config=text, num_labels=2))
    native = Qwen3ForSequenceClassification(Qwen3Config(**text, num_labels=2))
    same = ours.state_dict().keys() == native.state_dict().keys()
    native.load_state_dict(ours.state_dict())
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11]])
    with torch.no_grad():
        diff = (ours(ids).logits - native(ids).logits).abs().max().item()
    return (
        f"{type(ours).__name__} via AutoModelForSequenceClassification: parameter names "
        f"{'identical to' if same else 'DIFFERENT from'} Qwen3ForSequenceClassification, score bias "
        f"{ours.score.bias is not None}, logits max abs diff {diff:.1e}"
    )


def table(results: dict, pretrain_info: dict, args) -> str:
    full = results["full"]
    target = f"{100 * args.target:.0f} %"
    lines = [
        f"| arm | lr | trainable params | of all | of non-embedding | steps (target {target} val) | train CPU s "
        "| CPU saved vs full | train wall s | peak RSS MB | RSS above loaded model MB | test accuracy | vs full |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        saved = "—" if name == "full" else f"{100 * (1 - r['cpu_s'] / full['cpu_s']):.0f} %"
        gap = "—" if name == "full" else f"{100 * (r['accuracy'] - full['accuracy']):+.1f} pt"
        steps = f"{r['steps']}" if r["reached"] else f"{r['steps']} (not reached: {100 * r['val_accuracy']:.1f} %)"
        lines.append(
            f"| {name} | {r['lr']:g} | {r['trainable']:,} | {100 * r['fraction']:.3f} % "
            f"| {100 * r['non_embedding_trainable'] / r['non_embedding_total']:.1f} % | {steps} | {r['cpu_s']:.1f} "
            f"| {saved} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['loaded_rss_mb']:.0f} "
            f"| {100 * r['accuracy']:.1f} % | {gap} |"
        )
    lines.append("")
    lines.append(
        f"Model: hidden {args.hidden}, {args.layers} layers, FFN {args.intermediate}, vocabulary 151,936 (tied), "
        f"{full['total']:,} parameters of which {full['total'] - full['non_embedding_total']:,} embedding. "
        f"Each arm: AdamW (fused), batch {args.batch_size}, the same batch sequence, validation every "
        f"{args.eval_every} steps (not timed), stop at {target} validation accuracy or {args.steps} steps; LoRA alpha "
        f"= 2 x rank. {args.n_train} train / {args.n_val} validation / {args.n_test} test sentences, "
        f"{args.threads} thread(s). Base: {args.pretrain_steps} causal-LM steps on {args.n_lm} unlabelled reviews "
        f"({pretrain_info['pretrain_seconds']:.0f} s, final loss {pretrain_info['pretrain_loss']:.2f}). "
        f"Task: sentiment about the first-mentioned thing; on {100 * args.test_disagree:.0f} % of the test reviews it "
        f"differs from the overall verdict the base was trained to track."
    )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="most fine-tuning steps per arm")
    parser.add_argument("--target", type=float, default=0.98, help="stop an arm at this validation accuracy")
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--n-val", type=int, default=300)
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--n-lm", type=int, default=4000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=768)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", action="append", metavar="ARM=LR", help="override an arm's learning rate")
    parser.add_argument("--pretrain-lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated from {','.join(ARMS)}")
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--keep", type=Path, help="keep data + base in this folder and reuse them on the next run")
    parser.add_argument("--arm", choices=list(ARMS), help=argparse.SUPPRESS)  # internal: run one arm
    parser.add_argument("--work", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def data_and_base(args, work: Path) -> tuple[dict, dict]:
    """The task's data and the pretrained base in ``work``: reused when there, else built (pretraining the base)."""
    if (work / "pretrain.json").is_file():
        print(f"reusing data and base in {work}", file=sys.stderr)
        return torch.load(work / "data.pt"), json.loads((work / "pretrain.json").read_text())
    print("building data (tokenizer) ...", file=sys.stderr, flush=True)
    data = build_data(args)
    torch.save(data, work / "data.pt")
    print("pretraining the base ...", file=sys.stderr, flush=True)
    info = pretrain(args, data, work / "base")
    (work / "pretrain.json").write_text(json.dumps(info))
    return data, info


def run_arms(args, work: Path, argv) -> dict | None:
    """Each arm in its own process (its peak memory is its own); None if one failed (its stderr printed)."""
    results = {}
    for arm in args.arms.split(","):
        print(f"fine-tuning: {arm} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--arm", arm, "--work", str(work)] + (argv or sys.argv[1:])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return None
        r = results[arm] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"  {arm}: accuracy {r['accuracy']:.3f}, cpu {r['cpu_s']:.1f} s, peak {r['peak_rss_mb']:.0f} MB, "
            f"validation curve {r['curve']}",
            file=sys.stderr,
            flush=True,
        )
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.arm:  # child process
        print(json.dumps(run_arm(args)))
        return 0
    torch.set_num_threads(args.threads)
    with contextlib.ExitStack() as stack:
        if args.keep:  # reuse (or create) the data and base here: sweeps over arms / learning rates skip pretraining
            work = args.keep
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-lora-")))
        data, info = data_and_base(args, work)
        print("examples:", *(f"  {t!r} -> {LABELS[y]}" for t, y in data["examples"]), sep="\n", file=sys.stderr)
        args.test_disagree = data["test_disagree"]
        results = run_arms(args, work, argv)
    if results is None:
        return 1
    text = table(results, info, args)
    print(check_head_layout())
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
