"""The brief's numbers (issue 11, item 7): Qwen3-8B's shape in 4.2 GB, planned and timed in llama.cpp on this CPU.

Three steps, each one sub-command (``all`` runs them in order); everything lands in ``--workdir`` (default /tmp/K4).

``plan``: the plan for ``--budget`` (default 4.2GB) of the ``8b`` preset (36 layers, hidden 4096, FFN 12288, untied
head; 8.19 B parameters), from ``compress.plan.make_plan`` (the ``plan`` verb's planner, unchanged) fed a
calibration *scaled by shape* from the demo model's. Random weights cannot measure an 8B model's sensitivities, so
this is an assumption, stated here and printed with the plan:

- a type's per-weight relative error does not depend on the matrix's shape (K-quants and Q8_0 quantize fixed blocks
  of 32/256 weights), and for an input of no preferred direction the relative error of ``W x`` is that of ``W``:
  the KL a tensor adds is a property of its role (q, k, v, o, gate, up, down, embedding, head) and type, not its
  width;
- depth: layer ``i`` of the 8B takes the demo's value at the same relative depth (demo layer
  ``floor(i * L_demo / L_8b)``), times ``(L_demo / L_8b) ** --depth-exponent`` (default 1: the decoder's total
  sensitivity equals the demo's, shared among 9x as many layers, each adding 1/L of the residual stream). The same
  factor scales the layer-skip and FFN-width KLs;
- FFN width: the demo was measured at 1/3 and 2/3 of its 768 neurons; the 8B's candidates are 1/4, 1/2, 3/4 of
  12288: log KL is interpolated (and extrapolated) linearly in the kept fraction;
- types the calibration did not measure (``Q5_K``, ``Q3_K`` when it has ``Q6_K, Q4_K, Q2_K``): log KL linear in
  bits per weight between the measured neighbours; F16 is the reference (KL 0);
- the embedding and the head: the demo ties them, the 8B does not. ``--demo`` measures the split on the demo model
  (the tied table round-tripped as the input embedding only, then as the output head only; same prompts and tokens
  as the calibration, no importance matrix, as for the tied table); without it, both get the tied table's KL.

``build``: the planned GGUF and, as anchors, llama.cpp's own uniform mixes (``--anchors``, default Q4_K_M and
Q3_K_M), with random weights (N(0, 0.02), norms 1), written tensor by tensor (never the 8B in float32): each
quantized tensor is random float32 rows put through llama.cpp's ``ggml_quantize_chunk`` (``compress.quants``) in
row chunks. To keep the build minutes, not hours, on 2 cores, the decoder layers share the bytes of one quantized
tensor per (type, shape), and token_embd / output repeat one quantized block of 8192 random rows: decode and prompt
speed do not depend on the values (the kernels are data-independent), and the file still holds and reads every
layer's bytes. The anchors' per-tensor types are llama.cpp's
own choice: ``llama_model_quantize`` in dry-run mode over a sparse (hole-only, no disk) F16 file of the same shape.
The tokenizer and chat metadata are the demo folder's (the real Qwen3 vocabulary). Files are ~4-5 GB each.

``time``: each file loaded into memory (``use_mmap=False``; see bench_decode.py), then per repeat: time to first
token of a 32- and a 128-token prompt (KV cache cleared, one ``llama_decode`` of the prompt batch until the first
token's logits are ready and its argmax is taken; tokenizing excluded), and ``--tokens`` single-token decodes after
the 32-token prompt. The bound: this CPU's read bandwidth measured in the same run, in a child process, between the
files (``bench_decode.read_bandwidth``: best of 7 ``torch.sum`` passes over 1 GiB float32 on ``--threads``
threads; L3 is 105 MiB here) → decode tok/s bound = bandwidth / bytes read per token (every tensor but the
token embedding, of which one row, plus the f16 KV cache at the mean context). Load average beside each figure.

    nice -n 10 .venv/bin/python bench/bench_8b_plan.py all --demo ~/.cache/transformers-qwen3/demo/<folder> \\
        --calib demo_calib.safetensors [--budget 4.2GB] [--max-skip N] [--anchors q4_k_m q3_k_m] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from transformers_qwen3.checkpoint.presets import text_config
from transformers_qwen3.compress import calibrate as calib_mod
from transformers_qwen3.compress import plan as plan_mod
from transformers_qwen3.compress.calib_data import BUILTIN_TEXT
from transformers_qwen3.compress.quants import CANDIDATE_TYPES, bits_per_weight

PRESET = "8b"
ROLES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
ROLES += ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def log(msg: str) -> None:
    print(f"# [{time.strftime('%H:%M:%S')}] load {os.getloadavg()[0]:.2f}: {msg}", file=sys.stderr, flush=True)


# --- plan: the demo's calibration scaled to the 8b shape -------------------------------------------------------------
def shapes_8b(text: dict) -> dict[str, list[int]]:
    h, f, hd = text["hidden_size"], text["intermediate_size"], text["head_dim"]
    q, kv = text["num_attention_heads"] * hd, text["num_key_value_heads"] * hd
    per_role = {
        "self_attn.q_proj": [q, h],
        "self_attn.k_proj": [kv, h],
        "self_attn.v_proj": [kv, h],
        "self_attn.o_proj": [h, q],
        "mlp.gate_proj": [f, h],
        "mlp.up_proj": [f, h],
        "mlp.down_proj": [h, f],
    }
    shapes = {f"model.layers.{i}.{r}.weight": s for i in range(text["num_hidden_layers"]) for r, s in per_role.items()}
    shapes[EMBED] = [text["vocab_size"], h]
    if not text["tie_word_embeddings"]:
        shapes[HEAD] = [text["vocab_size"], h]
    return shapes


def fill_types(measured: dict[str, float], types=CANDIDATE_TYPES) -> dict[str, float]:
    """Every candidate type's KL: measured ones kept; F16 is the reference (0); others log-linear in bits per weight
    between the nearest measured types (held flat beyond the measured range)."""
    known = sorted((bits_per_weight(t), math.log(max(kl, 1e-12))) for t, kl in measured.items() if t != "F16")
    out = {}
    for t in types:
        if t in measured:
            out[t] = measured[t]
        elif t == "F16":
            out[t] = 0.0
        else:
            out[t] = math.exp(float(np.interp(bits_per_weight(t), [b for b, _ in known], [v for _, v in known])))
    return out


def width_kl_8b(demo: dict[int, float], demo_full: int, widths: list[int], full: int) -> dict[int, float]:
    """log KL linear in the kept fraction through the demo's measured points (extrapolated with the end slopes)."""
    pts = sorted((w / demo_full, math.log(max(kl, 1e-12))) for w, kl in demo.items())
    out = {}
    for w in widths:
        x = w / full
        if len(pts) == 1:
            out[w] = math.exp(pts[0][1])
            continue
        (x0, y0), (x1, y1) = (pts[0], pts[1]) if x <= pts[1][0] else (pts[-2], pts[-1])
        out[w] = math.exp(y0 + (y1 - y0) * (x - x0) / (x1 - x0))
    return out


def scaled_calibration(demo: calib_mod.Calibration, text: dict, split: dict | None, depth_exponent: float):
    """A Calibration of the 8b shape from the demo's (module docstring: the assumptions)."""
    shapes = shapes_8b(text)
    n_demo, n = len(demo.layer_kl), text["num_hidden_layers"]
    scale = (n_demo / n) ** depth_exponent
    demo_layer = [i * n_demo // n for i in range(n)]
    tensor_kl = {}
    for name in shapes:
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", name)
        if m:
            src = f"model.layers.{demo_layer[int(m.group(1))]}.{m.group(2)}.weight"
            tensor_kl[name] = {t: kl * scale for t, kl in fill_types(demo.tensor_kl[src]).items()}
        else:
            tied = demo.tensor_kl.get(name) or demo.tensor_kl[EMBED]
            measured = (split or {}).get("embed" if name == EMBED else "head") or tied
            tensor_kl[name] = fill_types(measured)
    demo_full = [_demo_ffn(demo, i) for i in range(n_demo)]
    full = text["intermediate_size"]
    widths = calib_mod.candidate_widths(full)
    width_kl = [
        {w: kl * scale for w, kl in width_kl_8b(demo.width_kl[j], demo_full[j], widths, full).items()}
        for j in demo_layer
    ]
    layer_kl = [demo.layer_kl[j] * scale for j in demo_layer]
    # the plan is tied to this description of the 8b stand-in, not to any real weights
    ident = hashlib.sha256(f"8b preset, scaled from {demo.model_sha256}, depth^{depth_exponent}".encode()).hexdigest()
    return calib_mod.Calibration(
        model_sha256=ident,
        shapes=shapes,
        imatrix={},
        imatrix_tokens=0,
        tensor_kl=tensor_kl,
        # random weights have no neuron order: scores descending in index keep the stored order
        neuron_scores=[torch.arange(full, 0, -1, dtype=torch.float64) for _ in range(n)],
        width_kl=width_kl,
        layer_kl=layer_kl,
        tokens=demo.tokens,
        tied_embeddings=text["tie_word_embeddings"],
        extra={"scaled_from": demo.model_sha256, "depth_exponent": depth_exponent, "split": split},
    )


def _demo_ffn(demo, layer: int) -> int:
    return demo.shapes[f"model.layers.{layer}.mlp.down_proj.weight"][1]


def measure_tied_split(folder: Path, types: list[str], max_tokens: int) -> dict:
    """On the demo model: the tied table's KL per type when round-tripped as the input embedding only, and as the
    output head only (the calibration's prompts, no importance matrix)."""
    import torch
    from torch import nn
    from transformers import AutoTokenizer

    from transformers_qwen3.compress.quants import round_trip
    from transformers_qwen3.remote.modeling_qwen3_multimodal import Qwen3MultimodalForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(folder)
    batches = []
    for t in BUILTIN_TEXT:
        b = tok(t, return_tensors="pt", truncation=True, max_length=max_tokens)
        batches.append({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]})
    model = Qwen3MultimodalForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    embed = model.get_input_embeddings()
    original = embed.weight.detach().clone()
    model.lm_head.weight = nn.Parameter(original.clone(), requires_grad=False)  # untie
    embed.weight.requires_grad_(False)
    ref = calib_mod._log_probs(model, batches)
    out: dict = {"embed": {}, "head": {}, "tied": {}}
    with torch.no_grad():
        for t in types:
            q = round_trip(original, t)
            for key, targets in (("embed", (embed,)), ("head", (model.lm_head,)), ("tied", (embed, model.lm_head))):
                for m in targets:
                    m.weight.copy_(q)
                out[key][t] = calib_mod._mean_kl(ref, model, batches)
                for m in targets:
                    m.weight.copy_(original)
            log(f"tied split {t}: embed {out['embed'][t]:.3g}, head {out['head'][t]:.3g}, both {out['tied'][t]:.3g}")
    return out


def step_plan(args) -> dict:
    text = text_config(PRESET)
    demo = calib_mod.load(args.calib)
    split = None
    if args.demo:
        cache = args.workdir / "tied_split.json"
        if cache.is_file():
            split = json.loads(cache.read_text())
        else:
            types = [t for t in demo.tensor_kl[EMBED] if t != "F16"]
            split = measure_tied_split(args.demo, types, args.calib_tokens)
            cache.write_text(json.dumps(split, indent=1))
    calib = scaled_calibration(demo, text, split, args.depth_exponent)
    if args.no_width:  # types (and skips) only: every FFN keeps its full width
        calib.width_kl = [{} for _ in calib.width_kl]
    budget = plan_mod.parse_bytes(args.budget)
    t = time.perf_counter()
    plan = plan_mod.make_plan(calib, text, budget, "gguf", 0, args.max_skip)
    elapsed = time.perf_counter() - t
    params = sum(math.prod(s) for s in calib.shapes.values())
    full_params = params + plan_mod.Shape.from_text_config(text).fixed_bytes // 4
    plan["bench"] = {
        "preset": PRESET,
        "parameters": full_params,
        "bits_per_weight": plan["weight_bytes"] * 8 / full_params,
        "assumption": "sensitivities scaled by shape from the demo calibration (bench/bench_8b_plan.py docstring)",
        "calibration": str(args.calib),
        "tied_split": split,
        "depth_exponent": args.depth_exponent,
        "max_skip": args.max_skip,
        "plan_seconds": elapsed,
    }
    print(plan_mod.table(plan))
    skipped = [e["index"] for e in plan["layers"] if e["skip"]]
    print(
        f"8b preset: {full_params / 1e9:.3f} B parameters; plan {plan['weight_bytes'] / 1e9:.3f} GB = "
        f"{plan['bench']['bits_per_weight']:.3f} bits per weight; layers skipped: {skipped or 'none'}; "
        f"planned in {elapsed:.1f} s"
    )
    out = _plan_path(args)
    out.write_text(json.dumps(plan, indent=1) + "\n")
    log(f"wrote {out}")
    return plan


# --- build: random-weight GGUFs of the 8b shape ----------------------------------------------------------------------
SIGMA = 0.02  # N(0, SIGMA) weights, the usual initializer_range: activations stay finite through 36 layers
CHUNK_ROWS = 8192  # rows generated and quantized at once (token_embd/output: 8192 x 4096 float32 = 128 MiB)
NORMS = ("attn_norm", "attn_q_norm", "attn_k_norm", "ffn_norm")


def gguf_layout(text: dict, widths: list[int]) -> list[tuple[str, tuple[int, ...]]]:
    """(GGUF name, torch-order shape) of every tensor of a Qwen3 text GGUF with these per-layer FFN widths, names
    from convert/tensor_map.py."""
    from transformers_qwen3.convert.tensor_map import TEXT_TENSORS, gguf_base_name, match

    h, hd = text["hidden_size"], text["head_dim"]
    q, kv = text["num_attention_heads"] * hd, text["num_key_value_heads"] * hd
    out = []

    def add(hf: str, shape):
        out.append((gguf_base_name(match(TEXT_TENSORS, hf)) + ".weight", tuple(shape)))

    add("model.embed_tokens.weight", (text["vocab_size"], h))
    for i, f in enumerate(widths):
        pre = f"model.layers.{i}"
        add(f"{pre}.input_layernorm.weight", (h,))
        add(f"{pre}.self_attn.q_proj.weight", (q, h))
        add(f"{pre}.self_attn.k_proj.weight", (kv, h))
        add(f"{pre}.self_attn.v_proj.weight", (kv, h))
        add(f"{pre}.self_attn.o_proj.weight", (h, q))
        add(f"{pre}.self_attn.q_norm.weight", (hd,))
        add(f"{pre}.self_attn.k_norm.weight", (hd,))
        add(f"{pre}.post_attention_layernorm.weight", (h,))
        add(f"{pre}.mlp.gate_proj.weight", (f, h))
        add(f"{pre}.mlp.up_proj.weight", (f, h))
        add(f"{pre}.mlp.down_proj.weight", (h, f))
    add("model.norm.weight", (h,))
    if not text["tie_word_embeddings"]:
        add("lm_head.weight", (text["vocab_size"], h))
    return out


class RandomTensor:
    """What GGUFWriter.write_tensor_data takes (``nbytes``, ``tofile``): random N(0, SIGMA) rows in ``qtype``,
    quantized by llama.cpp's ``ggml_quantize_chunk`` (``compress.quants.quantize``) a block of rows at a time.
    ``shared``: one block of bytes reused by every tensor of the same (type, shape) (decoder layers; module
    docstring); otherwise every block is fresh (token_embd, output). ``hole``: skip the bytes (a sparse file)."""

    def __init__(self, shape, qtype, rng, shared: dict | None = None, hole: bool = False):
        import gguf
        from transformers_qwen3.convert.plan import tensor_nbytes

        self.shape, self.qtype, self.rng, self.shared, self.hole = tuple(shape), qtype, rng, shared, hole
        self.nbytes = tensor_nbytes(self.shape, gguf.GGMLQuantizationType[qtype])

    def _block(self, rows: int) -> np.ndarray:
        import gguf

        from transformers_qwen3.compress.quants import quantize

        if self.qtype == "F32":
            return np.ones((rows, *self.shape[1:]), dtype=np.float32)
        w = self.rng.standard_normal((rows, self.shape[-1]), dtype=np.float32) * SIGMA
        if self.qtype in ("F16", "BF16"):
            return gguf.quants.quantize(w, gguf.GGMLQuantizationType[self.qtype])
        return quantize(w, self.qtype)

    def tofile(self, fp) -> None:
        if self.hole:
            fp.seek(self.nbytes, os.SEEK_CUR)
            return
        rows = self.shape[0] if len(self.shape) > 1 else 1
        if len(self.shape) == 1:
            np.ones(self.shape, dtype=np.float32).tofile(fp)
            return
        key = (self.qtype, self.shape)
        if self.shared is not None and key in self.shared:
            self.shared[key].tofile(fp)
            return
        if self.shared is None:  # token_embd / output: one block of random rows, repeated down the tensor
            block = self._block(min(CHUNK_ROWS, rows))
            for start in range(0, rows, CHUNK_ROWS):
                block[: min(CHUNK_ROWS, rows - start)].tofile(fp)
            return
        blocks = [self._block(min(CHUNK_ROWS, rows - start)) for start in range(0, rows, CHUNK_ROWS)]
        self.shared[key] = np.concatenate(blocks)
        self.shared[key].tofile(fp)


def write_random_gguf(
    path: Path,
    text: dict,
    widths: list[int],
    types: dict[str, str],
    vocab,
    *,
    sparse=False,
    file_type: int = 1024,
    name: str = "qwen3-8b-shape-random",
) -> int:
    """A Qwen3 text GGUF of ``text``'s shape with FFN ``widths`` per layer and ``types`` (GGUF name → type; norms
    F32) of random weights; ``sparse``: no tensor data at all (holes), for the quantizer's dry run. Written under
    a temporary name, renamed when complete. Returns its size in bytes."""
    import gguf
    from transformers_qwen3.convert.metadata import add_general, add_text_hparams

    layout = gguf_layout(text, widths)
    cfg = dict(text, num_hidden_layers=len(widths))
    cfg["intermediate_size"] = widths[0] if len(set(widths)) == 1 else list(widths)
    writer = gguf.GGUFWriter(path=None, arch="qwen3")
    rng, shared = np.random.default_rng(0), {}
    items = []
    for gname, shape in layout:
        qtype = "F32" if len(shape) == 1 else types[gname]
        big = gname in ("token_embd.weight", "output.weight")
        items.append(RandomTensor(shape, qtype, rng, None if big else shared, hole=sparse))
        writer.add_tensor_info(
            gname, shape, np.dtype(np.float32), items[-1].nbytes, raw_dtype=gguf.GGMLQuantizationType[qtype]
        )
    add_general(writer, gguf.GGUFType.MODEL, name, file_type)
    add_text_hparams(writer, _Ckpt(cfg))
    vocab.add_to(writer)
    partial = path.with_name(path.name + ".partial")
    writer.write_header_to_file(path=partial)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for item in items:
        writer.write_tensor_data(item)
    fout = writer.fout[0]
    fout.flush()
    fout.truncate(fout.tell())  # a sparse file ending in a hole needs its length set
    writer.close()
    partial.rename(path)
    return path.stat().st_size


class _Ckpt:
    """The two things convert.metadata.add_text_hparams reads from a checkpoint."""

    def __init__(self, text: dict):
        self.text, self.has_towers = text, False


def llama_mix_types(text: dict, ftype_name: str, vocab, work: Path) -> dict[str, str]:
    """The per-tensor types llama.cpp's quantizer gives ``ftype_name`` (e.g. LLAMA_FTYPE_MOSTLY_Q4_K_M) for this
    shape: ``llama_model_quantize`` with ``dry_run`` over a sparse F16 file (no data read, nothing written)."""
    import llama_cpp

    widths = [text["intermediate_size"]] * text["num_hidden_layers"]
    f16 = {n: "F16" for n, s in gguf_layout(text, widths) if len(s) > 1}
    src = work / "sparse-8b-F16.gguf"
    if not src.is_file():
        write_random_gguf(src, text, widths, f16, vocab, sparse=True)
    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def capture(level, message, user_data):
        lines.append(message.decode(errors="replace"))

    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, ftype_name)
        params.dry_run = True
        params.nthread = 1
        rc = llama_cpp.llama_model_quantize(
            str(src).encode(), str(work / "dry-run.gguf").encode(), ctypes.byref(params)
        )
    finally:
        llama_cpp.llama_log_set(llama_cpp.llama_log_callback(0), ctypes.c_void_p(0))
    if rc != 0:
        raise SystemExit(f"llama.cpp's dry run for {ftype_name} failed ({rc}):\n{''.join(lines)[-2000:]}")
    text_log = "".join(lines)
    types = {}
    for m in re.finditer(r"\]\s+(\S+\.weight)\s+- \[[^\]]*\], type =\s+(\S+), size =[^\n(]*(?:\((\S+)\))?", text_log):
        types[m.group(1)] = (m.group(3) or m.group(2)).upper()
    missing = set(f16) - set(types)
    if missing:
        raise SystemExit(f"dry run of {ftype_name}: no type read for {sorted(missing)[:5]} ...")
    return {n: types[n] for n in f16}


ANCHORS = {
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q3_k_l": "LLAMA_FTYPE_MOSTLY_Q3_K_L",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
}


def plan_types(plan: dict, text: dict) -> tuple[list[int], dict[str, str]]:
    """(kept layers' FFN widths, GGUF name → type) of a plan, layers renumbered as the plan's new_index."""
    from transformers_qwen3.convert.tensor_map import TEXT_TENSORS, gguf_base_name, match

    kept = [e for e in plan["layers"] if not e["skip"]]
    types = {}
    for name, t in plan["tensors"].items():
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
        if m:
            entry = plan["layers"][int(m.group(1))]
            if entry["skip"]:
                continue
            name = f"model.layers.{entry['new_index']}.{m.group(2)}"
        types[gguf_base_name(match(TEXT_TENSORS, name)) + ".weight"] = t["type"]
    return [e["ffn_width"] for e in kept], types


def step_build(args, plan: dict | None) -> dict[str, Path]:
    from transformers_qwen3.convert.vocab import load_vocab

    text = text_config(PRESET)
    vocab = load_vocab(args.demo, text["vocab_size"])
    files = {}
    if plan is None:
        plan = json.loads(_plan_path(args).read_text())
    kinds = [("plan", None)] + [(a, ANCHORS[a]) for a in args.anchors]
    for kind, ftype_name in kinds:
        path = _gguf_path(args, kind)
        files[kind] = path
        if path.is_file():
            log(f"{kind}: {path} exists, kept")
            continue
        t = time.perf_counter()
        if ftype_name is None:
            widths, types = plan_types(plan, text)
            file_type = 1024
        else:
            widths = [text["intermediate_size"]] * text["num_hidden_layers"]
            types = llama_mix_types(text, ftype_name, vocab, args.workdir)
            import gguf

            file_type = int(getattr(gguf.LlamaFileType, ftype_name.removeprefix("LLAMA_FTYPE_")))
        (args.workdir / f"types-{kind}.json").write_text(json.dumps(types, indent=0))
        size = write_random_gguf(path, text, widths, types, vocab, file_type=file_type, name=f"qwen3-8b-random-{kind}")
        counts = {}
        for v in types.values():
            counts[v] = counts.get(v, 0) + 1
        log(
            f"{kind}: wrote {path.name}, {size / 1e9:.3f} GB, {len(widths)} layers, types {counts}, "
            f"in {time.perf_counter() - t:.0f} s"
        )
    return files


def step_predict(args) -> None:
    """The scaled calibration's predicted KL of llama.cpp's uniform mixes (their dry-run types, ``types-*.json``
    from ``build``), beside the plan's: the same loss model at the anchors' sizes."""
    from transformers_qwen3.convert.tensor_map import TEXT_TENSORS, hf_name

    text = text_config(PRESET)
    split_file = args.workdir / "tied_split.json"
    split = json.loads(split_file.read_text()) if split_file.is_file() else None
    calib = scaled_calibration(calib_mod.load(args.calib), text, split, args.depth_exponent)
    for kind in args.anchors:
        types = json.loads((args.workdir / f"types-{kind}.json").read_text())
        kl = nbytes = 0
        for gname, t in types.items():
            name = hf_name(TEXT_TENSORS, gname)
            kl += calib.tensor_kl[name][t]
            nbytes += plan_mod.tensor_bytes(t, tuple(calib.shapes[name]))
        embd = calib.tensor_kl[EMBED][types["token_embd.weight"]]
        print(
            f"{kind}: weights {nbytes / 1e9:.3f} GB, predicted KL {kl:.3e} nats/token, of which token_embd "
            f"({types['token_embd.weight']}) {embd:.3e} (same scaled calibration)"
        )
    plan = json.loads(_plan_path(args).read_text())
    embd = plan["tensors"][EMBED]
    print(
        f"plan: weights {plan['weight_bytes'] / 1e9:.3f} GB, predicted KL {plan['predicted_kl']:.3e}, of which "
        f"token_embd ({embd['type']}) {embd['kl']:.3e}"
    )


def _gguf_path(args, kind: str) -> Path:
    suffix = "-nowidth" if args.no_width and kind == "plan" else ""
    return args.workdir / f"qwen3-8b-random-{kind}{suffix}.gguf"


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _plan_path(args) -> Path:
    suffix = "_nowidth" if args.no_width else ""
    return args.workdir / f"plan_8b_{args.budget}_skip{args.max_skip}{suffix}.json"


# --- time: TTFT and decode in llama.cpp, against the read-bandwidth bound ---------------------------------------------
def bytes_per_token(path: Path, mean_ctx: float) -> int:
    """Bytes a decode step reads: every tensor, but one row of an untied token_embd, plus the f16 KV cache at
    ``mean_ctx`` positions (bench_decode.bytes_per_token's rule, from the tensor table only)."""
    from transformers_qwen3.formats.gguf_file import read_gguf

    reader = read_gguf(path)
    names = {t.name for t in reader.tensors}
    total = 0
    for t in reader.tensors:
        rows = int(t.shape[1]) if len(t.shape) > 1 else 1
        untied_embd = t.name == "token_embd.weight" and "output.weight" in names
        total += int(t.n_bytes) // rows if untied_embd else int(t.n_bytes)
    kv = {k: f.contents() for k, f in reader.fields.items() if k.startswith("qwen3.")}
    per_position = (
        kv["qwen3.block_count"] * 2 * kv["qwen3.attention.head_count_kv"] * kv["qwen3.attention.key_length"] * 2
    )
    return int(total + per_position * mean_ctx)


def first_token_seconds(llm, prompt: list[int]) -> float:
    """KV cache cleared; one llama_decode of the whole prompt, until the last position's logits are read and the
    first token chosen (greedy): what a user waits for after the prompt is tokenized."""
    from transformers_qwen3.runtime.llama_cpp import llama_cpp_module

    llama_cpp = llama_cpp_module("the 8b benchmark")
    ctx = llm.ctx
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    ids = (llama_cpp.llama_token * len(prompt))(*prompt)
    n_vocab = llm.n_vocab()
    t = time.perf_counter()
    if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(ids, len(prompt))) != 0:
        raise RuntimeError("llama_decode failed on the prompt")
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
    int(np.argmax(logits))
    return time.perf_counter() - t


def step_time(args, files: dict[str, Path]) -> list[dict]:
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_decode import decode_tokens_per_s, read_bandwidth

    from transformers_qwen3.runtime.llama_cpp import load_llama

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    vocab = 151_000
    prompts = {n: [(1000 + 7919 * i) % vocab for i in range(n)] for n in (32, 128)}
    gen = [(5000 + 104_729 * i) % vocab for i in range(args.tokens)]
    mean_ctx = 32 + (args.tokens + 1) / 2
    rows = []
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as child:
        for kind, path in files.items():
            per_token = bytes_per_token(path, mean_ctx)
            t = time.perf_counter()
            llm = load_llama(path, 256, args.threads, use_mmap=False)
            load_s = time.perf_counter() - t
            decode_tokens_per_s(llm, prompts[32], gen[:4])  # warm-up: graph build, weight repacking
            runs = {"ttft_32": [], "ttft_128": [], "decode": [], "bandwidth": [], "load": []}
            for r in range(args.repeat):
                runs["ttft_32"].append(first_token_seconds(llm, prompts[32]))
                runs["ttft_128"].append(first_token_seconds(llm, prompts[128]))
                runs["decode"].append(decode_tokens_per_s(llm, prompts[32], gen))
                runs["load"].append(os.getloadavg()[0])
                log(
                    f"{kind} repeat {r + 1}: TTFT 32 {runs['ttft_32'][-1]:.2f} s, 128 {runs['ttft_128'][-1]:.2f} s, "
                    f"decode {runs['decode'][-1]:.3f} tok/s"
                )
            llm.close()
            del llm
            for _ in range(args.repeat):  # with the model freed: the bound sees the same machine, not less memory
                runs["bandwidth"].append(child.submit(read_bandwidth, args.threads).result())
                runs["load"].append(os.getloadavg()[0])
            bw = statistics.median(runs["bandwidth"])
            decode = statistics.median(runs["decode"])
            row = {
                "kind": kind,
                "file": str(path),
                "file_bytes": path.stat().st_size,
                "bytes_per_token": per_token,
                "load_seconds": load_s,
                "ttft_32_s": statistics.median(runs["ttft_32"]),
                "ttft_128_s": statistics.median(runs["ttft_128"]),
                "decode_tok_s": decode,
                "bandwidth_bytes_s": bw,
                "bound_tok_s": bw / per_token,
                "fraction_of_bound": decode * per_token / bw,
                "load_avg": [min(runs["load"]), max(runs["load"])],
                "runs": runs,
            }
            rows.append(row)
            log(f"{kind}: bound {row['bound_tok_s']:.3f} tok/s at {bw / 1e9:.2f} GB/s")
    return rows


def print_rows(rows: list[dict], args) -> None:
    print(
        "\n| GGUF (8b shape, random weights) | file GB | bytes read/token (GB) | TTFT 32 tok (s) | TTFT 128 tok (s) "
        "| decode tok/s | read GB/s | bound tok/s | fraction of bound | load avg |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['kind']} | {r['file_bytes'] / 1e9:.3f} | {r['bytes_per_token'] / 1e9:.3f} | {r['ttft_32_s']:.2f} "
            f"| {r['ttft_128_s']:.2f} | {r['decode_tok_s']:.3f} | {r['bandwidth_bytes_s'] / 1e9:.2f} "
            f"| {r['bound_tok_s']:.3f} | {r['fraction_of_bound']:.2f} | {r['load_avg'][0]:.1f}-{r['load_avg'][1]:.1f} |"
        )
    print(
        f"\n{args.threads} threads; medians of {args.repeat}; decode: {args.tokens} single-token decodes after the "
        "32-token prompt; bandwidth: best-of-7 torch.sum over 1 GiB float32, median of the readings per file"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("plan", "build", "time", "predict", "all"))
    parser.add_argument("--calib", type=Path, required=True, help="the demo model's calibration file")
    parser.add_argument("--calib-tokens", type=int, default=16, help="--max-tokens the calibration was made with")
    parser.add_argument("--demo", type=Path, help="the demo model folder: measure the tied table's split")
    parser.add_argument("--budget", default="4.2GB")
    parser.add_argument("--max-skip", type=int, default=None, help="most layers to skip (default: the planner's)")
    parser.add_argument("--depth-exponent", type=float, default=1.0)
    parser.add_argument("--no-width", action="store_true", help="plan types and skips only (full FFN widths)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/K4"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=16, help="timed single-token decodes")
    parser.add_argument("--anchors", nargs="*", default=["q4_k_m", "q3_k_m"], choices=sorted(ANCHORS))
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.step == "predict":
        step_predict(args)
        return 0
    plan = step_plan(args) if args.step in ("plan", "all") else None
    files = step_build(args, plan) if args.step in ("build", "all") else None
    if args.step in ("time", "all"):
        if files is None:
            kinds = ["plan", *args.anchors]
            files = {k: _gguf_path(args, k) for k in kinds}
        rows = step_time(args, files)
        print_rows(rows, args)
        info = {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "system_info": __import__("llama_cpp").llama_print_system_info().decode(),
            "rows": rows,
        }
        (args.workdir / "time.json").write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
