"""Model cards for exported folders: metadata with huggingface_hub's ``ModelCardData``, prose computed from files.

Everything the card states is read from the exported files (through `formats`' safetensors and GGUF readers) or
from small JSON records the model folder may carry (read by :mod:`.provenance`); nothing is estimated except the
memory table, whose formula the card prints next to it. The licence comes from :mod:`.licensing`. The Markdown is
in ``templates/*.md.jinja``; this module computes the values and table cells the templates print.

Records a model folder may carry (all optional; unknown keys are ignored):

``qwen3_multimodal_provenance.json``
    Where the weights came from. ``{"format_version": 1, "relation": "imported" | "finetune" | "quantized" |
    "adapter" | "merge", "base_model": "org/name" or ["org/a", "org/b"], "datasets": ["org/dataset"],
    "license": "<Hub id or qwen3-mm-rail-1.0>", "license_name": ..., "license_link": ..., "description": "..."}``.
    ``relation`` other than ``imported`` becomes the card's ``base_model_relation``; the Hub has no value for a
    format conversion, so ``imported`` lists ``base_model`` and says so in the prose instead.
``eval_results.json``
    ``{"results": [{...}]}`` whose items take huggingface_hub ``EvalResult`` field names (``task_type``,
    ``dataset_type``, ``dataset_name``, ``metric_type``, ``metric_value`` required; ``task_name``,
    ``dataset_split``, ``metric_name``, ``source_name``, ``source_url`` ... optional). Becomes the ``model-index``.
``gguf_quality.json`` (next to the GGUF files, or in the model folder)
    ``{"reference": "how the reference was run", "files": {"<file>.gguf": {"top1_agreement": 0.98,
    "kl_divergence": 0.002}}}``. Files without an entry show size and bits per weight only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..formats.folder import SAFETENSORS_DTYPES, read_json_object, read_safetensors_header, weight_files
from ..formats.gguf_file import architecture, file_type_name, read_gguf
from ..formats.keys import AUDIO_PREFIX, VISION_PREFIX
from .licensing import OUR_LICENSE_NAME, OUR_LICENSE_TITLE, USE_RESTRICTIONS, LicenseChoice
from .provenance import Provenance

# Memory model for the "which file fits" table (printed in the card next to the table).
MEMORY_CONTEXT_TOKENS = 4096
MEMORY_RUNTIME_OVERHEAD = 512 * 2**20
MEMORY_SIZES_GB = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 80, 96, 128, 192, 256)


# ---- facts read from the files ---------------------------------------------------------------------------------


@dataclass
class ModelFacts:
    name: str
    has_vision: bool
    has_audio: bool
    text: dict  # the decoder's config fields
    params: dict[str, int]  # component -> parameter count on disk
    weight_bytes: int  # total size of the safetensors files
    weight_files: list[str]
    dtype: str  # dominant safetensors dtype
    kv_bytes_per_token: int  # f16 KV cache

    @property
    def total_params(self) -> int:
        return sum(self.params.values())


def _component(key: str) -> str:
    if key.startswith(VISION_PREFIX):
        return "vision tower"
    if key.startswith(AUDIO_PREFIX):
        return "audio tower"
    return "text decoder"


def inspect_model_folder(folder: Path, name: str | None = None) -> ModelFacts:
    folder = Path(folder)
    config = read_json_object(folder / "config.json", "export the model again")
    text = config.get("text_config") or {}
    files = weight_files(folder)
    params: dict[str, int] = {}
    dtype_bytes: dict[str, int] = {}
    for path in files:
        for key, info in read_safetensors_header(path).items():
            n = math.prod(info.shape)
            params[_component(key)] = params.get(_component(key), 0) + n
            dtype_bytes[info.dtype] = dtype_bytes.get(info.dtype, 0) + n * SAFETENSORS_DTYPES[info.dtype].itemsize
    heads = text.get("num_attention_heads") or 1
    head_dim = text.get("head_dim") or (text.get("hidden_size", 0) // heads)
    kv = 2 * text.get("num_hidden_layers", 0) * text.get("num_key_value_heads", heads) * head_dim * 2
    return ModelFacts(
        name=name or folder.name,
        has_vision=bool(config.get("vision_config")),
        has_audio=bool(config.get("audio_config")),
        text=text,
        params=dict(
            sorted(params.items(), key=lambda kv_: ["text decoder", "vision tower", "audio tower"].index(kv_[0]))
        ),
        weight_bytes=sum(p.stat().st_size for p in files),
        weight_files=[p.name for p in files],
        dtype=max(dtype_bytes, key=dtype_bytes.get) if dtype_bytes else "unknown",
        kv_bytes_per_token=kv,
    )


@dataclass
class GGUFFacts:
    file: str
    kind: str  # "model" or "mmproj"
    file_type: str  # Q4_K_M, F16 ... as llama.cpp names it
    size: int
    n_params: int
    tensor_bytes: int
    type_shares: list[tuple[str, float]]  # tensor type -> share of tensor bytes, largest first
    top1_agreement: float | None = None
    kl_divergence: float | None = None

    @property
    def bits_per_weight(self) -> float:
        # tensor data only, as llama.cpp reports BPW: the tokenizer in the metadata would swamp a tiny model
        return 8 * self.tensor_bytes / self.n_params if self.n_params else float("nan")


_TYPE_FROM_NAME = re.compile(r"-((?:I?Q\d\w*)|F16|BF16|F32)\.gguf$", re.I)


def inspect_gguf(path: Path) -> GGUFFacts:
    reader = read_gguf(path)
    n_params, by_type = 0, {}
    for tensor in reader.tensors:
        n_params += int(tensor.n_elements)
        by_type[tensor.tensor_type.name] = by_type.get(tensor.tensor_type.name, 0) + int(tensor.n_bytes)
    total = sum(by_type.values()) or 1
    shares = sorted(((t, b / total) for t, b in by_type.items()), key=lambda x: -x[1])
    file_type = file_type_name(reader)
    if file_type is None:  # a file another tool wrote without general.file_type: its name says the type
        m = _TYPE_FROM_NAME.search(path.name)
        file_type = m.group(1).upper() if m else "?"
    kind = "mmproj" if architecture(reader) == "clip" or path.name.startswith("mmproj") else "model"
    return GGUFFacts(path.name, kind, file_type, path.stat().st_size, n_params, sum(by_type.values()), shares)


# ---- formatting helpers ----------------------------------------------------------------------------------------


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def human_count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return str(n)


def fits_in(total_bytes: float) -> str:
    for gb in MEMORY_SIZES_GB:
        if total_bytes <= gb * 2**30:
            return f"{gb} GB"
    return f"> {MEMORY_SIZES_GB[-1]} GB"


def _modalities(facts: ModelFacts) -> str:
    parts = (
        ["text"] + (["images", "video frames"] if facts.has_vision else []) + (["audio"] if facts.has_audio else [])
    )
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]


def pipeline_tag(facts: ModelFacts) -> str:
    if facts.has_vision:
        return "image-text-to-text"
    if facts.has_audio:
        return "audio-text-to-text"
    return "text-generation"


# ---- card inputs -----------------------------------------------------------------------------------------------


@dataclass
class CardInputs:
    facts: ModelFacts
    license: LicenseChoice
    repo_id: str  # what users pass to from_pretrained: the Hub id, or a local folder name
    provenance: Provenance | None = None
    eval_results: list[EvalResult] = field(default_factory=list)
    ggufs: list[GGUFFacts] = field(default_factory=list)
    gguf_repo_id: str | None = None  # where the GGUF files live (sibling repo)
    gguf_reference: str | None = None  # how top-1/KL were measured
    transformers_floor: str | None = None


# ---- what the templates print ----------------------------------------------------------------------------------


def _hub_link(repo_id: str) -> str:
    return f"[{repo_id}](https://huggingface.co/{repo_id})"


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader(__package__, "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,  # Markdown, not HTML
)
_ENV.filters["hub_link"] = _hub_link


def _usage(inp: CardInputs, here: bool) -> dict:
    """Which files the llama.cpp snippets load: a mid-size text-model file, and the mmproj of the same type."""
    models = [g for g in inp.ggufs if g.kind == "model"]
    mmprojs = [g for g in inp.ggufs if g.kind == "mmproj"]
    pick = min(models, key=lambda g: abs(g.bits_per_weight - 5)) if models else None
    mmproj = next((m for m in mmprojs if pick and m.file_type == pick.file_type), mmprojs[0] if mmprojs else None)
    where = "" if here or not inp.gguf_repo_id else f" from {_hub_link(inp.gguf_repo_id)}"
    return {"pick": pick.file if pick else None, "mmproj": mmproj.file if mmproj else None, "where": where}


def _memory(inp: CardInputs, include_safetensors: bool) -> dict:
    f = inp.facts
    kv = f.kv_bytes_per_token * MEMORY_CONTEXT_TOKENS
    rows = []
    if include_safetensors:
        total = f.weight_bytes + kv + MEMORY_RUNTIME_OVERHEAD
        rows.append([f"safetensors ({f.dtype}, transformers)", human_bytes(f.weight_bytes), human_bytes(kv),
                     human_bytes(total), fits_in(total)])  # fmt: skip
    mmprojs = {g.file_type: g for g in inp.ggufs if g.kind == "mmproj"}
    any_mmproj = next(iter(mmprojs.values()), None)
    for g in sorted((g for g in inp.ggufs if g.kind == "model"), key=lambda g: g.size):
        mm = mmprojs.get(g.file_type, any_mmproj)
        weights = g.size + (mm.size if mm else 0)
        total = weights + kv + MEMORY_RUNTIME_OVERHEAD
        label = f"`{g.file}`" + (f" + `{mm.file}`" if mm else "")
        rows.append([label, human_bytes(weights), human_bytes(kv), human_bytes(total), fits_in(total)])
    return {
        "rows": rows,
        "context": MEMORY_CONTEXT_TOKENS,
        "kv_per_token": human_bytes(f.kv_bytes_per_token),
        "overhead_mib": MEMORY_RUNTIME_OVERHEAD // 2**20,
    }


def _quant(inp: CardInputs) -> dict:
    rows = []
    for g in sorted(inp.ggufs, key=lambda g: (g.kind != "model", g.size)):
        types = ", ".join(f"{t} {s:.0%}" if s >= 0.005 else f"{t} <1%" for t, s in g.type_shares[:3])
        top1 = f"{g.top1_agreement:.1%}" if g.top1_agreement is not None else "not measured"
        kl = f"{g.kl_divergence:.4g}" if g.kl_divergence is not None else "not measured"
        rows.append(
            [f"`{g.file}`", g.kind, g.file_type, human_bytes(g.size), f"{g.bits_per_weight:.2f}", types, top1, kl]
        )
    measured = any(g.top1_agreement is not None for g in inp.ggufs)
    return {"rows": rows, "reference": inp.gguf_reference, "any_measured": measured}


def _details(inp: CardInputs) -> list[list[str]]:
    f, t = inp.facts, inp.facts.text
    architecture_ = (
        "Qwen3 dense decoder"
        + (" + Qwen3-VL vision tower" if f.has_vision else "")
        + (" + Qwen3-Omni audio tower" if f.has_audio else "")
    )
    return [
        ["Architecture", architecture_ + " (`model_type: qwen3_multimodal`)"],
        ["Inputs", _modalities(f)],
        ["Decoder", f"{t.get('num_hidden_layers')} layers, hidden {t.get('hidden_size')}, "
         f"{t.get('num_attention_heads')} heads / {t.get('num_key_value_heads')} KV heads, head dim "
         f"{t.get('head_dim')}, FFN {t.get('intermediate_size')}"],
        ["Context length", str(t.get("max_position_embeddings"))],
        ["Vocabulary", f"{t.get('vocab_size')} tokens (the Qwen3 tokenizer)"],
        ["Weights", f"{f.dtype}, {len(f.weight_files)} safetensors file(s), {human_bytes(f.weight_bytes)}"],
        ["License", f"`{inp.license.title}`"],
    ]  # fmt: skip


def _eval_rows(results: list[EvalResult]) -> list[list[str]]:
    return [[r.task_name or r.task_type, r.dataset_name + (f" ({r.dataset_split})" if r.dataset_split else ""),
             r.metric_name or r.metric_type, f"{r.metric_value}", r.source_name or ""] for r in results]  # fmt: skip


def _common_values(inp: CardInputs, include_safetensors: bool, here: bool) -> dict:
    return {
        "facts": inp.facts,
        "prov": inp.provenance,
        "license": inp.license,
        "our_license_name": OUR_LICENSE_NAME,
        "our_license_title": OUR_LICENSE_TITLE,
        "use_restrictions": USE_RESTRICTIONS,
        "name": inp.repo_id.split("/")[-1],
        "repo_id": inp.repo_id,
        "memory": _memory(inp, include_safetensors),
        "quant": _quant(inp) if inp.ggufs else None,
        "usage": _usage(inp, here) if inp.ggufs else None,
    }


# ---- the two cards ---------------------------------------------------------------------------------------------


def _base_metadata(inp: CardInputs, tags: list[str]) -> dict:
    lic = inp.license
    meta = {"license": lic.hub_id, "tags": tags, "pipeline_tag": pipeline_tag(inp.facts)}
    if lic.hub_id == "other":
        meta.update(license_name=lic.name, license_link=lic.link or "LICENSE")
    elif lic.link and lic.text is not None:
        meta["license_link"] = lic.link
    return meta


def _card(data: ModelCardData, template: str, values: dict) -> ModelCard:
    body = _ENV.get_template(template).render(values)
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n", body=body)


def build_model_card(inp: CardInputs) -> ModelCard:
    f, prov = inp.facts, inp.provenance
    tags = ["qwen3", "transformers-qwen3", "custom_code"] + (["multimodal"] if f.has_vision or f.has_audio else [])
    meta = _base_metadata(inp, tags)
    meta["library_name"] = "transformers"
    if prov is not None:
        meta["base_model"] = list(prov.base_model)
        if prov.relation != "imported":
            meta["base_model_relation"] = prov.relation
        if prov.datasets:
            meta["datasets"] = list(prov.datasets)
    if inp.eval_results:
        meta["model_name"] = inp.repo_id.split("/")[-1]
        meta["eval_results"] = inp.eval_results
    param_rows = [[k, human_count(v)] for k, v in f.params.items()] + [["total", human_count(f.total_params)]]
    gguf_where = (
        _hub_link(inp.gguf_repo_id) if inp.gguf_repo_id else f"the sibling folder `{inp.repo_id.split('/')[-1]}-GGUF`"
    )
    values = _common_values(inp, include_safetensors=True, here=False) | {
        "modalities": _modalities(f),
        "details": _details(inp),
        "param_rows": param_rows,
        "eval_rows": _eval_rows(inp.eval_results),
        "transformers_floor": inp.transformers_floor,
        "gguf_where": gguf_where,
    }
    return _card(ModelCardData(**meta), "model_card.md.jinja", values)


def build_gguf_card(inp: CardInputs) -> ModelCard:
    f = inp.facts
    tags = ["gguf", "llama.cpp", "qwen3", "transformers-qwen3"] + (
        ["multimodal"] if f.has_vision or f.has_audio else []
    )
    meta = _base_metadata(inp, tags)
    if "/" in inp.repo_id:  # the transformers repo is on the Hub: the GGUF repo is its quantization
        meta.update(base_model=[inp.repo_id], base_model_relation="quantized")
    values = _common_values(inp, include_safetensors=False, here=True) | {
        "source": _hub_link(inp.repo_id) if "/" in inp.repo_id else f"`{inp.repo_id}`",
        "has_mmproj": any(g.kind == "mmproj" for g in inp.ggufs),
    }
    return _card(ModelCardData(**meta), "gguf_card.md.jinja", values)
