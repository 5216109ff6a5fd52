"""`make demo`: the main job, end to end, on the demo model the project trained itself.

1. Get the demo model: rebuilt from the committed trained weights + the seeded embedding table into the cache
   (``~/.cache/transformers-qwen3/demo/``) the first time, reused afterwards (:mod:`transformers_qwen3.demo.model`).
   The folder is in our Hub layout: weights, config with ``auto_map``, the three code files, tokenizer, processor.
2. transformers: load it in a clean Python process where this package cannot be imported (as a Hub user would:
   ``AutoModelForCausalLM`` / ``AutoProcessor`` with ``trust_remote_code=True``) and answer held-out image and audio
   questions of the synthetic task (:mod:`transformers_qwen3.demo.synthetic`, test split) by greedy generation.
3. llama.cpp: convert the folder to GGUF (F16 and Q8_0, each with its mmproj) and answer the same questions with
   llama-cpp-python (text through ``llama_cpp.Llama``, images and audio through ``llama_cpp.mtmd_cpp``, both driven
   by :mod:`transformers_qwen3.runtime.llama_cpp`), each GGUF in a spawned worker process. Needs
   ``transformers_qwen3.convert`` and the patched llama-cpp-python (``make llama-cpp``); without them the demo says
   so and shows the transformers half only.
4. Print a few answers side by side, then each runtime's held-out accuracy and speed.

``transformers-qwen3 demo run --help`` lists the options (question count, threads, which GGUF types).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_PER_KIND = 50  # held-out questions per modality
SHOW_PER_KIND = 4  # shown side by side
DEFAULT_GGUF_TYPES = ("f16", "q8_0")
MAX_NEW_TOKENS = 4  # answers are one word + <|im_end|>

# Runs in a clean interpreter (see main): only transformers + the folder's remote code are importable.
CLEAN_TRANSFORMERS = r"""
import json, sys, time
import torch
folder, questions, out_path, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
import importlib.util
assert importlib.util.find_spec('transformers_qwen3') is None, 'package importable: not a clean process'
from transformers import AutoModelForCausalLM, AutoProcessor
t0 = time.perf_counter()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
load_s = time.perf_counter() - t0
records = [json.loads(line) for line in open(questions, encoding='utf-8')]
answers, seconds = [], []
for rec in records:
    inputs = processor.apply_chat_template(rec['messages'][:1], add_generation_prompt=True, enable_thinking=False,
                                           tokenize=True, return_dict=True, return_tensors='pt')
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    seconds.append(time.perf_counter() - t0)
    answers.append(processor.decode(out[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True).strip())
json.dump({'runtime': 'transformers', 'label': 'transformers fp32', 'class': type(model).__name__, 'module': type(model).__module__,
           'load_s': load_s, 'answers': answers, 'seconds': seconds, 'threads': threads}, open(out_path, 'w'))
""".replace("MAX_NEW_TOKENS", str(MAX_NEW_TOKENS))


class RuntimeUnavailable(RuntimeError):
    """A runtime the demo cannot use here; the message says why and how to get it."""


# --------------------------------------------------------------------------------------------------------------------
# Questions
# --------------------------------------------------------------------------------------------------------------------


def write_questions(folder: Path, n_per_kind: int = N_PER_KIND) -> tuple[Path, list[dict]]:
    """Held-out test questions (images / clips on disk, as a user would have them). Returns the JSONL and records."""
    from .data import DATA_SEED
    from .synthetic import make_dataset

    make_dataset(folder, n_train=0, n_val=0, n_test=2 * n_per_kind, seed=DATA_SEED, force=True)
    path = folder / "test.jsonl"
    return path, [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def question_parts(record: dict) -> tuple[str, str, str]:
    """(kind, media path relative to the data folder, question text) of one record."""
    parts = record["messages"][0]["content"]
    media = next(p for p in parts if p["type"] in ("image", "audio"))
    text = next(p["text"] for p in parts if p["type"] == "text")
    return media["type"], media[media["type"]], text


def truth(record: dict) -> str:
    return record["messages"][1]["content"][0]["text"]


# --------------------------------------------------------------------------------------------------------------------
# transformers, in a clean process
# --------------------------------------------------------------------------------------------------------------------


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    return env


CLEAN_PRELUDE = (
    # -I drops PYTHONPATH and the user site; an editable install still exposes src/ through a .pth hook
    "import sys\n"
    "sys.path[:] = [p for p in sys.path if 'transformers_qwen3' not in p and not p.endswith('/src')]\n"
    # (the editable finder is a class on sys.meta_path, not an instance: read __module__ from it directly)
    "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in str(f.__module__).lower()]\n"
)


def run_transformers(folder: Path, data_dir: Path, questions: Path, threads: int) -> dict:
    out = data_dir / "transformers.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            CLEAN_PRELUDE + CLEAN_TRANSFORMERS,
            str(folder),
            str(questions),
            str(out),
            str(threads),
        ],
        cwd=data_dir,
        env=_clean_env(),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the transformers run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


# --------------------------------------------------------------------------------------------------------------------
# llama.cpp through llama-cpp-python
# --------------------------------------------------------------------------------------------------------------------


def llama_cpp_status() -> str | None:
    """None when the llama.cpp half can run, else why not (and how to fix it)."""
    from ..errors import MissingDependencyError
    from ..runtime.llama_cpp import mtmd_module

    missing = []
    try:
        from ..convert import convert_checkpoint  # noqa: F401
    except ImportError as e:
        missing.append(f"the GGUF converter (transformers_qwen3.convert) is not installed ({e})")
    try:
        mtmd_module("the demo's llama.cpp half")
    except MissingDependencyError as e:
        missing.append(f"{e} ({e.__cause__})")
    return "; ".join(missing) or None


def gguf_files(folder: Path, outtype: str, gguf_dir: Path) -> tuple[Path, Path]:
    """Convert ``folder`` to ``outtype`` once (cached next to it); returns (text model, mmproj)."""
    from ..convert import convert_checkpoint

    name = folder.name
    stamp = gguf_dir / f".{name}-{outtype}.done"
    if stamp.is_file():
        text, mmproj = (gguf_dir / p for p in json.loads(stamp.read_text()))
        if text.is_file() and mmproj.is_file():
            return text, mmproj
    paths = convert_checkpoint(folder, gguf_dir, outtype, name=name, force=True, progress=False)
    text = next(p for p in paths if not p.name.startswith("mmproj-"))
    mmproj = next(p for p in paths if p.name.startswith("mmproj-"))
    stamp.write_text(json.dumps([text.name, mmproj.name]))
    return text, mmproj


def llama_cpp_prompt(processor, question_text: str, kind: str) -> str:
    """Our chat template's prompt text for one question about one picture or clip (its media block still in)."""
    messages = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": question_text}]}]
    return processor.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, enable_thinking=False, tokenize=False
    )


def run_llama_cpp_one(
    gguf: Path, mmproj: Path, data_dir: Path, records: list[dict], threads: int, keep_logits: bool = False
) -> dict:
    """Answer every record with one GGUF; the result mirrors :func:`run_transformers`'s."""
    from ..checkpoint.tokenizer import build_qwen3_tokenizer
    from ..remote.processing_qwen3_multimodal import Qwen3MultimodalProcessor
    from ..runtime.llama_cpp import LlamaCppModel

    processor = Qwen3MultimodalProcessor(tokenizer=build_qwen3_tokenizer())
    t0 = time.perf_counter()
    answers, seconds, first_logits = [], [], []
    with LlamaCppModel(gguf, mmproj, threads) as model:
        load_s = time.perf_counter() - t0
        for rec in records:
            kind, media, question = question_parts(rec)
            prompt = model.media_prompt(llama_cpp_prompt(processor, question, kind), [kind])
            t0 = time.perf_counter()
            tokens, _, first = model.answer(prompt, [model.file_bitmap(data_dir / media)], MAX_NEW_TOKENS)
            seconds.append(time.perf_counter() - t0)
            answers.append(model.detokenize(tokens).strip())
            if keep_logits:
                first_logits.append(first)
    out = {"runtime": "llama.cpp", "gguf": gguf.name, "mmproj": mmproj.name, "load_s": load_s}
    out |= {"answers": answers, "seconds": seconds, "threads": threads}
    if keep_logits:
        out["first_logits"] = first_logits
    return out


def _answer_in_child(log: Path, *args) -> dict:
    """:func:`run_llama_cpp_one` in the worker process, llama.cpp's own log (fd 2) going to ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    return run_llama_cpp_one(*args)


def run_isolated(gguf: Path, mmproj: Path, data_dir: Path, records: list[dict], threads: int) -> dict:
    """:func:`run_llama_cpp_one` in a fresh (spawned) process: a crash in native code ends that process, not the
    demo, and is reported with the end of llama.cpp's log."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import get_context

    log = data_dir / f"llama-{gguf.stem}.log"
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        job = pool.submit(_answer_in_child, log, gguf, mmproj, data_dir, records, threads)
        try:
            return job.result()
        except BrokenProcessPool as e:
            tail = log.read_text(errors="replace")[-4000:] if log.is_file() else ""
            raise RuntimeError(f"llama.cpp crashed on {gguf.name}; the end of its log:\n{tail}") from e


def run_llama_cpp(folder: Path, data_dir: Path, records: list[dict], outtypes, threads: int) -> list[dict]:
    """Convert and answer with each GGUF type, each in its own process (a llama.cpp crash must not end the demo)."""
    reason = llama_cpp_status()
    if reason:
        raise RuntimeUnavailable(reason)
    from .model import cache_root

    gguf_dir = cache_root() / "demo" / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for outtype in outtypes:
        t0 = time.perf_counter()
        text, mmproj = gguf_files(folder, outtype, gguf_dir)
        convert_s = time.perf_counter() - t0
        result = run_isolated(text, mmproj, data_dir, records, threads)
        result["label"] = f"llama.cpp {outtype.upper()}"
        result["convert_s"] = convert_s
        result["bytes"] = text.stat().st_size + mmproj.stat().st_size
        results.append(result)
    return results


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------


def accuracy(records: list[dict], answers: list[str]) -> dict[str, float]:
    hits: dict[str, list[bool]] = {"image": [], "audio": []}
    for rec, ans in zip(records, answers, strict=True):
        hits[question_parts(rec)[0]].append(ans == truth(rec))
    return {k: sum(v) / len(v) for k, v in hits.items() if v}


def _mark(answer: str, expected: str) -> str:
    return f"{answer or '(nothing)'} {'✓' if answer == expected else '✗'}"


def print_report(records: list[dict], results: list[dict], show_per_kind: int = SHOW_PER_KIND) -> None:
    labels = [r["label"] for r in results]
    shown = []
    for kind in ("image", "audio"):  # one question of each task first (their text differs), then in order
        of_kind = [j for j, rec in enumerate(records) if question_parts(rec)[0] == kind]
        firsts = {question_parts(records[j])[2].split()[1]: j for j in reversed(of_kind)}  # "What colour ..."
        picked = sorted(firsts.values())[:show_per_kind]
        picked += [j for j in of_kind if j not in picked][: show_per_kind - len(picked)]
        shown += sorted(picked)
    rows = [["", "question", "truth", *labels]]
    for i in shown:
        kind, media, question = question_parts(records[i])
        rows.append(
            [
                f"[{kind}] {Path(media).name}",
                question,
                truth(records[i]),
                *[_mark(r["answers"][i], truth(records[i])) for r in results],
            ]
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    print()
    for n, row in enumerate(rows):
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))

    n_img = sum(question_parts(r)[0] == "image" for r in records)
    n_aud = len(records) - n_img
    print(f"\nHeld-out accuracy ({n_img} image + {n_aud} audio test questions, exact match) and speed:\n")
    header = ["runtime", "image", "audio", "ms / question", "load s", "threads"]
    table = [header]
    for r in results:
        acc = accuracy(records, r["answers"])
        ms = 1000 * sum(r["seconds"]) / len(r["seconds"])
        table.append(
            [
                r["label"],
                f"{acc.get('image', 0):.0%}",
                f"{acc.get('audio', 0):.0%}",
                f"{ms:.0f}",
                f"{r['load_s']:.1f}",
                str(r["threads"]),
            ]
        )
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    for n, row in enumerate(table):
        print(
            "  "
            + "  ".join(
                cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
    print("\n  ms / question: prompt (with the image or clip) + greedy answer, batch 1, CPU.")


def _human(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", type=int, default=N_PER_KIND, help="held-out questions per modality")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="CPU threads per runtime")
    parser.add_argument("--gguf-types", default=",".join(DEFAULT_GGUF_TYPES), help="GGUF types for llama.cpp")
    parser.add_argument("--no-llama-cpp", action="store_true", help="transformers only")


def show_model() -> Path:
    """Get the demo model's folder (rebuilt into the cache on first use) and say what it is."""
    from .model import RECORD_FILE, demo_checkpoint

    print("== the demo model ==")
    record = json.loads(RECORD_FILE.read_text()) if RECORD_FILE.is_file() else {}
    t0 = time.perf_counter()
    folder = demo_checkpoint(verbose=True)
    print(
        f"A Qwen3-Multimodal trained by this project on its synthetic image + audio task "
        f"({record.get('parameters', {}).get('total', 0) / 1e6:.1f} M parameters, the real Qwen3 tokenizer)."
    )
    print(f"Hub-layout folder ({time.perf_counter() - t0:.1f}s): {folder}")
    for path in sorted(folder.iterdir()):
        print(f"  {path.name:36s} {_human(path.stat().st_size):>9s}")
    return folder


def transformers_half(folder: Path, data_dir: Path, questions: Path, n_records: int, threads: int) -> dict:
    print("\n== transformers (clean process: AutoModelForCausalLM + AutoProcessor, trust_remote_code) ==")
    r = run_transformers(folder, data_dir, questions, threads)
    print(
        f"loaded {r['class']} from the folder's remote code ({r['module'].split('.')[0]}) in {r['load_s']:.1f}s; "
        f"answered {n_records} questions"
    )
    return r


def llama_cpp_half(folder: Path, data_dir: Path, records: list[dict], args: argparse.Namespace) -> list[dict]:
    print("\n== llama.cpp (llama-cpp-python + mtmd) ==")
    if args.no_llama_cpp:
        print("skipped (--no-llama-cpp)")
        return []
    outtypes = [t.strip().lower() for t in args.gguf_types.split(",") if t.strip()]
    try:
        results = run_llama_cpp(folder, data_dir, records, outtypes, args.threads)
    except RuntimeUnavailable as e:
        print(f"NOT RUN: {e}.\nOnly the transformers half is shown; nothing below comes from llama.cpp.")
        return []
    for r in results:
        print(
            f"{r['gguf']} + {r['mmproj']} ({_human(r['bytes'])}; converted or found in the cache in "
            f"{r['convert_s']:.1f}s)"
        )
    return results


def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    folder = show_model()
    with tempfile.TemporaryDirectory(prefix="qwen3-demo-") as tmp:
        questions, records = write_questions(Path(tmp) / "questions", args.questions)
        data_dir = questions.parent
        results = [transformers_half(folder, data_dir, questions, len(records), args.threads)]
        results += llama_cpp_half(folder, data_dir, records, args)
        print_report(records, results)
    print(f"\ndemo finished in {time.perf_counter() - t_start:.0f}s")
    return 0
