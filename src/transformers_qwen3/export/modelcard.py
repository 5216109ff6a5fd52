"""Model cards for exported folders: metadata with huggingface_hub's ``ModelCardData``, prose computed from files.

Everything the card states is read from the exported files or from small JSON records the model folder may carry;
nothing is estimated except the memory table, whose formula the card prints next to it.

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

import json
import re
import struct
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..errors import UserError

PROVENANCE_FILE = "qwen3_multimodal_provenance.json"
EVAL_RESULTS_FILE = "eval_results.json"
GGUF_QUALITY_FILE = "gguf_quality.json"

OUR_LICENSE_NAME = "qwen3-mm-rail-1.0"
OUR_LICENSE_TITLE = "Qwen3-MM Responsible AI License 1.0"
OUR_LICENSE_RESOURCE = "QWEN3-MM-RAIL-1.0.md"

# The Hub's accepted `license:` ids (huggingface/hub-docs, docs/hub/repositories-licenses.md, plus the Llama 3.x
# ids added there later). Anything else must be `other` with `license_name` / `license_link` and a LICENSE file.
HUB_LICENSE_IDS = frozenset(
    """
    apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
    afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0
    cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
    cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
    cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 agpl-3.0 gfdl gpl
    gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql
    ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license llama2 llama3 llama3.1 llama3.2 llama3.3 gemma
    unknown other
    """.split()
)
# Licences whose terms carry use-based restrictions: the card then has a "Use restrictions" section.
RAIL_LICENSE_IDS = frozenset(
    {
        "openrail",
        "openrail++",
        "bigscience-openrail-m",
        "creativeml-openrail-m",
        "bigscience-bloom-rail-1.0",
        "bigcode-openrail-m",
        OUR_LICENSE_NAME,
    }
)
RELATIONS = ("imported", "finetune", "quantized", "adapter", "merge")
LICENSE_FILE_NAMES = ("LICENSE", "LICENSE.md", "LICENSE.txt")

# Attachment A of our licence, one line each, for the card (the LICENSE file holds the binding text).
USE_RESTRICTIONS = (
    "weapons of any kind and military use, including targeting and weapon-system operation",
    "anything that violates applicable law",
    "fraud, scams, impersonation, deliberate disinformation, or hiding that content is machine-generated "
    "where that deceives people",
    "surveillance that violates rights: mass surveillance, tracking people without a lawful basis, real-time "
    "biometric identification in public spaces, inferring sensitive traits from faces or voices",
    "harassment, threats, stalking, defamation, doxxing, encouraging self-harm",
    "discrimination on protected characteristics, and fully automated decisions with legal or similarly "
    "significant effects (jobs, credit, housing, benefits ...) without human review",
    "sexual content involving minors, and non-consensual intimate content of real people",
    "medical or legal advice without the oversight of a qualified professional",
    "unsupervised control of safety-critical systems (vehicles, medical devices, infrastructure)",
    "exploiting the vulnerabilities of people because of age, disability or situation",
    "malware and attacks on systems you are not authorised to test",
)

# Memory model for the "which file fits" table (printed in the card next to the table).
MEMORY_CONTEXT_TOKENS = 4096
MEMORY_RUNTIME_OVERHEAD = 512 * 2**20
MEMORY_SIZES_GB = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 80, 96, 128, 192, 256)

_SAFETENSORS_BITS = {"F64": 64, "F32": 32, "F16": 16, "BF16": 16, "I64": 64, "I32": 32, "I16": 16, "I8": 8,
                     "U8": 8, "BOOL": 8, "F8_E4M3": 8, "F8_E5M2": 8}  # fmt: skip


class ExportError(UserError, ValueError):
    """A problem with the user's input, stated so that they can fix it."""


# ---- licence ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LicenseChoice:
    hub_id: str  # the card's `license:` value
    name: str | None = None  # `license_name` (only with hub_id "other")
    link: str | None = None  # `license_link`
    text: str | None = None  # content of the LICENSE file to write; None = write none
    origin: str = ""  # where the choice came from, for the export summary

    @property
    def restricted(self) -> bool:
        return self.hub_id in RAIL_LICENSE_IDS or (self.name or "") in RAIL_LICENSE_IDS

    @property
    def title(self) -> str:
        if self.name == OUR_LICENSE_NAME:
            return OUR_LICENSE_TITLE
        return self.name if self.hub_id == "other" and self.name else self.hub_id


def our_license_text() -> str:
    return (resources.files(__package__) / "licenses" / OUR_LICENSE_RESOURCE).read_text(encoding="utf-8")


def our_license() -> LicenseChoice:
    return LicenseChoice("other", OUR_LICENSE_NAME, "LICENSE", our_license_text(), "the project's licence")


def accepted_license_ids() -> list[str]:
    return sorted(HUB_LICENSE_IDS | {OUR_LICENSE_NAME})


def _pointer_text(hub_id: str) -> str:
    return (
        f"This model is distributed under the license with the Hugging Face Hub id `{hub_id}`.\n"
        "The full text is not bundled by transformers-qwen3; replace this file with the license's full text "
        "before publishing if the license requires a copy to accompany the model.\n"
        "List of Hub license ids: https://huggingface.co/docs/hub/repositories-licenses\n"
    )


def _find_license_file(folder: Path, link: str | None) -> Path | None:
    names = ([link] if link and "://" not in link else []) + list(LICENSE_FILE_NAMES)
    for name in names:
        path = (folder / name).resolve()
        if path.is_file() and path.is_relative_to(folder.resolve()):
            return path
    return None


def read_card_metadata(folder: Path) -> dict:
    """The YAML metadata of ``folder/README.md`` ({} if there is no card)."""
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return {}
    try:
        return ModelCard.load(readme).data.to_dict()
    except Exception as err:  # huggingface_hub raises ValueError / yaml errors for broken front matter
        raise ExportError(f"{readme}: cannot read the model card's YAML metadata ({err}); fix or remove it.") from err


def _license_from_metadata(folder: Path, meta: dict, where: str) -> LicenseChoice | None:
    hub_id = meta.get("license")
    if not hub_id:
        return None
    hub_id = str(hub_id).lower()
    name, link = meta.get("license_name"), meta.get("license_link")
    if hub_id == OUR_LICENSE_NAME:  # a record naming our licence directly
        hub_id, name = "other", OUR_LICENSE_NAME
    if hub_id not in HUB_LICENSE_IDS:
        raise ExportError(
            f"{where} names license {hub_id!r}, which the Hub does not accept. "
            f"Fix it, or pass --license with one of: {', '.join(accepted_license_ids())}."
        )
    found = _find_license_file(folder, link)
    if hub_id == "other":
        if not name:
            raise ExportError(f"{where} says license: other but gives no license_name; add one, or pass --license.")
        if found is not None:
            text = found.read_text(encoding="utf-8")
        elif name == OUR_LICENSE_NAME:
            text = our_license_text()
        else:
            raise ExportError(
                f"{where} names license {name!r} but {folder} has no LICENSE file with its text; "
                "add the file, or pass --license."
            )
        return LicenseChoice("other", name, "LICENSE", text, f"inherited from {where}")
    text = found.read_text(encoding="utf-8") if found is not None else _pointer_text(hub_id)
    return LicenseChoice(hub_id, None, "LICENSE", text, f"inherited from {where}")


def resolve_license(folder: Path, requested: str | None = None) -> LicenseChoice:
    """The licence of an export of ``folder``.

    Without ``requested``, a derived export keeps the licence of the model it was made from: the source card's
    metadata, else the provenance record's ``license``, else (a model this project created) our own licence.
    ``requested`` (``--license``) overrides with a Hub id or our licence's name.
    """
    folder = Path(folder)
    if requested is not None:
        wanted = requested.strip().lower()
        if wanted == OUR_LICENSE_NAME:
            return replace(our_license(), origin="--license")
        if wanted == "other":
            inherited = _license_from_metadata(folder, read_card_metadata(folder), f"{folder}/README.md")
            if inherited is None or inherited.hub_id != "other":
                raise ExportError(
                    "--license other keeps the source's own licence, but the model folder's README.md does not "
                    f"declare license: other with a license_name and LICENSE file. Use {OUR_LICENSE_NAME!r} or a "
                    "Hub id instead."
                )
            return inherited
        if wanted not in HUB_LICENSE_IDS:
            raise ExportError(
                f"unknown licence id {requested!r}. Accepted: {', '.join(accepted_license_ids())} "
                "(Hub ids from https://huggingface.co/docs/hub/repositories-licenses)."
            )
        source = _license_from_metadata(folder, read_card_metadata(folder), "source card")
        found = _find_license_file(folder, None) if source is not None and source.hub_id == wanted else None
        text = found.read_text(encoding="utf-8") if found is not None else _pointer_text(wanted)
        return LicenseChoice(wanted, None, "LICENSE", text, "--license")

    meta = read_card_metadata(folder)
    choice = _license_from_metadata(folder, meta, f"{folder / 'README.md'}")
    if choice is None:
        prov = read_provenance(folder)
        if prov is not None and prov.license:
            choice = _license_from_metadata(
                folder,
                {"license": prov.license, "license_name": prov.license_name, "license_link": prov.license_link},
                f"{folder / PROVENANCE_FILE}",
            )
    return choice if choice is not None else replace(our_license(), origin="default (no licence in the source)")


# ---- records the model folder may carry ------------------------------------------------------------------------


@dataclass(frozen=True)
class Provenance:
    relation: str
    base_model: tuple[str, ...]
    datasets: tuple[str, ...] = ()
    license: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    description: str | None = None


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ExportError(f"{path}: not readable JSON ({err}).") from err


def _str_list(value, path: Path, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ExportError(f"{path}: {key!r} must be a string or a list of strings, got {value!r}.")
    return tuple(value)


def read_provenance(folder: Path) -> Provenance | None:
    path = Path(folder) / PROVENANCE_FILE
    if not path.is_file():
        return None
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object.")
    relation = data.get("relation")
    if relation not in RELATIONS:
        raise ExportError(f"{path}: 'relation' must be one of {', '.join(RELATIONS)}, got {relation!r}.")
    base = _str_list(data.get("base_model"), path, "base_model")
    if not base:
        raise ExportError(f"{path}: 'base_model' (the Hub id of the model this one derives from) is required.")
    return Provenance(
        relation=relation,
        base_model=base,
        datasets=_str_list(data.get("datasets"), path, "datasets"),
        license=data.get("license"),
        license_name=data.get("license_name"),
        license_link=data.get("license_link"),
        description=data.get("description"),
    )


_EVAL_FIELDS = set(EvalResult.__dataclass_fields__)
_EVAL_REQUIRED = ("task_type", "dataset_type", "dataset_name", "metric_type", "metric_value")


def read_eval_results(folder: Path) -> list[EvalResult]:
    path = Path(folder) / EVAL_RESULTS_FILE
    if not path.is_file():
        return []
    data = _read_json(path)
    items = data.get("results") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ExportError(f"{path}: expected {{'results': [...]}} or a list of results.")
    results = []
    for i, item in enumerate(items):
        missing = [k for k in _EVAL_REQUIRED if not isinstance(item, dict) or k not in item]
        if missing:
            raise ExportError(f"{path}: result {i} lacks {', '.join(missing)}.")
        results.append(EvalResult(**{k: v for k, v in item.items() if k in _EVAL_FIELDS}))
    return results


def read_gguf_quality(*folders: Path) -> tuple[dict[str, dict], str | None]:
    """Measured quality per GGUF file name, and how the reference was run (first record found wins)."""
    for folder in folders:
        path = Path(folder) / GGUF_QUALITY_FILE
        if path.is_file():
            data = _read_json(path)
            if not isinstance(data, dict) or not isinstance(data.get("files", {}), dict):
                raise ExportError(f"{path}: expected {{'files': {{'<name>.gguf': {{...}}}}}}.")
            return data.get("files", {}), data.get("reference")
    return {}, None


# ---- facts read from the files ---------------------------------------------------------------------------------


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


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
    if key.startswith("model.visual."):
        return "vision tower"
    if key.startswith("model.audio_tower."):
        return "audio tower"
    return "text decoder"


def inspect_model_folder(folder: Path, name: str | None = None) -> ModelFacts:
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    text = config.get("text_config") or {}
    files = sorted(p for p in folder.glob("*.safetensors"))
    params: dict[str, int] = {}
    dtype_bytes: dict[str, int] = {}
    for path in files:
        for key, info in _safetensors_header(path).items():
            if key == "__metadata__":
                continue
            n = 1
            for dim in info["shape"]:
                n *= dim
            params[_component(key)] = params.get(_component(key), 0) + n
            dtype_bytes[info["dtype"]] = (
                dtype_bytes.get(info["dtype"], 0) + n * _SAFETENSORS_BITS.get(info["dtype"], 0) // 8
            )
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
    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(path)
    n_params, by_type = 0, {}
    for tensor in reader.tensors:
        n_params += int(tensor.n_elements)
        by_type[tensor.tensor_type.name] = by_type.get(tensor.tensor_type.name, 0) + int(tensor.n_bytes)
    total = sum(by_type.values()) or 1
    shares = sorted(((t, b / total) for t, b in by_type.items()), key=lambda x: -x[1])
    file_type = None
    ft = reader.get_field("general.file_type")
    if ft is not None:
        try:
            file_type = LlamaFileType(int(ft.contents())).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            file_type = None
    if file_type is None:
        m = _TYPE_FROM_NAME.search(path.name)
        file_type = m.group(1).upper() if m else "?"
    arch = reader.get_field("general.architecture")
    kind = "mmproj" if (arch is not None and arch.contents() == "clip") or path.name.startswith("mmproj") else "model"
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


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


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


def _provenance_sentence(prov: Provenance | None) -> str:
    if prov is None:
        return (
            "No provenance record came with the weights, so this card names no base model. A model written by "
            "`transformers-qwen3 init` is randomly initialised and answers nonsense."
        )
    bases = ", ".join(f"[{b}](https://huggingface.co/{b})" for b in prov.base_model)
    verb = {
        "imported": f"holds the same weights as {bases}, converted to the transformers-qwen3 layout",
        "finetune": f"is a fine-tune of {bases}",
        "quantized": f"is a quantized version of {bases}",
        "adapter": f"is an adapter for {bases}",
        "merge": f"is a merge of {bases}",
    }[prov.relation]
    text = f"This model {verb}."
    if prov.description:
        text += " " + prov.description.strip()
    return text


def _usage_transformers(inp: CardInputs) -> str:
    f = inp.facts
    rid = inp.repo_id
    if f.has_vision or f.has_audio:
        media = []
        if f.has_vision:
            media.append('{"type": "image", "path": "photo.jpg"}')
        if f.has_audio:
            media.append('{"type": "audio", "path": "clip.wav"}')
        content = ", ".join(media + ['{"type": "text", "text": "What do you see and hear?"}'])
        return f"""```python
import torch
from transformers import AutoModelForCausalLM, AutoProcessor

model = AutoModelForCausalLM.from_pretrained("{rid}", trust_remote_code=True, dtype=torch.bfloat16)
processor = AutoProcessor.from_pretrained("{rid}", trust_remote_code=True)

messages = [{{"role": "user", "content": [{content}]}}]
inputs = processor.apply_chat_template(
    messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
)
out = model.generate(**inputs, max_new_tokens=64)
print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

Media can also be named inline in plain text, e.g. `processor(text="Describe <image>photo.jpg</image>")`. Local
files are read only below the current working directory and network fetching is off unless you enable it (see the
transformers-qwen3 documentation)."""
    return f"""```python
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{rid}", trust_remote_code=True, dtype=torch.bfloat16)
tokenizer = AutoTokenizer.from_pretrained("{rid}", trust_remote_code=True)

messages = [{{"role": "user", "content": "Give me a short introduction to large language models."}}]
inputs = tokenizer.apply_chat_template(
    messages, add_generation_prompt=True, return_dict=True, return_tensors="pt", enable_thinking=False
)
out = model.generate(**inputs, max_new_tokens=64)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```"""


def _usage_pipeline(inp: CardInputs) -> str:
    f = inp.facts
    args = []
    if f.has_vision:
        args.append('images="photo.jpg"')
    if f.has_audio:
        args.append('audio="clip.wav"')
    args += ['text="Describe what you see and hear."' if args else 'text="Tell me about Qwen3."', "max_length=100"]
    return f"""With the `transformers-qwen3` package installed (`pip install transformers-qwen3`):

```python
from qwen3_multimodal import Pipeline  # the same class as transformers_qwen3.Pipeline

pipe = Pipeline.from_pretrained("{inp.repo_id}")
print(pipe({", ".join(args)}))
```"""


def _usage_llama_cpp(inp: CardInputs, here: bool) -> str:
    models = [g for g in inp.ggufs if g.kind == "model"]
    if not models:
        return ""
    pick = min(models, key=lambda g: abs(g.bits_per_weight - 5))  # a mid-size file as the example
    mmprojs = [g for g in inp.ggufs if g.kind == "mmproj"]
    mmproj = next((m for m in mmprojs if m.file_type == pick.file_type), mmprojs[0] if mmprojs else None)
    where = (
        ""
        if here or not inp.gguf_repo_id
        else f" from [{inp.gguf_repo_id}](https://huggingface.co/{inp.gguf_repo_id})"
    )
    f = inp.facts
    if mmproj is not None:
        intro = f"Download a text-model file and, for images or audio, the `mmproj` file{where}, then:"
    else:
        intro = f"Download a model file{where}, then:"
    lines = [intro, "", "```bash"]
    if mmproj is not None:
        media = (" --image photo.jpg" if f.has_vision else "") + (" --audio clip.wav" if f.has_audio else "")
        lines.append(
            f'llama-mtmd-cli -m {pick.file} --mmproj {mmproj.file}{media} -p "Describe what you see and hear."'
        )
    else:
        lines.append(f'llama-cli -m {pick.file} -p "Give me a short introduction to large language models." -n 64')
    lines += ["```", "", "With llama-cpp-python:", "", "```python"]
    if mmproj is not None:
        parts = []
        if f.has_vision:
            parts.append('    {"type": "image_url", "image_url": {"url": data_url("photo.jpg", "image/jpeg")}},')
        if f.has_audio:  # the chat handler takes audio as a data URL inside an image_url part
            parts.append('    {"type": "image_url", "image_url": {"url": data_url("clip.wav", "audio/wav")}},')
        lines += [
            "import base64",
            "",
            "from llama_cpp import Llama",
            "from llama_cpp.llama_chat_format import MTMDChatHandler",
            "",
            "",
            "def data_url(path, mime):",
            '    return f"data:{mime};base64," + base64.b64encode(open(path, "rb").read()).decode()',
            "",
            "",
            f'llm = Llama(model_path="{pick.file}", n_ctx=4096,',
            f'            chat_handler=MTMDChatHandler(clip_model_path="{mmproj.file}"))',
            'messages = [{"role": "user", "content": [',
            *parts,
            '    {"type": "text", "text": "Describe what you see and hear."}]}]',
        ]
    else:
        lines += [
            "from llama_cpp import Llama",
            "",
            f'llm = Llama(model_path="{pick.file}", n_ctx=4096)',
            'messages = [{"role": "user", "content": "Give me a short introduction to large language models."}]',
        ]
    lines += ['print(llm.create_chat_completion(messages=messages)["choices"][0]["message"]["content"])', "```"]
    if f.has_vision and f.has_audio:
        lines += [
            "",
            "The `mmproj` file holds both encoders. Stock llama.cpp refuses an mmproj that holds a Qwen3-VL vision "
            'encoder with deepstack together with an audio encoder ("mismatch between vision and audio mmproj"): '
            "use a llama.cpp / llama-cpp-python built with the patches in transformers-qwen3's `ggml_patches/` "
            "(`make llama-cpp`), which also make the audio tokens match transformers'.",
        ]
    return "\n".join(lines)


def _memory_table(inp: CardInputs, include_safetensors: bool) -> str:
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
    table = _table(["Files", "Weights", f"KV cache ({MEMORY_CONTEXT_TOKENS} tokens, f16)", "Total", "Fits in"], rows)
    return (
        table + "\n\nTotal = file sizes + an f16 KV cache for "
        f"{MEMORY_CONTEXT_TOKENS} tokens ({human_bytes(f.kv_bytes_per_token)} per token, from the config) + "
        f'{MEMORY_RUNTIME_OVERHEAD // 2**20} MiB for runtime buffers. "Fits in" is the smallest common RAM/VRAM '
        "size that holds the total; longer contexts need proportionally more KV cache, and image or audio inputs "
        "add their encoder's activations."
    )


def _quant_table(inp: CardInputs) -> str:
    rows = []
    for g in sorted(inp.ggufs, key=lambda g: (g.kind != "model", g.size)):
        types = ", ".join(f"{t} {s:.0%}" if s >= 0.005 else f"{t} <1%" for t, s in g.type_shares[:3])
        top1 = f"{g.top1_agreement:.1%}" if g.top1_agreement is not None else "not measured"
        kl = f"{g.kl_divergence:.4g}" if g.kl_divergence is not None else "not measured"
        rows.append(
            [f"`{g.file}`", g.kind, g.file_type, human_bytes(g.size), f"{g.bits_per_weight:.2f}", types, top1, kl]
        )
    text = _table(
        ["File", "Kind", "Type", "Size", "Bits/weight", "Tensor types (by bytes)", "Top-1 agreement", "KL"], rows
    )
    text += (
        "\n\nBits per weight = tensor data × 8 / number of weights (metadata such as the tokenizer excluded). llama.cpp keeps norms in F32 and "
        "substitutes other types for K-quants on tensors whose rows are not a multiple of 256, so the tensor-type "
        "column shows what was actually written."
    )
    if inp.gguf_reference:
        text += f" Top-1 agreement and KL divergence: {inp.gguf_reference}."
    elif any(g.top1_agreement is not None for g in inp.ggufs):
        text += " Top-1 agreement and KL divergence are against the full-precision model."
    return text


def _restrictions_section(lic: LicenseChoice) -> str:
    if lic.name == OUR_LICENSE_NAME:
        items = "\n".join(f"- {r}" for r in USE_RESTRICTIONS)
        return (
            f"## License and use restrictions\n\nThis model is released under the **{OUR_LICENSE_TITLE}** "
            "(see [LICENSE](LICENSE)): use, modification and redistribution are free, commercial use included, "
            "except for the uses below. Anyone who redistributes the model or a derivative (fine-tune, merge, "
            "quantization, conversion) must pass these restrictions on.\n\nYou may not use the model, derivatives or "
            f"their outputs for:\n\n{items}\n\nThe LICENSE file holds the binding text; this list is a summary."
        )
    if lic.restricted:
        return (
            f"## License and use restrictions\n\nThis model is released under `{lic.title}`, a licence with "
            "use-based restrictions that must be passed on to derivatives. See [LICENSE](LICENSE) for its terms."
        )
    return f"## License\n\nThis model is released under `{lic.title}`; see [LICENSE](LICENSE)."


def _audio_section(facts: ModelFacts) -> str:
    if not facts.has_audio:
        return ""
    return (
        "## Audio input needs extra packages\n\nThe remote-code files import only torch and transformers, so they "
        "cannot decode audio files themselves. For audio input with transformers (or the Pipeline API), install a "
        "decoder next to transformers:\n\n```bash\n"
        "pip install soundfile numpy   # WAV, FLAC, OGG; soundfile's wheels bundle libsndfile\n```\n\n"
        "Audio is resampled to 16 kHz mono and turned into 128-bin log-mel features by transformers' "
        "`WhisperFeatureExtractor`; the audio tower yields about 13 tokens per second of audio."
    )


def _base_metadata(inp: CardInputs, tags: list[str]) -> dict:
    lic = inp.license
    meta = {"license": lic.hub_id, "tags": tags, "pipeline_tag": pipeline_tag(inp.facts)}
    if lic.hub_id == "other":
        meta.update(license_name=lic.name, license_link=lic.link or "LICENSE")
    elif lic.link and lic.text is not None:
        meta["license_link"] = lic.link
    return meta


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
    data = ModelCardData(**meta)

    t = f.text
    param_rows = [[k, human_count(v)] for k, v in f.params.items()] + [["total", human_count(f.total_params)]]
    details = _table(
        ["", ""],
        [
            ["Architecture", "Qwen3 dense decoder" + (" + Qwen3-VL vision tower" if f.has_vision else "")
             + (" + Qwen3-Omni audio tower" if f.has_audio else "") + " (`model_type: qwen3_multimodal`)"],
            ["Inputs", _modalities(f)],
            ["Decoder", f"{t.get('num_hidden_layers')} layers, hidden {t.get('hidden_size')}, "
             f"{t.get('num_attention_heads')} heads / {t.get('num_key_value_heads')} KV heads, head dim "
             f"{t.get('head_dim')}, FFN {t.get('intermediate_size')}"],
            ["Context length", str(t.get("max_position_embeddings"))],
            ["Vocabulary", f"{t.get('vocab_size')} tokens (the Qwen3 tokenizer)"],
            ["Weights", f"{f.dtype}, {len(f.weight_files)} safetensors file(s), {human_bytes(f.weight_bytes)}"],
            ["License", f"`{inp.license.title}`"],
        ],
    )  # fmt: skip
    sections = [
        f"# {inp.repo_id.split('/')[-1]}",
        f"A Qwen3 model that reads {_modalities(f)}, packaged for Hugging Face transformers as remote code "
        "(load it with `trust_remote_code=True`). " + _provenance_sentence(prov),
        "## Model details\n\n"
        + details
        + "\n\nParameters on disk:\n\n"
        + _table(["Component", "Parameters"], param_rows),
    ]
    if inp.eval_results:
        rows = [[r.task_name or r.task_type, r.dataset_name + (f" ({r.dataset_split})" if r.dataset_split else ""),
                 r.metric_name or r.metric_type, f"{r.metric_value}", r.source_name or ""] for r in inp.eval_results]  # fmt: skip
        sections.append("## Evaluation\n\n" + _table(["Task", "Dataset", "Metric", "Value", "Source"], rows))
    usage = "## How to use\n\n### transformers\n\n"
    if inp.transformers_floor:
        usage += f"Needs `transformers>={inp.transformers_floor}` and `torch`.\n\n"
    usage += _usage_transformers(inp) + "\n\n### Pipeline API\n\n" + _usage_pipeline(inp)
    if inp.ggufs:
        usage += "\n\n### llama.cpp\n\n" + _usage_llama_cpp(inp, here=False)
    sections.append(usage)
    if inp.ggufs:
        where = (f"[{inp.gguf_repo_id}](https://huggingface.co/{inp.gguf_repo_id})" if inp.gguf_repo_id
                 else f"the sibling folder `{inp.repo_id.split('/')[-1]}-GGUF`")  # fmt: skip
        sections.append(f"## GGUF files\n\nGGUF files for llama.cpp are in {where}:\n\n" + _quant_table(inp))
    sections.append("## Which file fits which memory\n\n" + _memory_table(inp, include_safetensors=True))
    if _audio_section(f):
        sections.append(_audio_section(f))
    sections.append(
        "## Limitations\n\nOutputs can be wrong, biased or offensive. Check them before relying on them, and do not use "
        "the model where an error can harm people without a human in the loop."
    )
    sections.append(_restrictions_section(inp.license))
    sections.append("---\n\nThis card was generated by `transformers-qwen3 export`.")
    return ModelCard.from_template(
        data, template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n", body="\n\n".join(sections)
    )


def build_gguf_card(inp: CardInputs) -> ModelCard:
    f = inp.facts
    tags = ["gguf", "llama.cpp", "qwen3", "transformers-qwen3"] + (
        ["multimodal"] if f.has_vision or f.has_audio else []
    )
    meta = _base_metadata(inp, tags)
    if "/" in inp.repo_id:  # the transformers repo is on the Hub: the GGUF repo is its quantization
        meta.update(base_model=[inp.repo_id], base_model_relation="quantized")
    data = ModelCardData(**meta)
    source = f"[{inp.repo_id}](https://huggingface.co/{inp.repo_id})" if "/" in inp.repo_id else f"`{inp.repo_id}`"
    intro = [f"GGUF files of {source} for llama.cpp and llama-cpp-python, converted with `transformers-qwen3 export`."]
    if any(g.kind == "mmproj" for g in inp.ggufs):
        intro.append(
            "The text model and the media encoders are separate files: load a text-model file and, for images or "
            "audio, the `mmproj` file beside it."
        )
    intro.append(_provenance_sentence(inp.provenance))
    sections = [
        f"# {inp.repo_id.split('/')[-1]} GGUF",
        " ".join(intro),
        "## Files\n\n" + _quant_table(inp),
        "## Which file fits which memory\n\n" + _memory_table(inp, include_safetensors=False),
        "## How to use\n\n" + _usage_llama_cpp(inp, here=True),
    ]
    sections.append(_restrictions_section(inp.license))
    sections.append("---\n\nThis card was generated by `transformers-qwen3 export`.")
    return ModelCard.from_template(
        data, template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n", body="\n\n".join(sections)
    )
