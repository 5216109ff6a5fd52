"""`transformers-qwen3 verify MODEL GGUF [--mmproj MMPROJ]`: run a GGUF in llama.cpp and compare with transformers.

Checks, each a function in `CHECKS` returning a `Result` (one line each in the report, exit status 1 if any fails):

- ``tokenizer``: llama.cpp's tokenization of the fixed prompts equals transformers'.
- ``text_logits``: the same token ids through both runtimes, every position's logits compared. llama.cpp runs with
  an F32 KV cache (the default F16 cache alone costs ~5e-4 relative error). An F32 GGUF is compared with the
  checkpoint itself: relative error (Frobenius norm over all logits) ≤ 1e-4. Any other type is compared with
  transformers running on *the GGUF's own weights* (gguf-py dequantizes them into the model), which isolates
  the runtime from the quantization error: top-1 agreement and KL(transformers ‖ llama.cpp) per position, with the
  relative error reported alongside.

With ``--mmproj`` (MODEL in our layout), for each encoder the mmproj holds:

- ``image_embeddings``: the rows mtmd hands the text model for a 32-pixel-aligned image ([main | deepstack …]) vs
  our vision tower's `get_image_features`.
- ``audio_embeddings``: the same for 2.5 s and 9.5 s clips vs `get_audio_features`: equal token counts, the
  features, and zero padding beyond the text width (no deepstack at audio positions). Needs the patched
  llama.cpp (ggml_patches/): stock mtmd refuses a vision+audio mmproj for a deepstack model.
- ``generation``: image+text, audio+text and image+audio+text chats rendered by our processor and chat template;
  transformers `generate` vs mtmd's chunks + llama.cpp greedy decoding: same prompt length, same greedy tokens,
  and the last prompt position's logits within the embedding limit of the text file's type.

Before the first check, every input is checked once: MODEL with `validate_folder` (the check every verb shares), each
GGUF read by gguf-py (a truncated or corrupt file is one `GGUFFileError`, not numpy's reshape error), and
llama-cpp-python installed (`MissingDependencyError` naming `make llama-cpp`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch

from ..convert.errors import ConversionError
from ..convert.tensor_map import TEXT_TENSORS, hf_name
from ..formats import gguf_file
from ..formats.folder import LAYOUTS, open_checkpoint, validate_folder
from ..formats.gguf_file import architecture, read_gguf_cached
from .llama_cpp import LlamaCppModel, llama_cpp_module, prompt_logits, tokenize
from .metrics import compare_logits

# Fixed prompts: plain text, Chinese, code, and a chat turn with special tokens.
PROMPTS = (
    "The quick brown fox jumps over the lazy dog. In 1905, Albert Einstein published four papers",
    "你好，世界！今天的天气很好，我们去公园散步吧。",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
)

# Pass criteria. F32: against the checkpoint. Others: against transformers on the GGUF's dequantized weights, so
# what remains is llama.cpp's arithmetic (its matmuls round activations to F16 / BF16 / 8-bit blocks), not the
# weights' rounding. The limit is on the logits' relative error; top-1 agreement and KL are reported, with a loose
# floor on top-1 only: random test models have near-flat logits, where argmax flips on ties of 1e-6.
F32_MAX_REL_ERR = 1e-4
MAX_REL_ERR = {"F16": 2e-3, "BF16": 1e-2, "Q8_0": 3e-2, "default": 6e-2}
MIN_TOP1 = 0.9


@dataclass
class Result:
    name: str
    passed: bool
    summary: str
    metrics: dict = field(default_factory=dict)


@dataclass
class Context:
    model: Path
    gguf: Path
    mmproj: Path | None
    n_threads: int
    prompts: tuple[str, ...] = PROMPTS
    _tokenizer: object = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            import transformers_qwen3  # noqa: F401  (registers our tokenizer and model classes)

            self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        return self._tokenizer

    def token_ids(self) -> list[list[int]]:
        return [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in self.prompts]


# --- transformers side --------------------------------------------------------------------------------------------
def load_transformers_model(folder: Path):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    import transformers_qwen3  # noqa: F401  (registers qwen3_multimodal with the Auto classes)

    model_type = open_checkpoint(folder).model_type
    auto = AutoModelForImageTextToText if model_type == "qwen3_vl" else AutoModelForCausalLM
    model = auto.from_pretrained(folder, dtype=torch.float32)
    return model.eval()


def dequantized_text_state(gguf_path: Path, model_type: str) -> dict[str, torch.Tensor]:
    """The GGUF's text weights, dequantized by gguf-py, under the checkpoint's own parameter names."""
    renames = LAYOUTS[model_type].key_renames
    reader = read_gguf(gguf_path)
    state = {}
    for t in reader.tensors:
        name = hf_name(TEXT_TENSORS, t.name)
        if name is None:
            raise ConversionError(f"{gguf_path.name}: tensor {t.name} is not a text-model tensor")
        for stored, ours in renames:  # back to the checkpoint's layout (Qwen3-VL: model.language_model.)
            if name.startswith(ours):
                name = stored + name[len(ours) :]
                break
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = tuple(int(d) for d in reversed(t.shape))  # ggml order → torch order
        state[name] = torch.from_numpy(np.array(data, dtype=np.float32).reshape(shape))  # a writable copy
    return state


def transformers_logits(model, token_ids: list[list[int]]) -> list[np.ndarray]:
    out = []
    with torch.no_grad():
        for ids in token_ids:
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            out.append(logits.float().numpy())
    return out


# --- GGUF files -------------------------------------------------------------------------------------------------------
def read_gguf(path: Path) -> gguf.GGUFReader:
    """The formats layer's reader, cached per file version: the checks read the same files."""
    return read_gguf_cached(path)


def file_type_name(path: Path) -> str:
    # a file without general.file_type is all F32 to llama.cpp (LLAMA_FTYPE_ALL_F32 = 0 is its default)
    return gguf_file.file_type_name(read_gguf(path)) or "F32"


# --- checks -------------------------------------------------------------------------------------------------------
def check_tokenizer(ctx: Context) -> Result:
    theirs = tokenize(ctx.gguf, list(ctx.prompts))
    mismatches = [p[:30] for p, ids, got in zip(ctx.prompts, ctx.token_ids(), theirs, strict=True) if got != list(ids)]
    ok = not mismatches
    summary = f"{len(ctx.prompts)} prompts tokenized identically" if ok else f"differs on {mismatches}"
    return Result("tokenizer", ok, summary, {"mismatches": mismatches})


def check_text_logits(ctx: Context) -> Result:
    ids = ctx.token_ids()
    ftype = file_type_name(ctx.gguf)
    model = load_transformers_model(ctx.model)
    if ftype != "F32":
        state = dequantized_text_state(ctx.gguf, open_checkpoint(ctx.model).model_type)
        missing, unexpected = model.load_state_dict(state, strict=False)
        text_missing = [k for k in missing if not k.startswith(("model.visual.", "model.audio_tower.", "lm_head."))]
        if unexpected or text_missing:
            raise ConversionError(f"GGUF weights do not fit {ctx.model}: missing {text_missing}, extra {unexpected}")
    ref = transformers_logits(model, ids)
    del model
    got = prompt_logits(ctx.gguf, ids, ctx.n_threads)
    m = compare_logits(ref, got)
    m["file_type"] = ftype
    if ftype == "F32":
        ok = m["rel_err"] <= F32_MAX_REL_ERR
        summary = (
            f"F32: relative error {m['rel_err']:.2e} (limit {F32_MAX_REL_ERR:.0e}), max |Δ| {m['max_abs_diff']:.2e}"
        )
    else:
        limit = MAX_REL_ERR.get(ftype, MAX_REL_ERR["default"])
        ok = m["rel_err"] <= limit and m["top1_agreement"] >= MIN_TOP1
        summary = (
            f"{ftype} vs its dequantized weights: relative error {m['rel_err']:.2e} (limit {limit:.0e}), "
            f"top-1 {m['top1_agreement']:.1%} (min {MIN_TOP1:.0%}), KL {m['kl_mean']:.1e}"
        )
    return Result("text_logits", ok, summary, m)


# --- media through mtmd (llama_cpp.mtmd_cpp) vs our towers -----------------------------------------------------------
# A 32-pixel-aligned image (128 x 96 → 4 x 3 merged tokens): neither runtime resizes it, so the comparison sees the
# towers, not two resize kernels. Audio: 2.5 s and 9.5 s (crosses the 100-frame chunk and 800-frame window edges).
IMAGE_SIZE = (128, 96)
AUDIO_SECONDS = (2.5, 9.5)
SAMPLE_RATE = 16000
# relative error limits (Frobenius norm over all tokens and features) by the mmproj's file type
MAX_EMBD_REL_ERR = {"F32": 1e-3, "F16": 1e-2, "BF16": 3e-2, "default": 5e-2}


def synthetic_image(size: tuple[int, int] = IMAGE_SIZE):
    from PIL import Image

    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    rgb = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1) + rng.normal(0, 20, (h, w, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def synthetic_audio(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1234 * t * (1 + t / 10))
    return (tone + 0.05 * rng.normal(size=t.shape)).astype(np.float32)


def _mtmd(ctx: Context) -> LlamaCppModel:
    """The text GGUF + mmproj in llama.cpp, as the media checks open them (n_ctx 512)."""
    return LlamaCppModel(ctx.gguf, ctx.mmproj, ctx.n_threads)


def _embd_limit(mmproj: Path) -> float:
    return MAX_EMBD_REL_ERR.get(file_type_name(mmproj), MAX_EMBD_REL_ERR["default"])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b.astype(np.float64)), 1e-30))


def _our_model_and_encoder(ctx: Context):
    if open_checkpoint(ctx.model).model_type != "qwen3_multimodal":
        raise ConversionError("media embedding checks compare with our towers: MODEL must be our layout")
    from transformers_qwen3.remote.processing_qwen3_multimodal import MediaEncoder

    return load_transformers_model(ctx.model), MediaEncoder.from_folder(ctx.model)


def check_image_embeddings(ctx: Context) -> Result:
    model, encoder = _our_model_and_encoder(ctx)
    image = synthetic_image()
    inputs, _ = encoder.encode_images([image])
    with torch.no_grad():
        out = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    # per-image tuples, as Qwen3-VL's; mtmd's row layout for a deepstack model: [main | deepstack_0 | deepstack_1 …]
    main = torch.cat(out.pooler_output)
    deepstack = [torch.cat(features) for features in out.deepstack_features]
    ref = torch.cat([main, *deepstack], dim=-1).float().numpy()
    with _mtmd(ctx) as llama:
        got = llama.embed(llama.image_bitmap(image))
    limit = _embd_limit(ctx.mmproj)
    m = {
        "tokens_ours": ref.shape[0],
        "tokens_mtmd": got.shape[0],
        "width_ours": ref.shape[1],
        "width_mtmd": got.shape[1],
    }
    if ref.shape != got.shape:
        return Result("image_embeddings", False, f"shape: ours {ref.shape}, mtmd {got.shape}", m)
    m["rel_err"] = _rel(got, ref)
    ok = m["rel_err"] <= limit
    return Result(
        "image_embeddings",
        ok,
        f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} image, {ref.shape[0]} tokens: relative "
        f"error {m['rel_err']:.2e} (limit {limit:.0e})",
        m,
    )


def check_audio_embeddings(ctx: Context) -> Result:
    model, encoder = _our_model_and_encoder(ctx)
    llama = _mtmd(ctx)
    limit = _embd_limit(ctx.mmproj)
    per_clip, ok, parts = {}, True, []
    try:
        for seconds in AUDIO_SECONDS:
            samples = synthetic_audio(seconds)
            inputs, _ = encoder.encode_audio([torch.from_numpy(samples)])
            with torch.no_grad():
                out = model.model.get_audio_features(inputs["input_features"], inputs["feature_attention_mask"])
            ref = out.last_hidden_state.float().numpy()  # [n_tokens, hidden], as Qwen3-Omni's
            got = llama.embed(llama.audio_bitmap(samples))
            entry = {"tokens_ours": ref.shape[0], "tokens_mtmd": got.shape[0]}
            if got.shape[0] != ref.shape[0] or got.shape[1] < ref.shape[1]:
                ok = False
                parts.append(f"{seconds} s: {ref.shape[0]} tokens ours, {got.shape[0]} mtmd")
            else:
                # rows wider than n_embd (deepstack text model) must be zero-padded: no deepstack at audio positions
                entry["rel_err"] = _rel(got[:, : ref.shape[1]], ref)
                entry["padding_max_abs"] = (
                    float(np.abs(got[:, ref.shape[1] :]).max()) if got.shape[1] > ref.shape[1] else 0.0
                )
                ok &= entry["rel_err"] <= limit and entry["padding_max_abs"] == 0.0
                parts.append(f"{seconds} s: {ref.shape[0]} tokens, relative error {entry['rel_err']:.2e}")
            per_clip[f"{seconds}s"] = entry
    finally:
        llama.close()
    return Result("audio_embeddings", ok, "; ".join(parts) + f" (limit {limit:.0e})", per_clip)


# --- greedy generation with media: transformers vs llama.cpp (mtmd) --------------------------------------------------
GENERATION_TOKENS = 8
# (name, media kinds in order, question); media come from synthetic_image / synthetic_audio(AUDIO_SECONDS[0])
GENERATION_PROMPTS = (
    ("image+text", ("image",), "What is in the picture?"),
    ("audio+text", ("audio",), "What do you hear?"),
    ("image+audio+text", ("image", "audio"), "Describe the picture and the sound."),
)


def _processor(folder: Path):
    from transformers import AutoTokenizer

    import transformers_qwen3  # noqa: F401
    from transformers_qwen3.remote.processing_qwen3_multimodal import Qwen3MultimodalProcessor

    if (folder / "processor_config.json").is_file():
        return Qwen3MultimodalProcessor.from_pretrained(folder)
    return Qwen3MultimodalProcessor(tokenizer=AutoTokenizer.from_pretrained(folder))


def check_generation(ctx: Context) -> Result:
    model, _ = _our_model_and_encoder(ctx)
    processor = _processor(ctx.model)
    encoders = mmproj_encoders(ctx.mmproj)
    image, audio = synthetic_image(), synthetic_audio(AUDIO_SECONDS[0])
    # random tiny models tend to repeat one token: the last prompt position's logits are the sharper comparison
    limit = MAX_EMBD_REL_ERR.get(file_type_name(ctx.gguf), MAX_EMBD_REL_ERR["default"])
    ok, parts, metrics = True, [], {}
    needs = {"image": "vision", "audio": "audio"}
    for name, kinds, question in GENERATION_PROMPTS:
        if not {needs[k] for k in kinds} <= encoders:
            continue
        content = [{"type": k, k: image if k == "image" else audio} for k in kinds]
        messages = [{"role": "user", "content": [*content, {"type": "text", "text": question}]}]
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        with torch.no_grad():
            last = model(**inputs).logits[0, -1].float().numpy()
            generated = model.generate(
                **inputs, max_new_tokens=GENERATION_TOKENS, do_sample=False, min_new_tokens=GENERATION_TOKENS
            )
        ours = generated[0, inputs["input_ids"].shape[1] :].tolist()
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        with _mtmd(ctx) as llama:
            prompt = llama.media_prompt(prompt, kinds)
            bitmaps = [llama.image_bitmap(image) if k == "image" else llama.audio_bitmap(audio) for k in kinds]
            # min_new_tokens on our side: both decode exactly GENERATION_TOKENS, end-of-generation included
            theirs, n_prompt, their_last = llama.answer(prompt, bitmaps, GENERATION_TOKENS, stop_at_eog=False)
        same = ours == theirs and n_prompt == inputs["input_ids"].shape[1]
        rel = _rel(their_last, last)
        ok &= same and rel <= limit
        metrics[name] = {
            "transformers": ours,
            "llama_cpp": theirs,
            "prompt_tokens": [inputs["input_ids"].shape[1], n_prompt],
            "last_logits_rel_err": rel,
        }
        parts.append(
            f"{name}: {'same' if same else 'DIFFERENT'} {len(ours)} tokens (prompt {n_prompt} tokens, "
            f"last-position logits relative error {rel:.1e})"
        )
    return Result("generation", ok, "; ".join(parts) + f" (logits limit {limit:.0e})", metrics)


CHECKS: dict[str, tuple[Callable[[Context], Result], str | None]] = {
    # name: (function, the encoder it needs in --mmproj: None, "vision", "audio" or "vision_or_audio")
    "tokenizer": (check_tokenizer, None),
    "text_logits": (check_text_logits, None),
    "image_embeddings": (check_image_embeddings, "vision"),
    "audio_embeddings": (check_audio_embeddings, "audio"),
    "generation": (check_generation, "vision_or_audio"),
}


def mmproj_encoders(path: Path) -> set[str]:
    reader = read_gguf(path)
    out = set()
    for modality, key in (("vision", gguf.Keys.Clip.HAS_VISION_ENCODER), ("audio", gguf.Keys.Clip.HAS_AUDIO_ENCODER)):
        field_ = reader.get_field(key)
        if field_ is not None and field_.contents():
            out.add(modality)
    return out


def verify(
    model: str | os.PathLike,
    gguf_path: str | os.PathLike,
    mmproj: str | os.PathLike | None = None,
    checks: list[str] | None = None,
    n_threads: int | None = None,
) -> list[Result]:
    ctx = Context(
        Path(model), Path(gguf_path), Path(mmproj) if mmproj else None, n_threads or max(1, (os.cpu_count() or 2) // 2)
    )
    for p in (ctx.gguf, ctx.mmproj):
        if p is not None and not p.is_file():
            raise ConversionError(f"{p}: not found; pass the GGUF file(s) `transformers-qwen3 convert` wrote")
    validate_folder(ctx.model)  # one clear error for a bad MODEL folder before anything loads it
    arch = architecture(read_gguf(ctx.gguf))
    if arch == "clip":
        raise ConversionError(
            f"{ctx.gguf} is an mmproj file; pass the text-model GGUF as GGUF and this one with --mmproj"
        )
    if ctx.mmproj is not None and architecture(read_gguf(ctx.mmproj)) != "clip":
        raise ConversionError(f"--mmproj {ctx.mmproj} is not an mmproj file (general.architecture is not clip)")
    encoders = mmproj_encoders(ctx.mmproj) if ctx.mmproj else set()
    names = checks or [
        n
        for n, (_, needs) in CHECKS.items()
        if needs is None or needs in encoders or (needs == "vision_or_audio" and encoders)
    ]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ConversionError(f"unknown check(s) {unknown}; choose from {list(CHECKS)}")
    llama_cpp_module(
        "verify (it runs the GGUF in llama.cpp)"
    )  # every check runs llama.cpp: say it is missing before the first one loads anything
    return [CHECKS[n][0](ctx) for n in names]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="the Hugging Face checkpoint folder the GGUF was converted from")
    parser.add_argument("gguf", type=Path, help="the text-model GGUF")
    parser.add_argument("--mmproj", type=Path, help="the mmproj GGUF (vision / audio towers)")
    parser.add_argument("--check", action="append", choices=list(CHECKS), help="run only these checks")
    parser.add_argument("--threads", type=int, help="llama.cpp threads (default: half the cores)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    results = verify(args.model, args.gguf, args.mmproj, args.check, args.threads)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2, default=_json_default))
    else:
        for r in results:
            print(f"{'PASS' if r.passed else 'FAIL'}  {r.name:<12} {r.summary}")
    return 0 if all(r.passed for r in results) else 1


def _json_default(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return str(x)
