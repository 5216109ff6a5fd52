"""`convert_lora`: a peft LoRA adapter on the text decoder → a GGUF LoRA adapter that llama.cpp applies.

    from transformers_qwen3.convert.lora import convert_lora
    convert_lora("my-adapter", "gguf/", outtype="f16", base="my-model")
    # -> gguf/my-adapter-lora-F16.gguf; llama.cpp: --lora FILE, llama_cpp.Llama(model_path=..., lora_path=FILE)

Phases, as in `pipeline`: read (adapter_config.json and the adapter's tensor headers; the base checkpoint's config and
safetensors headers — its weights only to compare a peft copy of an adapted embedding / head) → check (one error
naming everything a llama.cpp text LoRA cannot hold) → plan → stage (a temporary file in OUTDIR) → publish (rename).

The file llama.cpp's loader accepts (src/llama-adapter.cpp): `general.type` "adapter", `adapter.type` "lora",
`adapter.lora.alpha` (f32), `general.architecture` equal to the base text GGUF's (`qwen3` / `qwen3vl`, decided by the
base checkpoint exactly as for the model itself), and for each adapted weight W (its GGUF name from
`tensor_map.TEXT_TENSORS`) the pair `W.lora_a`, `W.lora_b`. peft's Linear factors go in as stored: lora_A [r, in] and
lora_B [out, r] in torch order (ggml order [in, r] / [r, out]: W.ne[0] == lora_a.ne[0], W.ne[1] == lora_b.ne[1]).
llama.cpp adds `scale * B (A x)` with scale = alpha / r, r read from lora_b.

Differences from llama.cpp's convert_lora_to_gguf.py (otherwise the same tensor names, types, shapes and bytes;
tests/test_convert_lora.py compares the two):
- Scales peft computes otherwise than alpha / r (`use_rslora`: alpha / sqrt(r); `alpha_pattern`: a per-module alpha)
  are folded into that module's lora_b, so llama.cpp applies exactly peft's scale. Upstream writes the global alpha
  and silently mis-scales such adapters. `rank_pattern` needs nothing: llama.cpp reads each module's rank from lora_b.
- What a text LoRA cannot represent is refused before anything is written, in one error that lists it and says how
  to fix it (merge): tower modules (llama.cpp applies adapters to the text model only; the mmproj takes none), DoRA,
  modules_to_save, trained biases, trainable tokens, other forward-changing peft options, and embed_tokens / lm_head
  factors on a base with tied embeddings (llama.cpp looks factors up by tensor name, and a tied model's output
  projection *is* token_embd, so the embedding's factors would be applied there too).
- The base is a local folder (`base`, else adapter_config.json's base_model_name_or_path when that is a local
  folder); nothing is fetched from the Hub. Every factor's shape is checked against the base weight it adapts.
- Output naming and safety follow the main converter: `<name>-lora-<TYPE>.gguf`, a temporary file renamed into place,
  an existing file needs `force`; `dry_run` prints the plan.
- Metadata: `general.name` is the name as given and `general.file_type` is written (as for model files); no model-card
  keys (upstream turns the README peft writes into general.base_model.* / general.tags). The loader reads none of them.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import torch

from ..formats.errors import CheckpointFolderError
from ..formats.folder import (
    LAYOUTS,
    SAFETENSORS_DTYPES,
    Checkpoint,
    read_json_object,
    read_safetensors_header,
    validate_folder,
)
from ..formats.keys import AUDIO_PREFIX, VISION_PREFIX
from ..outputs import atomic_file
from .converter import DIRECT_OUTTYPES, _check_name, _prepare_outdir, type_label
from .errors import ConversionError
from .metadata import add_general, text_arch
from .plan import PlannedTensor, format_plan, storage_type, tensor_nbytes
from .tensor_map import TEXT_TENSORS, match
from .writer import write_gguf

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."  # PeftModel's state-dict prefix before the base model's own module names
# gguf-py writes these itself; llama.cpp's quantizer (the K-quants) reads model files only, not adapters
OUTTYPES = tuple(DIRECT_OUTTYPES)

MERGE_HINT = (
    "merge it into the model and convert the merged folder (`transformers-qwen3 finetune ... --merge`, or "
    "transformers_qwen3.training.lora.merge_to_hub_folder(load_lora(base, ADAPTER), tokenizer, MERGED); then "
    "`transformers-qwen3 convert MERGED OUTDIR`, which puts tower weights in the mmproj), or retrain with "
    "text-decoder targets only (the default q_proj/v_proj; --targets attention, --lora-mlp)"
)


# --- peft's factor tensors → GGUF suffixes and reshaping steps (data) --------------------------------------------
@dataclass(frozen=True)
class Factor:
    gguf_suffix: str  # ".lora_a" / ".lora_b"
    reshape: str  # key into FACTOR_RESHAPES
    layer: str  # the peft layer type storing it: "linear" / "embedding"


FACTORS: dict[str, Factor] = {
    ".lora_A.weight": Factor(".lora_a", "none", "linear"),  # nn.Linear: A [r, in]
    ".lora_B.weight": Factor(".lora_b", "none", "linear"),  # B [out, r]
    # nn.Embedding: A [r, vocab]; llama.cpp gathers token rows of lora_a (llm_graph_context::build_inp_embd), so it
    # needs [vocab, r] (torch order), as upstream writes it. B [dim, r] goes in as stored.
    ".lora_embedding_A": Factor(".lora_a", "transpose", "embedding"),
    ".lora_embedding_B": Factor(".lora_b", "none", "embedding"),
}


def _keep(t: torch.Tensor) -> torch.Tensor:
    return t


def _transpose(t: torch.Tensor) -> torch.Tensor:
    return t.T.contiguous()  # [r, vocab] -> [vocab, r]


FACTOR_RESHAPES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"none": _keep, "transpose": _transpose}


def expected_factor_shapes(layer: str, base_shape: tuple[int, ...], r: int) -> dict[str, tuple[int, int]]:
    """peft's stored factor shapes for a base weight of `base_shape` at rank r (before any reshaping step)."""
    rows, cols = base_shape  # Linear: [out, in]; Embedding: [vocab, dim]
    if layer == "embedding":
        return {".lora_a": (r, rows), ".lora_b": (cols, r)}
    return {".lora_a": (r, cols), ".lora_b": (rows, r)}


# --- adapter_config.json settings a llama.cpp LoRA cannot express: (field, "in use?", what it is) ----------------
UNSUPPORTED_SETTINGS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("peft_type", lambda v: v not in (None, "LORA"), "a peft method other than LoRA"),
    ("use_dora", bool, "DoRA: a learned magnitude per weight column"),
    ("modules_to_save", bool, "full trained copies of whole modules"),
    ("bias", lambda v: v not in (None, "none"), "trained biases"),
    ("lora_bias", bool, "a bias on lora_B"),
    ("trainable_token_indices", bool, "trainable token embeddings"),
    ("target_parameters", bool, "LoRA on bare parameters"),
    ("layer_replication", bool, "replicated layers"),
    ("fan_in_fan_out", bool, "transposed Conv1D-style weights"),
    ("use_qalora", bool, "QA-LoRA: pooled inputs"),
    ("use_bdlora", bool, "block-diagonal factors"),
    ("kasa_config", bool, "KaSA: singular values between A and B"),
    ("arrow_config", bool, "Arrow routing"),
    ("monteclora_config", bool, "MonteCLoRA sampling"),
    ("alora_invocation_tokens", bool, "activated LoRA, not supported here"),
)


# --- reading ---------------------------------------------------------------------------------------------------------
@dataclass
class Adapter:
    folder: Path
    config: dict[str, Any]
    weights: Path
    tensors: dict[str, tuple[tuple[int, ...], torch.dtype]]  # stored key → (shape, dtype)
    _bin: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def load(self, key: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        """One tensor (rows `start:stop` when given), read now."""
        if self._bin is not None:
            return self._bin[key][start:stop]
        from safetensors import safe_open

        with safe_open(self.weights, framework="pt") as f:
            return f.get_tensor(key) if start is None and stop is None else f.get_slice(key)[start:stop]


def is_lora_adapter(folder: str | os.PathLike) -> bool:
    """A peft adapter folder (what `transformers-qwen3 finetune --lora` writes) rather than a model checkpoint."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def open_adapter(folder: str | os.PathLike) -> Adapter:
    folder = Path(folder)
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise CheckpointFolderError(
            f"{folder}: no {ADAPTER_CONFIG}; pass a peft adapter folder (finetune --lora output)"
        )
    config = read_json_object(path, "re-save the adapter with peft")
    weights = next((folder / n for n in ADAPTER_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise CheckpointFolderError(f"{folder}: no {' or '.join(ADAPTER_WEIGHTS)} next to {ADAPTER_CONFIG}")
    if weights.suffix == ".bin":  # older peft: a pickled state dict (small: only the factors)
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, ValueError, OSError, EOFError, pickle.UnpicklingError) as e:
            raise CheckpointFolderError(f"{weights}: not a readable PyTorch state dict ({e})") from e
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointFolderError(f"{weights}: not a state dict of tensors; re-save the adapter with peft")
        tensors = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
        return Adapter(folder, config, weights, tensors, state)
    # the header checked against the file (as a model's shards are) before safe_open trusts it
    header = read_safetensors_header(weights)
    tensors = {key: (entry.shape, SAFETENSORS_DTYPES[entry.dtype]) for key, entry in header.items()}
    return Adapter(folder, config, weights, tensors)


def resolve_base(adapter: Adapter, base: str | os.PathLike | None) -> Path:
    """`base`, else adapter_config.json's base_model_name_or_path when it names a local checkpoint folder."""
    if base is not None:
        return Path(base)
    recorded = adapter.config.get("base_model_name_or_path")
    if recorded and (Path(recorded) / "config.json").is_file():
        return Path(recorded)
    raise ConversionError(
        f"{adapter.folder}: pass --base MODEL_DIR, the model folder the adapter was trained on "
        f"(adapter_config.json names {recorded!r}, which is not a local checkpoint folder)"
    )


# --- checking ----------------------------------------------------------------------------------------------------
@dataclass
class AdaptedWeight:
    module: str  # the base model's own module name (peft's key), e.g. model.layers.0.self_attn.q_proj
    source: str  # our checkpoint name of the adapted weight (layout renames applied)
    gguf_name: str  # its GGUF name, e.g. blk.0.attn_q.weight
    layer: str  # "linear" / "embedding"
    factors: dict[str, str] = field(default_factory=dict)  # GGUF suffix → adapter key


def _fold_indices(name: str) -> str:
    return re.sub(r"\.\d+(?=\.|$)", ".N", name)


def _summary(names: list[str], n: int = 6) -> str:
    """Module names with layer indices folded (model.layers.N.self_attn.q_proj), the first n of them."""
    folded = list(dict.fromkeys(_fold_indices(x) for x in names))
    head = ", ".join(folded[:n])
    return head + (f", … ({len(folded) - n} more)" if len(folded) > n else "")


def _rename(name: str, ckpt: Checkpoint) -> str:
    """The base layout's prefix renames (Qwen3-VL: model.language_model. → model.), as for the model's tensors."""
    for stored, ours in LAYOUTS[ckpt.model_type].key_renames:
        if name.startswith(stored):
            return ours + name[len(stored) :]
    return name


_TIED = ("model.embed_tokens.weight", "lm_head.weight")


def _is_base_copy(adapter: Adapter, key: str, ckpt: Checkpoint) -> bool:
    """A `<module>.base_layer.weight` equal to the base's weight: peft saves the embedding / head it adapts whole
    (save_embedding_layers, for vocabularies resized during training). Equal, it carries nothing; otherwise it is a
    changed base weight no LoRA can express."""
    name = key.removeprefix(PEFT_PREFIX)
    if not name.endswith(".base_layer.weight"):
        return False
    source = _rename(name.removesuffix(".base_layer.weight"), ckpt) + ".weight"
    src = ckpt.tensors.get(source)
    if src is None or src.shape != adapter.tensors[key][0]:
        return False
    step = max(1, (16 << 20) // max(1, src.row_nbytes))  # compare in ~16 MB blocks of rows: no full copy in memory
    return all(
        torch.equal(adapter.load(key, i, i + step).float(), ckpt.load(source, i, i + step).float())
        for i in range(0, src.shape[0], step)
    )


def collect_weights(adapter: Adapter, ckpt: Checkpoint) -> list[AdaptedWeight]:
    """Pair the adapter's factors by the base weight they adapt (in the base checkpoint's order).

    Raises one error naming everything a llama.cpp text LoRA cannot hold, with the fix."""
    weights: dict[str, AdaptedWeight] = {}
    refused: dict[str, list[str]] = {"towers": [], "tied": [], "extra": [], "unknown": []}
    for key in adapter.tensors:
        name = key.removeprefix(PEFT_PREFIX)
        suffix = next((s for s in FACTORS if name.endswith(s)), None)
        if suffix is None:
            if not _is_base_copy(adapter, key, ckpt):
                refused["extra"].append(name)  # DoRA magnitudes, biases, modules_to_save copies, trainable tokens ...
            continue
        module = name.removesuffix(suffix)
        source = _rename(module, ckpt) + ".weight"
        kind = _refusal(source, ckpt)
        if kind is not None:
            refused[kind].append(module)
            continue
        m = match(TEXT_TENSORS, source)
        factor = FACTORS[suffix]
        w = weights.setdefault(
            module, AdaptedWeight(module, source, m.rule.gguf.format(bid=m.bid) + m.suffix, factor.layer)
        )
        w.factors[factor.gguf_suffix] = key
    _raise_refusals(adapter, ckpt, refused)
    if not weights:
        raise ConversionError(f"{adapter.weights}: holds no LoRA factors")
    order = {name: i for i, name in enumerate(ckpt.tensors)}
    return sorted(weights.values(), key=lambda w: order[w.source])


def _refusal(source: str, ckpt: Checkpoint) -> str | None:
    """Why the base weight ``source`` cannot take a llama.cpp LoRA (a key of collect_weights' lists), or None."""
    m = match(TEXT_TENSORS, source)
    if source.startswith((VISION_PREFIX, AUDIO_PREFIX)):
        return "towers"
    if m is not None and ckpt.tie_word_embeddings and source in _TIED:
        return "tied"
    if m is None or m.rule.reshape != "none" or source not in ckpt.tensors:
        return "unknown"
    return None


def _raise_refusals(adapter: Adapter, ckpt: Checkpoint, refused: dict[str, list[str]]) -> None:
    """One error for what the adapter sets or holds that llama.cpp cannot take; a second kind for a wrong --base."""
    problems: list[str] = []
    settings = [
        f"{key}={adapter.config[key]!r} ({what})"
        for key, in_use, what in UNSUPPORTED_SETTINGS
        if in_use(adapter.config.get(key))
    ]
    if settings:
        problems.append("sets " + ", ".join(settings))
    if refused["towers"]:
        problems.append(
            f"adapts the vision/audio towers ({_summary(refused['towers'])}), but llama.cpp applies a LoRA to the "
            "text model only (the mmproj takes none)"
        )
    if refused["tied"]:
        problems.append(
            f"adapts {_summary(refused['tied'])} of a base with tied embeddings, where llama.cpp's output projection "
            "is token_embd itself and would receive the embedding's factors too"
        )
    if refused["extra"]:
        problems.append(f"holds tensors that are not LoRA factors ({_summary(refused['extra'])})")
    if problems:
        raise ConversionError(
            f"{adapter.folder} cannot become a llama.cpp LoRA: it " + "; it ".join(problems) + f". Fix: {MERGE_HINT}."
        )
    if refused["unknown"]:
        raise ConversionError(
            f"{adapter.folder} adapts modules that are not text-decoder weights of {ckpt.folder} "
            f"({_summary(refused['unknown'])}): pass the model the adapter was trained on as --base"
        )


# --- scales ----------------------------------------------------------------------------------------------------------
def _pattern_value(patterns: dict[str, Any] | None, module: str, default: Any) -> Any:
    """peft's rank_pattern / alpha_pattern lookup for one module, with peft's own matching rule."""
    if not patterns:
        return default
    from peft.utils.other import get_pattern_key

    return patterns.get(get_pattern_key(list(patterns), module), default)


def peft_scale(config: dict[str, Any], module: str, r: int) -> float:
    """The scale peft multiplies B(Ax) by for `module` (peft's LoraLayer.update_layer)."""
    alpha = _pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"])
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def llama_scale(alpha: float, r: int) -> float:
    """The scale llama.cpp applies at lora_scale 1 (llama_adapter_lora_weight::get_scale; alpha 0 means 1)."""
    return alpha / r if alpha else 1.0


# --- plan ------------------------------------------------------------------------------------------------------------
def plan_adapter(
    adapter: Adapter, ckpt: Checkpoint, weights: list[AdaptedWeight], outtype: gguf.GGMLQuantizationType
) -> tuple[float, list[PlannedTensor]]:
    """(adapter.lora.alpha, the tensor plan): lora_a then lora_b per weight, each factor checked against the base."""
    config = adapter.config
    alpha = float(config["lora_alpha"])
    problems: list[str] = []
    plan: list[PlannedTensor] = []
    for w in weights:
        missing = [s for s in (".lora_a", ".lora_b") if s not in w.factors]
        if missing:
            problems.append(f"{w.module}: no {' / '.join(m.removeprefix('.') for m in missing)} factor")
            continue
        r = adapter.tensors[w.factors[".lora_a"]][0][0]
        r_config = _pattern_value(config.get("rank_pattern"), w.module, config["r"])
        if r != r_config:
            problems.append(f"{w.module}: rank {r} in the tensors, {r_config} in {ADAPTER_CONFIG}")
            continue
        base_shape = ckpt.tensors[w.source].shape
        expected = expected_factor_shapes(w.layer, base_shape, r)
        wrong = [
            f"{w.module}{s}: {list(adapter.tensors[w.factors[s]][0])}, base weight {list(base_shape)} needs "
            f"{list(expected[s])}"
            for s in (".lora_a", ".lora_b")
            if adapter.tensors[w.factors[s]][0] != expected[s]
        ]
        if wrong:
            problems.extend(wrong)
            continue
        # peft's scale for this module, folded into lora_b where llama.cpp's alpha / r would differ
        fold = peft_scale(config, w.module, r) / llama_scale(alpha, r)
        for suffix in (".lora_a", ".lora_b"):
            key = w.factors[suffix]
            factor = next(f for s, f in FACTORS.items() if key.endswith(s))
            stored_shape, dtype = adapter.tensors[key]
            shape = tuple(FACTOR_RESHAPES[factor.reshape](torch.empty(stored_shape, dtype=dtype, device="meta")).shape)
            # the type follows the adapted weight's rule (a norm would stay F32); rows that do not fill whole
            # quant blocks (lora_b's width is the rank) fall back to F16, as upstream's converter does
            qtype = storage_type(w.gguf_name, shape, outtype)
            scale = fold if suffix == ".lora_b" else 1.0
            plan.append(
                PlannedTensor(
                    w.gguf_name + suffix,
                    None,
                    factor.reshape,
                    0,
                    shape,
                    qtype,
                    tensor_nbytes(shape, qtype),
                    generate=_loader(adapter, key, factor.reshape, scale),
                )
            )
    if problems:
        shown = "; ".join(problems[:6]) + (f"; … ({len(problems) - 6} more)" if len(problems) > 6 else "")
        raise ConversionError(
            f"{adapter.folder} does not fit the base model {ckpt.folder}: {shown}. Pass the model the adapter was "
            "trained on as --base"
        )
    return alpha, plan


def _loader(adapter: Adapter, key: str, reshape: str, scale: float) -> Callable[[], torch.Tensor]:
    def load() -> torch.Tensor:
        t = FACTOR_RESHAPES[reshape](adapter.load(key))
        if scale != 1.0:
            t = t.float() * scale  # folded in float32, then written in the requested type
        return t

    return load


# --- convert ---------------------------------------------------------------------------------------------------------
def lora_output_path(outdir: Path, name: str, outtype: str) -> Path:
    return outdir / f"{name}-lora-{type_label(outtype)}.gguf"


def convert_lora(
    src: str | os.PathLike,
    outdir: str | os.PathLike,
    outtype: str = "f16",
    base: str | os.PathLike | None = None,
    name: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    *,
    progress: bool = True,
) -> list[Path]:
    """Convert the peft adapter folder `src` into `outdir/<name>-lora-<TYPE>.gguf`; returns [its path].

    `outtype`: f32, f16, bf16 or q8_0. `base`: the checkpoint folder the adapter was trained on (default: the
    adapter's base_model_name_or_path when it is a local folder); it decides the architecture (qwen3 / qwen3vl) and
    every factor's expected shape. `name` defaults to `src`'s folder name. An existing file needs `force`.
    """
    outtype = outtype.lower()
    if outtype not in OUTTYPES:
        raise ConversionError(
            f"--outtype {outtype!r} for a LoRA adapter: choose one of {', '.join(OUTTYPES)} (llama.cpp's quantizer "
            "does not read adapter files; the factors are small)"
        )
    src, outdir = Path(src), Path(outdir)
    adapter = open_adapter(src)
    ckpt = validate_folder(resolve_base(adapter, base))
    weights = collect_weights(adapter, ckpt)
    qtype, file_type = DIRECT_OUTTYPES[outtype]
    alpha, plan = plan_adapter(adapter, ckpt, weights, qtype)
    name = _check_name(name or src.resolve().name)
    out = lora_output_path(outdir, name, outtype)
    arch = text_arch(ckpt)

    if dry_run:
        print(format_plan(plan, f"{out} (LoRA for {arch}, alpha {alpha:g}, {type_label(outtype)})"))
        return [out]

    _prepare_outdir(outdir)
    if out.exists() and not force:
        raise ConversionError(f"{out} already exists; pass --force to overwrite")

    def metadata(w: gguf.GGUFWriter) -> None:
        add_general(w, gguf.GGUFType.ADAPTER, name, file_type)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)

    with atomic_file(out) as tmp:
        write_gguf(tmp, arch, plan, metadata, ckpt, progress, out.name)
    logger.info("%s: %d LoRA pairs for %s (alpha %g)", out.name, len(plan) // 2, arch, alpha)
    return [out]
