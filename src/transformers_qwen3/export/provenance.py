"""The records a model folder may carry, read and checked: where the weights came from
(``qwen3_multimodal_provenance.json``), evaluation results (``eval_results.json``) and measured GGUF quality
(``gguf_quality.json``). Their formats are described in :mod:`.modelcard`'s docstring."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult

from .errors import ExportError

PROVENANCE_FILE = "qwen3_multimodal_provenance.json"
EVAL_RESULTS_FILE = "eval_results.json"
GGUF_QUALITY_FILE = "gguf_quality.json"
RELATIONS = ("imported", "finetune", "quantized", "adapter", "merge")


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
