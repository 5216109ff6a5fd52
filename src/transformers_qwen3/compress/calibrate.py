"""Calibration (``transformers-qwen3 calibrate``): one pass of measurements, saved to a file so that planning is
instant afterwards.

For a set of prompts run through transformers, it records

(a) per weight tensor of the text decoder, the importance matrix llama.cpp's quantizer takes: the mean squared
    input activation per input column (what ``llama-imatrix`` collects). Saved in the calibration file and, on
    request, as llama.cpp's own imatrix GGUF (``write_llama_imatrix``) for ``llama-quantize --imatrix``;
(b) per tensor and candidate ggml type, the mean KL divergence of the output distribution (reference ‖ changed)
    over the calibration tokens when that tensor alone is replaced by its quantize → dequantize round trip through
    llama.cpp's quantizer with the importance matrix (``quants.round_trip``);
(c) per FFN neuron, an importance score (``importance.neuron_scores``); per layer and candidate width, the KL when
    that layer alone keeps only its most important neurons; per decoder layer, the KL when it alone is skipped.

The file is safetensors (the importance vectors and neuron scores) with a JSON header (``__metadata__``: schema,
version, the model's hash, the KL tables), read back by ``load``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import UserError
from ..formats.compression import checkpoint_sha256
from ..formats.folder import open_checkpoint
from ..outputs import atomic_file
from .calib_data import builtin_records, has_media, model_inputs, read_records, record_text
from .importance import decoder_layers, importance_order, neuron_scores
from .quants import CANDIDATE_TYPES, fits, round_trip

SCHEMA = "transformers-qwen3/calibration"
VERSION = 1
# Widths a layer's FFN may be cut to, as fractions of its full width; each is rounded down to a multiple of
# WIDTH_STEP (256: narrower rows make llama.cpp substitute K-quant types) or, for models narrower than that, of 32.
WIDTH_FRACTIONS = (0.25, 0.5, 0.75)
WIDTH_STEP = 256


class CalibrationError(UserError, ValueError):
    """A calibration file that cannot be used: missing, malformed, a newer schema, or made for another model."""


@dataclass
class Calibration:
    model_sha256: str
    shapes: dict[str, list[int]]  # HF weight name -> torch shape [out, in]
    imatrix: dict[str, torch.Tensor]  # HF weight name -> mean squared input per column, float32 [in]
    imatrix_tokens: int  # rows averaged (tokens seen by each matrix)
    tensor_kl: dict[str, dict[str, float]]  # HF weight name -> {type: mean KL}
    neuron_scores: list[torch.Tensor]  # per layer, float64 [intermediate]
    width_kl: list[dict[int, float]]  # per layer, {width: mean KL}
    layer_kl: list[float]  # per layer: mean KL when skipped
    tokens: int
    tied_embeddings: bool
    extra: dict = field(default_factory=dict)


# --- the model's identity -------------------------------------------------------------------------------------------
def model_sha256(folder: str | Path) -> str:
    """sha256 over every stored tensor (name, dtype, shape, bytes), in name order: the same weights give the same
    hash whatever the sharding; another model, or the same model changed, gives another. The one algorithm is
    ``formats.compression.checkpoint_sha256``, which plans carry too."""
    return checkpoint_sha256(open_checkpoint(folder))


# --- measuring ---------------------------------------------------------------------------------------------------------
def quantizable(model) -> dict[str, nn.Module]:
    """HF weight name -> module whose 2-D ``weight`` a plan types: the decoder's linears, the embedding, and the
    output head when it is not tied to the embedding."""
    names = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and ".layers." in name and "visual" not in name and "audio" not in name:
            names[f"{name}.weight"] = module
    base = model.model if hasattr(model, "model") else model
    names["model.embed_tokens.weight"] = base.embed_tokens
    if not _tied(model):
        names["lm_head.weight"] = model.lm_head
    return names


def _tied(model) -> bool:
    head = getattr(model, "lm_head", None)
    base = model.model if hasattr(model, "model") else model
    return head is None or head.weight is base.embed_tokens.weight


class _ImatrixCollector:
    """Forward pre-hooks summing x^2 per input column of every linear (llama-imatrix's in_sum2)."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.handles = [
            m.register_forward_pre_hook(self._hook(name)) for name, m in modules.items() if isinstance(m, nn.Linear)
        ]

    def _hook(self, name):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            self.sums[name] = self.sums.get(name, 0) + x.pow(2).sum(dim=0)
            self.counts[name] = self.counts.get(name, 0) + x.shape[0]

        return hook

    def close(self) -> dict[str, torch.Tensor]:
        for h in self.handles:
            h.remove()
        return {n: (s / self.counts[n]).float() for n, s in self.sums.items()}


def _log_probs(model, batches, softmax: bool = True) -> list[torch.Tensor]:
    """[positions, vocab] float64 log-probabilities of every batch (``softmax=False``: the raw outputs), padding
    positions dropped."""
    out = []
    with torch.no_grad():
        for batch in batches:
            logits = _positions(model(**batch, use_cache=False).logits, batch)
            out.append(torch.log_softmax(logits.double(), dim=-1) if softmax else logits)
    return out


def _mean_kl(ref: list[torch.Tensor], model, batches) -> float:
    """Mean KL(reference ‖ model) per token, nats: runtime.metrics.kl_divergence's quantity (the tests check they
    agree), computed in torch with the reference's log-probabilities kept, since calibration evaluates it hundreds
    of times (numpy's logaddexp reduction was half of the calibration's time)."""
    got = _log_probs(model, batches)
    kl = [(r.exp() * (r - g)).sum(-1) for r, g in zip(ref, got, strict=True)]
    return float(torch.cat(kl).mean())


# The KL over the reference's most likely tokens plus a sampled tail (``TopKReference``): the default of the verb.
KL_TOP_K = 256
KL_TAIL_SAMPLES = 256
_CHUNK = 64  # positions per gathered [chunk, k + samples, hidden] block


class _HiddenOut(nn.Module):
    """Stands in for the output head: the model returns its final hidden states as "logits"."""

    def forward(self, x):
        return x


class TopKReference:
    """The reference's distribution kept as its top ``k`` tokens plus ``samples`` tokens drawn from the rest, so a
    job computes only those rows of the output head instead of the whole vocabulary (151,936 rows for Qwen3).

    With d = z_changed - z_reference (logits), KL(p ‖ q) = log E_p[exp d] - E_p[d] exactly (the normalisers cancel).
    Both expectations are taken over the top-k tokens exactly and over the tail by importance sampling (``samples``
    draws from p restricted to the tail, each weighted p_tail / samples): an unbiased estimate of each expectation,
    exact when the tail is empty (k >= vocabulary). The draws are seeded and shared by every job (common random
    numbers), so jobs are compared on the same tokens. Weights are computed on the final hidden states with the
    head's current rows (a tied embedding being round-tripped changes them too)."""

    def __init__(self, model, batches, k: int = KL_TOP_K, samples: int = KL_TAIL_SAMPLES, seed: int = 0):
        self.batches = batches
        # the reference pass runs the whole model (the imatrix hooks see the head's input too)
        hidden = []
        handle = model.lm_head.register_forward_hook(lambda module, args, out: hidden.append(args[0].detach()))
        try:
            log_probs = _log_probs(model, batches)
        finally:
            handle.remove()
        head = model.lm_head.weight.detach()
        gen = torch.Generator().manual_seed(seed)
        self.index, self.weight, self.z_ref = [], [], []
        with torch.no_grad():
            for h, batch, logp in zip(hidden, batches, log_probs, strict=True):
                h = _positions(h, batch).float()
                kk = min(k, logp.shape[-1])
                top = logp.topk(kk, dim=-1)
                p_top = top.values.exp()
                if kk < logp.shape[-1] and samples > 0:
                    tail = logp.scatter(-1, top.indices, float("-inf"))
                    p_tail = tail.logsumexp(-1).exp()
                    drawn = torch.multinomial(tail.exp().float(), samples, replacement=True, generator=gen)
                    index = torch.cat([top.indices, drawn], -1)
                    weight = torch.cat([p_top, (p_tail / samples)[:, None].expand(-1, samples)], -1)
                else:
                    index, weight = top.indices, p_top
                self.index.append(index)
                self.weight.append(weight / weight.sum(-1, keepdim=True))
                self.z_ref.append(_gathered_logits(h, head, index))

    def mean_kl(self, model) -> float:
        head = model.lm_head.weight.detach()
        kl = []
        for h, index, weight, z_ref in zip(
            _hidden_states(model, self.batches), self.index, self.weight, self.z_ref, strict=True
        ):
            d = _gathered_logits(h, head, index) - z_ref
            centred = d - (weight * d).sum(-1, keepdim=True)
            kl.append(torch.log1p((weight * torch.expm1(centred)).sum(-1)))
        return float(torch.cat(kl).mean())


def _positions(x: torch.Tensor, batch: dict) -> torch.Tensor:
    """[batch, seq, ...] → [positions, ...], padding dropped (as _log_probs does)."""
    mask = batch.get("attention_mask")
    return x[mask.bool()] if mask is not None else x.reshape(-1, x.shape[-1])


def _hidden_states(model, batches) -> list[torch.Tensor]:
    """[positions, hidden] final (normed) hidden states of every batch, padding dropped: the forward without the
    output head's matmul."""
    head = model.lm_head
    model.lm_head = _HiddenOut()
    try:
        return [r.float() for r in _log_probs(model, batches, softmax=False)]
    finally:
        model.lm_head = head


def _gathered_logits(hidden: torch.Tensor, head: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """float64 logits of the head rows ``index`` [positions, n] at each position."""
    out = torch.empty(index.shape, dtype=torch.float64)
    for s in range(0, index.shape[0], _CHUNK):
        rows = head[index[s : s + _CHUNK]].double()  # [chunk, n, hidden]
        out[s : s + _CHUNK] = torch.einsum("cnh,ch->cn", rows, hidden[s : s + _CHUNK].double())
    return out


class _FullReference:
    """The exact KL over the whole vocabulary (``_mean_kl``), behind TopKReference's interface."""

    def __init__(self, model, batches):
        self.batches, self.ref = batches, _log_probs(model, batches)

    def mean_kl(self, model) -> float:
        return _mean_kl(self.ref, model, self.batches)


def candidate_widths(full: int) -> list[int]:
    step = WIDTH_STEP if full >= 2 * WIDTH_STEP else 32
    return sorted({int(full * f) // step * step for f in WIDTH_FRACTIONS} - {0, full})


def calibrate(
    model,
    batches: list[dict],
    model_sha256: str,
    types=CANDIDATE_TYPES,
    progress: bool = True,
    kl_top_k: int | None = None,
) -> Calibration:
    """Measure ``model`` (our model or a native Qwen3ForCausalLM, eval mode) on ``batches`` (model inputs).

    ``kl_top_k``: None or 0, the exact KL over the whole vocabulary; k > 0, ``TopKReference``'s estimate over the
    reference's top k tokens and KL_TAIL_SAMPLES sampled tail tokens (much faster with a large vocabulary)."""
    from tqdm.auto import tqdm

    model.eval()
    modules = quantizable(model)
    layers = decoder_layers(model)
    collector = _ImatrixCollector(modules)
    try:
        reference = TopKReference(model, batches, kl_top_k) if kl_top_k else _FullReference(model, batches)
    finally:
        imatrix = collector.close()
    tokens = sum(
        int(b["attention_mask"].sum()) if b.get("attention_mask") is not None else b["input_ids"].numel()
        for b in batches
    )
    shapes = {name: list(m.weight.shape) for name, m in modules.items()}
    jobs = [(n, t) for n in modules for t in types if fits(t, tuple(shapes[n]))]
    widths = [candidate_widths(layer.mlp.down_proj.in_features) for layer in layers]
    bar = tqdm(total=len(jobs) + len(layers) + sum(map(len, widths)), desc="calibrate", disable=not progress)

    tensor_kl: dict[str, dict[str, float]] = {n: {} for n in modules}
    with torch.no_grad():
        for name, type_name in jobs:
            weight = modules[name].weight
            saved = weight.detach().clone()
            weight.copy_(round_trip(saved, type_name, imatrix.get(name)))
            tensor_kl[name][type_name] = reference.mean_kl(model)
            weight.copy_(saved)
            bar.update()

        scores, width_kl, layer_kl = [], [], []
        for idx, layer in enumerate(layers):
            mlp = layer.mlp
            score = neuron_scores(mlp, imatrix[f"{_layer_prefix(modules, idx)}.mlp.down_proj.weight"])
            scores.append(score)
            order = importance_order(score)
            kept = {n: getattr(mlp, n).weight for n in ("gate_proj", "up_proj", "down_proj")}
            kl_by_width = {}
            for width in widths[idx]:
                mlp.gate_proj.weight = nn.Parameter(kept["gate_proj"][order[:width]], requires_grad=False)
                mlp.up_proj.weight = nn.Parameter(kept["up_proj"][order[:width]], requires_grad=False)
                mlp.down_proj.weight = nn.Parameter(kept["down_proj"][:, order[:width]], requires_grad=False)
                kl_by_width[width] = reference.mean_kl(model)
                bar.update()
            for n, w in kept.items():
                getattr(mlp, n).weight = w
            width_kl.append(kl_by_width)
            handle = layer.register_forward_hook(_skip_layer, with_kwargs=True)
            try:
                layer_kl.append(reference.mean_kl(model))
            finally:
                handle.remove()
            bar.update()
    bar.close()
    return Calibration(
        model_sha256, shapes, imatrix, tokens, tensor_kl, scores, width_kl, layer_kl, tokens, _tied(model)
    )


def _layer_prefix(modules: dict[str, nn.Module], idx: int) -> str:
    for name in modules:
        if name.endswith(".mlp.down_proj.weight") and f".layers.{idx}." in name:
            return name[: -len(".mlp.down_proj.weight")]
    raise KeyError(idx)


def _skip_layer(module, args, kwargs, output):
    """A forward hook that makes a decoder layer the identity (its input hidden states pass through)."""
    hidden = args[0] if args else kwargs["hidden_states"]
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


# --- the file ----------------------------------------------------------------------------------------------------------
def save(calib: Calibration, path: Path) -> None:
    tensors = {f"imatrix/{n}": v.contiguous() for n, v in calib.imatrix.items()}
    tensors |= {f"neurons/{i}": s.contiguous() for i, s in enumerate(calib.neuron_scores)}
    header = {
        "schema": SCHEMA,
        "version": VERSION,
        "model_sha256": calib.model_sha256,
        "tokens": calib.tokens,
        "imatrix_tokens": calib.imatrix_tokens,
        "tied_embeddings": calib.tied_embeddings,
        "shapes": calib.shapes,
        "tensor_kl": calib.tensor_kl,
        "width_kl": [{str(w): kl for w, kl in d.items()} for d in calib.width_kl],
        "layer_kl": calib.layer_kl,
        "extra": calib.extra,
    }
    with atomic_file(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata={"calibration": json.dumps(header)})


def load(path: str | Path, model_sha256: str | None = None) -> Calibration:
    """Read a calibration file; refuse one that is malformed, of a newer schema, or (given ``model_sha256``) made
    for another model."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: no such calibration file; make one with `transformers-qwen3 calibrate`")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})["calibration"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as e:  # safetensors raises its own errors for a damaged file; all mean "not a calibration"
        raise CalibrationError(f"{path}: not a calibration file ({type(e).__name__}: {e})") from e
    if not isinstance(header, dict) or header.get("schema") != SCHEMA:
        raise CalibrationError(f"{path}: not a calibration file (schema {header.get('schema')!r})")
    if not isinstance(header.get("version"), int) or header["version"] > VERSION:
        raise CalibrationError(
            f"{path}: calibration schema version {header.get('version')} is newer than this version reads "
            f"({VERSION}); upgrade transformers-qwen3 or calibrate again"
        )
    if model_sha256 is not None and header.get("model_sha256") != model_sha256:
        raise CalibrationError(
            f"{path}: made for another model (sha256 {str(header.get('model_sha256'))[:12]}…, this model is "
            f"{model_sha256[:12]}…); calibrate this model"
        )
    try:
        n_layers = len(header["layer_kl"])
        return Calibration(
            model_sha256=header["model_sha256"],
            shapes={k: list(v) for k, v in header["shapes"].items()},
            imatrix={k.removeprefix("imatrix/"): v for k, v in tensors.items() if k.startswith("imatrix/")},
            imatrix_tokens=int(header["imatrix_tokens"]),
            tensor_kl={k: {t: float(x) for t, x in d.items()} for k, d in header["tensor_kl"].items()},
            neuron_scores=[tensors[f"neurons/{i}"] for i in range(n_layers)],
            width_kl=[{int(w): float(x) for w, x in d.items()} for d in header["width_kl"]],
            layer_kl=[float(x) for x in header["layer_kl"]],
            tokens=int(header["tokens"]),
            tied_embeddings=bool(header["tied_embeddings"]),
            extra=header.get("extra", {}),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CalibrationError(f"{path}: malformed calibration file ({type(e).__name__}: {e})") from e


def write_llama_imatrix(calib: Calibration, path: Path, dataset: str = "transformers-qwen3 calibrate") -> None:
    """The importance matrix as llama.cpp's imatrix GGUF (what ``llama-imatrix`` writes and ``llama-quantize
    --imatrix`` reads: general.type = imatrix, imatrix.{datasets,chunk_count,chunk_size}, and per weight
    ``<gguf name>.in_sum2`` [n_in] and ``<gguf name>.counts`` [1], both F32; sums, not means)."""
    import gguf

    from ..convert.tensor_map import TEXT_TENSORS, gguf_base_name, match

    with atomic_file(Path(path)) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch="")  # no general.architecture: llama-imatrix writes none either
        writer.add_type("imatrix")
        writer.add_array("imatrix.datasets", [dataset])
        writer.add_uint32("imatrix.chunk_count", 1)
        writer.add_uint32("imatrix.chunk_size", calib.imatrix_tokens)
        count = float(calib.imatrix_tokens)
        for name, mean_sq in sorted(calib.imatrix.items()):
            m = match(TEXT_TENSORS, name)
            if m is None:
                continue
            gguf_name = gguf_base_name(m) + ".weight"
            # ggml shape [n_in, 1]: one matrix (llama.cpp's MoE experts would be more rows)
            writer.add_tensor(f"{gguf_name}.in_sum2", (mean_sq.double() * count).float().numpy().reshape(1, -1))
            writer.add_tensor(f"{gguf_name}.counts", np.array([[count]], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


# --- the verb ----------------------------------------------------------------------------------------------------------
def read_texts(path: Path) -> list[str]:
    """The text of each ``--data`` record (``calib_data.record_text``: media parts, if any, left out)."""
    return [record_text(r) for r in read_records(path)]


def add_arguments(parser):
    parser.add_argument("model", help="the model folder to calibrate")
    parser.add_argument(
        "--data",
        help='JSONL prompts: {"text": ...} or {"messages": [...]}, whose parts may be {"type": "image", "image": '
        'PATH} / {"type": "audio", "audio": PATH} relative to the file (default: built-in text, and generated '
        "pictures and clips for a model with towers)",
    )
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per prompt (longer prompts are cut)")
    parser.add_argument("--types", default=",".join(CANDIDATE_TYPES), help="candidate ggml types, comma-separated")
    parser.add_argument(
        "--kl-top-k",
        type=int,
        default=KL_TOP_K,
        help=f"KL over the reference's top K tokens plus {KL_TAIL_SAMPLES} sampled tail tokens (default {KL_TOP_K}; "
        "0: the exact KL over the whole vocabulary, slower)",
    )
    parser.add_argument("-o", "--output", required=True, help="the calibration file to write (.safetensors)")
    parser.add_argument("--imatrix", help="also write llama.cpp's imatrix GGUF here (for llama-quantize --imatrix)")
    parser.add_argument("--force", action="store_true", help="replace existing output files")


def run(args) -> int:
    import gguf
    from transformers import AutoModelForCausalLM

    from ..errors import OutputError
    from ..remote.modeling_qwen3_multimodal import Qwen3MultimodalForConditionalGeneration

    outputs = [Path(p) for p in (args.output, args.imatrix) if p]
    for out in outputs:
        if out.exists() and not args.force:
            raise OutputError(f"{out} already exists; choose another name or pass --force to replace it.")
    types = tuple(t.strip().upper() for t in args.types.split(",") if t.strip())
    unknown = [t for t in types if t not in gguf.GGMLQuantizationType.__members__]
    if unknown or not types:
        raise CalibrationError(f"--types: unknown ggml type(s) {unknown or args.types!r}")
    checkpoint = open_checkpoint(args.model)  # the folder check every verb runs first
    if args.data:
        records, data_dir = read_records(args.data), Path(args.data).resolve().parent
    else:
        records, data_dir = builtin_records(checkpoint.vision is not None, checkpoint.audio is not None), None
    batches = model_inputs(args.model, records, args.max_tokens, data_dir)
    n_media = sum(has_media(r) for r in records)
    # our folders load with the installed classes (their code files never run), native Qwen3 ones with transformers'
    ours = checkpoint.model_type == Qwen3MultimodalForConditionalGeneration.config_class.model_type
    loader = Qwen3MultimodalForConditionalGeneration if ours else AutoModelForCausalLM
    model = loader.from_pretrained(args.model, dtype=torch.float32).eval()
    if args.kl_top_k < 0:
        raise CalibrationError(f"--kl-top-k {args.kl_top_k}: give 0 (exact) or a positive number of tokens")
    calib = calibrate(model, batches, model_sha256(args.model), types, kl_top_k=args.kl_top_k)
    kl = f"top-{args.kl_top_k} + {KL_TAIL_SAMPLES} tail samples" if args.kl_top_k else "exact"
    calib.extra = {
        "data": str(args.data or "built-in"),
        "prompts": len(records),
        "media_prompts": n_media,
        "types": list(types),
        "kl": kl,
    }
    save(calib, Path(args.output))
    if args.imatrix:
        write_llama_imatrix(calib, Path(args.imatrix), dataset=str(args.data or "built-in"))
    print(
        f"wrote {args.output} ({len(records)} prompts, {n_media} with media; {calib.tokens} tokens, "
        f"{len(calib.tensor_kl)} tensors, {len(calib.layer_kl)} layers)"
    )
    return 0
