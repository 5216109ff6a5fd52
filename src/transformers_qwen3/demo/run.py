"""`make demo`: the main job, end to end, on the demo model the project trained itself.

1. Get the demo model: rebuilt from the committed trained weights + the seeded embedding table into the cache
   (``~/.cache/transformers-qwen3/demo/``) the first time, reused afterwards (:mod:`transformers_qwen3.demo.model`).
   The folder is in our Hub layout: weights, config with ``auto_map``, the three code files, tokenizer, processor.
2. transformers: load it in a clean Python process where this package cannot be imported (as a Hub user would:
   ``AutoModelForCausalLM`` / ``AutoProcessor`` with ``trust_remote_code=True``) and answer held-out image and audio
   questions of the synthetic task (:mod:`transformers_qwen3.demo.synthetic`, test split) by greedy generation.
3. llama.cpp: convert the folder to GGUF (F16 and Q8_0, each with its mmproj) and answer the same questions with
   llama-cpp-python (text through ``llama_cpp.Llama``, images and audio through ``llama_cpp.mtmd_cpp``). Needs
   ``transformers_qwen3.convert`` and the patched llama-cpp-python (``make llama-cpp``); without them the demo says
   so and shows the transformers half only.
4. Print a few answers side by side, then each runtime's held-out accuracy and speed.

``python -m transformers_qwen3.demo.run --help`` lists the options (question count, threads, which GGUF types).
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
    from .model import DATA_SEED
    from .synthetic import make_dataset

    make_dataset(folder, n_train=0, n_val=0, n_test=2 * n_per_kind, seed=DATA_SEED, overwrite=True)
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
    import importlib.util

    missing = []
    try:
        from ..convert import convert_checkpoint  # noqa: F401
    except ImportError as e:
        missing.append(f"the GGUF converter (transformers_qwen3.convert) is not installed ({e})")
    if importlib.util.find_spec("llama_cpp") is None:
        missing.append("llama-cpp-python is not installed (`make llama-cpp` builds the patched wheel)")
    else:
        try:
            import llama_cpp.mtmd_cpp  # noqa: F401
        except Exception as e:  # noqa: BLE001 - a wheel without libmtmd raises OSError, ImportError ...
            missing.append(f"llama-cpp-python has no usable mtmd library ({type(e).__name__}: {e})")
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


class LlamaCppModel:
    """A GGUF text model + its mmproj in llama.cpp: greedy answers and the logits of the first answer token.

    The prompt is our chat template's text with each media part replaced by mtmd's marker (mtmd writes the
    ``<|vision_start|>``/``<|audio_start|>`` wrappers and the embeddings itself); the whole prompt goes through
    ``mtmd_helper_eval_chunks`` and the answer is decoded one token at a time after it.
    """

    def __init__(self, gguf: Path, mmproj: Path, n_threads: int, n_ctx: int = 512):
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd

        self.llama_cpp, self.mtmd = llama_cpp, mtmd
        self.llm = llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_ubatch=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            verbose=False,
        )
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = False
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = False
        self.ctx = mtmd.mtmd_init_from_file(str(mmproj).encode(), self.llm.model, params)
        if not self.ctx:
            self.llm.close()
            raise RuntimeError(f"mtmd could not load {mmproj.name} next to {gguf.name} (see llama.cpp's log)")
        self.marker = mtmd.mtmd_default_marker().decode()
        self.n_vocab = self.llm.n_vocab()
        self.eog = {
            i
            for i in range(self.n_vocab - 512, self.n_vocab)
            if llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, i)
        }

    def close(self):
        if self.ctx:
            self.mtmd.mtmd_free(self.ctx)
            self.ctx = None
        self.llm.close()

    def _logits(self):
        import numpy as np

        ptr = self.llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def answer(self, prompt: str, media_path: Path, max_new_tokens: int = MAX_NEW_TOKENS):
        """Greedy answer to ``prompt`` (containing one marker) about ``media_path``; returns (token ids, the first
        step's logits as a float32 numpy array)."""
        import ctypes

        from llama_cpp._internals import LlamaBatch

        llama_cpp, mtmd = self.llama_cpp, self.mtmd
        self.llm._ctx.kv_cache_clear()
        bitmap = mtmd.mtmd_helper_bitmap_init_from_file(self.ctx, str(media_path).encode(), False)
        if not bitmap:
            raise RuntimeError(f"mtmd could not read {media_path}")
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            text = mtmd.mtmd_input_text()
            encoded = prompt.encode()
            text.text, text.text_len, text.add_special, text.parse_special = encoded, len(encoded), False, True
            bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            rc = mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), bitmaps, 1)
            if rc != 0:
                raise RuntimeError(f"mtmd_tokenize failed ({rc}) on {media_path}")
            n_past = llama_cpp.llama_pos(0)
            rc = mtmd.mtmd_helper_eval_chunks(
                self.ctx, self.llm._ctx.ctx, chunks, 0, 0, self.llm.n_batch, True, ctypes.byref(n_past)
            )
            if rc != 0:
                raise RuntimeError(f"mtmd_helper_eval_chunks failed ({rc}) on {media_path}")
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)
        first = self._logits()
        logits, tokens, pos = first, [], n_past.value
        batch = LlamaBatch(n_tokens=1, embd=0, n_seq_max=1, verbose=False)
        try:
            for _ in range(max_new_tokens):
                token = int(logits.argmax())
                if token in self.eog:
                    break
                tokens.append(token)
                batch.set_batch([token], n_past=pos, logits_all=False)
                self.llm._ctx.decode(batch)
                pos += 1
                logits = self._logits()
        finally:
            batch.close()
        return tokens, first

    def detokenize(self, tokens) -> str:
        return self.llm.detokenize(tokens).decode("utf-8", errors="replace")


def llama_cpp_prompt(processor, question_text: str, kind: str, marker: str) -> str:
    """Our chat template's prompt text with the media part written as mtmd's marker."""
    messages = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": question_text}]}]
    prompt = processor.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, enable_thinking=False, tokenize=False
    )
    wrapped = {
        "image": "<|vision_start|><|image_pad|><|vision_end|>",
        "audio": "<|audio_start|><|audio_pad|><|audio_end|>",
    }
    if wrapped[kind] not in prompt:
        raise RuntimeError(f"the chat template did not write {wrapped[kind]!r} for a {kind} part: {prompt!r}")
    return prompt.replace(wrapped[kind], marker)


def run_llama_cpp_one(
    gguf: Path, mmproj: Path, data_dir: Path, records: list[dict], threads: int, keep_logits: bool = False
) -> dict:
    """Answer every record with one GGUF; the result mirrors :func:`run_transformers`'s."""
    from ..checkpoint.tokenizer import build_qwen3_tokenizer
    from ..remote.processing_qwen3_multimodal import Qwen3MultimodalProcessor

    processor = Qwen3MultimodalProcessor(tokenizer=build_qwen3_tokenizer())
    t0 = time.perf_counter()
    model = LlamaCppModel(gguf, mmproj, threads)
    load_s = time.perf_counter() - t0
    answers, seconds, first_logits = [], [], []
    try:
        for rec in records:
            kind, media, question = question_parts(rec)
            prompt = llama_cpp_prompt(processor, question, kind, model.marker)
            t0 = time.perf_counter()
            tokens, first = model.answer(prompt, data_dir / media)
            seconds.append(time.perf_counter() - t0)
            answers.append(model.detokenize(tokens).strip())
            if keep_logits:
                first_logits.append(first)
    finally:
        model.close()
    out = {
        "runtime": "llama.cpp",
        "gguf": gguf.name,
        "mmproj": mmproj.name,
        "load_s": load_s,
        "answers": answers,
        "seconds": seconds,
        "threads": threads,
    }
    if keep_logits:
        out["first_logits"] = first_logits
    return out


def run_llama_cpp(folder: Path, data_dir: Path, questions: Path, outtypes, threads: int) -> list[dict]:
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
        out = data_dir / f"llama-{outtype}.json"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "transformers_qwen3.demo.run",
                "--llama-cpp-worker",
                str(text),
                str(mmproj),
                str(data_dir),
                str(questions),
                str(out),
                str(threads),
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"llama.cpp run on {text.name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        result = json.loads(out.read_text())
        result["label"] = f"llama.cpp {outtype.upper()}"
        result["convert_s"] = convert_s
        result["bytes"] = text.stat().st_size + mmproj.stat().st_size
        results.append(result)
    return results


def _llama_cpp_worker(argv) -> int:
    gguf, mmproj, data_dir, questions, out, threads = argv
    records = [json.loads(line) for line in Path(questions).read_text(encoding="utf-8").splitlines()]
    result = run_llama_cpp_one(Path(gguf), Path(mmproj), Path(data_dir), records, int(threads))
    Path(out).write_text(json.dumps(result))
    return 0


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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--llama-cpp-worker"]:
        return _llama_cpp_worker(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m transformers_qwen3.demo.run", description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=N_PER_KIND, help="held-out questions per modality")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="CPU threads per runtime")
    parser.add_argument("--gguf-types", default=",".join(DEFAULT_GGUF_TYPES), help="GGUF types for llama.cpp")
    parser.add_argument("--no-llama-cpp", action="store_true", help="transformers only")
    args = parser.parse_args(argv)

    from .model import TRAINED_FILE, demo_checkpoint

    t_start = time.perf_counter()
    print("== the demo model ==")
    record = (
        json.loads((TRAINED_FILE.parent / "training.json").read_text())
        if (TRAINED_FILE.parent / "training.json").is_file()
        else {}
    )
    t0 = time.perf_counter()
    folder = demo_checkpoint(verbose=True)
    print(
        f"A Qwen3-Multimodal trained by this project on its synthetic image + audio task "
        f"({record.get('parameters', {}).get('total', 0) / 1e6:.1f} M parameters, the real Qwen3 tokenizer)."
    )
    print(f"Hub-layout folder ({time.perf_counter() - t0:.1f}s): {folder}")
    for path in sorted(folder.iterdir()):
        print(f"  {path.name:36s} {_human(path.stat().st_size):>9s}")

    with tempfile.TemporaryDirectory(prefix="qwen3-demo-") as tmp:
        data_dir = Path(tmp)
        questions, records = write_questions(data_dir / "questions", args.questions)
        data_dir = questions.parent

        print("\n== transformers (clean process: AutoModelForCausalLM + AutoProcessor, trust_remote_code) ==")
        results = [run_transformers(folder, data_dir, questions, args.threads)]
        r = results[0]
        print(
            f"loaded {r['class']} from the folder's remote code ({r['module'].split('.')[0]}) in {r['load_s']:.1f}s; "
            f"answered {len(records)} questions"
        )

        print("\n== llama.cpp (llama-cpp-python + mtmd) ==")
        outtypes = [t.strip().lower() for t in args.gguf_types.split(",") if t.strip()]
        if args.no_llama_cpp:
            print("skipped (--no-llama-cpp)")
        else:
            try:
                llama = run_llama_cpp(folder, data_dir, questions, outtypes, args.threads)
            except RuntimeUnavailable as e:
                print(f"NOT RUN: {e}.\nOnly the transformers half is shown; nothing below comes from llama.cpp.")
            else:
                for r in llama:
                    print(
                        f"{r['gguf']} + {r['mmproj']} ({_human(r['bytes'])}; converted or found in the cache in "
                        f"{r['convert_s']:.1f}s)"
                    )
                results += llama

        print_report(records, results)
    print(f"\ndemo finished in {time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
