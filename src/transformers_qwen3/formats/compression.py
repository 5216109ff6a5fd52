"""A compression plan's file and its structural part, as pure functions over configs and named tensors: the one
home both runtimes use (``compress/apply.py`` for transformers, ``convert --plan`` for GGUF; docs/compression.md).

The structure of a plan (``layers``: one entry per decoder layer with ``skip``, ``ffn_width``, ``ffn_full`` and,
when the width is cut, ``ffn_order``, the layer's neurons most important first):

- each kept layer's FFN neurons are permuted by ``ffn_order`` and cut to the first ``ffn_width`` (rows of
  ``gate_proj`` / ``up_proj``, columns of ``down_proj``); a layer without ``ffn_order`` keeps its stored order,
  which only a full-width layer may do;
- skipped layers are dropped and the kept ones renumbered from 0 (``model.layers.7.`` may become ``model.layers.6.``);
- the text config gets ``num_hidden_layers``, ``layer_types`` (the kept layers'), ``intermediate_size`` (an int
  when every kept layer has the same width, else one width per layer) and ``skipped_layers`` (original indices).

Qwen3-VL's deepstack adds the vision tower's deepstack features to the hidden states after each of the first
``len(deepstack_visual_indexes)`` decoder layers (transformers and llama.cpp alike). Skipping one of those layers
would move where the features go, so a plan that does is refused for a model with a vision tower.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from .folder import Checkpoint

SCHEMA = "transformers-qwen3/plan"
VERSION = 1
_LAYER = re.compile(r"^(model\.layers\.)(\d+)(\..*)$")
_FFN_ROWS = (".mlp.gate_proj.weight", ".mlp.up_proj.weight")
_FFN_COLUMNS = ".mlp.down_proj.weight"


class PlanError(UserError, ValueError):
    """A budget that cannot be met, or a plan that cannot be used for this model (the message says why)."""


# --- the file --------------------------------------------------------------------------------------------------------
def read_plan(path: str | Path, model_sha256: str | None = None) -> dict:
    """Read a plan file; refuse one that is not JSON, not a plan, of a newer schema, malformed, or (given
    ``model_sha256``) made for another model."""
    path = Path(path)
    try:
        plan = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise PlanError(f"{path}: no such plan file; make one with `transformers-qwen3 plan`") from e
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise PlanError(f"{path}: not a plan file ({e})") from e
    return check_plan(plan, str(path), model_sha256)


def check_plan(plan: Any, where: str = "plan", model_sha256: str | None = None) -> dict:
    """The checks of ``read_plan`` on a plan already in memory; returns it."""
    if not isinstance(plan, dict) or plan.get("schema") != SCHEMA:
        raise PlanError(f"{where}: not a plan file (no '{SCHEMA}' schema)")
    version = plan.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PlanError(f"{where}: malformed plan (version {version!r})")
    if version > VERSION:
        raise PlanError(
            f"{where}: plan schema version {version} is newer than this version reads ({VERSION}); "
            "upgrade transformers-qwen3"
        )
    if model_sha256 is not None and plan.get("model_sha256") != model_sha256:
        raise PlanError(
            f"{where}: the plan was made for another model (sha256 {str(plan.get('model_sha256'))[:12]}…, this "
            f"model is {model_sha256[:12]}…); plan this model"
        )
    try:
        layers = plan["layers"]
        if not isinstance(layers, list) or not layers:
            raise ValueError("'layers' must be a non-empty list")
        for i, entry in enumerate(layers):
            if entry["index"] != i:
                raise ValueError(f"layers[{i}] has index {entry['index']!r}")
            if not isinstance(entry["skip"], bool):
                raise ValueError(f"layers[{i}].skip must be true or false")
            full, width = entry["ffn_full"], entry["ffn_width"]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (full, width)) or not 0 < width <= full:
                raise ValueError(f"layers[{i}]: ffn_width {width!r} must be a whole number in 1..ffn_full ({full!r})")
            order = entry.get("ffn_order")
            if order is not None and sorted(order) != list(range(full)):
                raise ValueError(f"layers[{i}].ffn_order is not a permutation of the layer's {full} neurons")
            if order is None and width < full and not entry["skip"]:
                raise ValueError(f"layers[{i}] cuts the FFN to {width} of {full} neurons but has no ffn_order")
        if all(entry["skip"] for entry in layers):
            raise ValueError("every layer is skipped")
        tensors = plan["tensors"]
        if not isinstance(tensors, dict):
            raise ValueError("'tensors' must be an object")
        for name, t in tensors.items():
            if not isinstance(t, dict) or not isinstance(t.get("type"), str):
                raise ValueError(f"tensors[{name!r}] has no type")
            _ggml_type(t["type"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PlanError(f"{where}: malformed plan ({type(e).__name__}: {e})") from e
    return plan


def _ggml_type(name: str):
    import gguf

    try:
        return gguf.GGMLQuantizationType[name]
    except KeyError:
        raise ValueError(f"unknown ggml type {name!r}") from None


def checkpoint_sha256(ckpt: Checkpoint) -> str:
    """The model hash plans and calibrations carry: sha256 over every stored tensor (name, dtype, shape, bytes), in
    name order (the same algorithm as ``compress.calibrate.model_sha256``; a test checks they agree)."""
    h = hashlib.sha256()
    for name in sorted(ckpt.tensors):
        src = ckpt.tensors[name]
        h.update(f"{name}|{src.dtype}|{list(src.shape)}\n".encode())
        h.update(ckpt.load(name).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --- the structure ------------------------------------------------------------------------------------------------------
@dataclass
class Structure:
    """What a plan does to the decoder's shape, checked against one model's text (and vision) config."""

    n_layers: int
    kept: list[int]  # original indices of the kept layers, in order
    widths: dict[int, int]  # original index -> kept FFN width
    full: dict[int, int]  # original index -> full FFN width
    orders: dict[int, torch.Tensor | None] = field(default_factory=dict)  # original index -> neuron order (or None)

    @property
    def skipped(self) -> list[int]:
        return [i for i in range(self.n_layers) if i not in self.kept]

    def new_index(self, layer: int) -> int | None:
        return self.kept.index(layer) if layer in self.kept else None

    def keep(self, layer: int) -> torch.Tensor | None:
        """The neurons layer ``layer`` keeps, in their new order (None: all, as stored)."""
        order, width = self.orders.get(layer), self.widths[layer]
        if order is None:
            return None if width == self.full[layer] else torch.arange(width)
        return order[:width]

    def renamed(self, name: str) -> str | None:
        """A checkpoint tensor's name in the compressed model (None: its layer is skipped)."""
        m = _LAYER.match(name)
        if m is None:
            return name
        new = self.new_index(int(m.group(2)))
        return None if new is None else f"{m.group(1)}{new}{m.group(3)}"

    def sliced(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A checkpoint tensor (original name) as the compressed model holds it: FFN neurons permuted and cut."""
        m = _LAYER.match(name)
        if m is None:
            return tensor
        keep = self.keep(int(m.group(2)))
        if keep is None:
            return tensor
        if name.endswith(_FFN_ROWS):
            return tensor[keep].contiguous()
        if name.endswith(_FFN_COLUMNS):
            return tensor[:, keep].contiguous()
        return tensor

    def sliced_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        m = _LAYER.match(name)
        if m is None:
            return tuple(shape)
        width = self.widths[int(m.group(2))]
        if name.endswith(_FFN_ROWS):
            return (width, *shape[1:])
        if name.endswith(_FFN_COLUMNS):
            return (shape[0], width)
        return tuple(shape)

    def text_config(self, text: dict) -> dict:
        """The compressed model's text config (a new dict; ``text`` is left as it was)."""
        out = dict(text)
        widths = [self.widths[i] for i in self.kept]
        out["num_hidden_layers"] = len(self.kept)
        out["intermediate_size"] = widths[0] if len(set(widths)) == 1 else widths
        if isinstance(text.get("layer_types"), list):
            out["layer_types"] = [text["layer_types"][i] for i in self.kept]
        # provenance in the original model's numbering, also when that model was compressed already
        before = sorted(text.get("skipped_layers") or [])
        original = [i for i in range(self.n_layers + len(before)) if i not in before]
        skipped = sorted(before + [original[i] for i in self.skipped])
        if skipped:
            out["skipped_layers"] = skipped
        else:
            out.pop("skipped_layers", None)
        if "max_window_layers" in out and isinstance(out["max_window_layers"], int):
            out["max_window_layers"] = sum(1 for i in self.kept if i < text["max_window_layers"])
        return out

    def gguf_name(self, name: str) -> str | None:
        """A GGUF tensor name of the original model (``blk.7.ffn_down.weight``) in the compressed one."""
        m = re.match(r"^blk\.(\d+)\.(.*)$", name)
        if m is None:
            return name
        new = self.new_index(int(m.group(1)))
        return None if new is None else f"blk.{new}.{m.group(2)}"

    def gguf_input_columns(self, name: str, values: torch.Tensor) -> torch.Tensor:
        """Per-input-column values (an importance matrix row) of an original GGUF weight, for the compressed one:
        ``ffn_down``'s columns are the FFN neurons."""
        m = re.match(r"^blk\.(\d+)\.ffn_down\.weight$", name)
        keep = self.keep(int(m.group(1))) if m else None
        return values if keep is None else values[keep]


def _int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"{what} must be a whole number, got {value!r}")
    return value


def deepstack_layers(vision: dict | None) -> int:
    """How many leading decoder layers take deepstack features (and so may not be skipped): 0 without a vision
    tower."""
    return len((vision or {}).get("deepstack_visual_indexes") or [])


def structure(plan: dict, text: dict, vision: dict | None = None, where: str = "plan") -> Structure:
    """The plan's structure, checked against the model's text config (layer count, FFN widths) and, for a model
    with a vision tower, the deepstack layers."""
    layers = plan["layers"]
    n_layers = _int(text["num_hidden_layers"], "num_hidden_layers")
    if len(layers) != n_layers:
        raise PlanError(f"{where}: the plan has {len(layers)} decoder layers, the model {n_layers}; plan this model")
    config_widths = text["intermediate_size"]
    full = {}
    for i, entry in enumerate(layers):
        width = config_widths if isinstance(config_widths, int) else config_widths[i]
        if entry["ffn_full"] != width:
            raise PlanError(
                f"{where}: layer {i} has {width} FFN neurons in this model, {entry['ffn_full']} in the plan; "
                "plan this model"
            )
        full[i] = width
    kept = [i for i, entry in enumerate(layers) if not entry["skip"]]
    deepstack = deepstack_layers(vision)
    shifted = [i for i, entry in enumerate(layers) if entry["skip"] and i < deepstack]
    if shifted:
        raise PlanError(
            f"{where}: skips decoder layer(s) {shifted}, but this model adds its vision tower's deepstack features "
            f"after each of its first {deepstack} layers; skipping one would move them. Plan again with those layers "
            "kept (skip only layers >= " + str(deepstack) + ")"
        )
    if not kept:
        raise PlanError(f"{where}: skips every decoder layer; keep at least one")
    if len(kept) < n_layers and len(kept) <= deepstack:
        # llama.cpp's qwen3vl graph picks the output rows in its last layer before adding that layer's deepstack
        # features, and aborts (GGML_ASSERT ggml_can_repeat) when the last layer is a deepstack layer and not every
        # position is an output (mtmd's prompts): a plan must not make such a model
        raise PlanError(
            f"{where}: keeps {len(kept)} decoder layer(s), but this model adds deepstack features after each of its "
            f"first {deepstack}; keep at least {deepstack + 1} (llama.cpp cannot run a model whose last layer takes "
            "deepstack features)"
        )
    orders = {}
    for i in kept:
        order = layers[i].get("ffn_order")
        orders[i] = None if order is None else torch.as_tensor(order, dtype=torch.long)
    return Structure(n_layers, kept, {i: layers[i]["ffn_width"] for i in kept}, full, orders)


def tensor_types(plan: dict, s: Structure) -> dict[str, str]:
    """The plan's ggml type per weight, under the compressed model's tensor names."""
    out = {}
    for name, t in plan["tensors"].items():
        new = s.renamed(name)
        if new is not None:
            out[new] = t["type"]
    return out


# --- a checkpoint seen through a plan -----------------------------------------------------------------------------------
@dataclass
class PlannedCheckpoint(Checkpoint):
    """``base`` as the compressed model: its tensors renamed and sliced on read, its text config compressed. The
    converter reads it like any checkpoint; ``compress.apply`` writes a folder from it."""

    base: Checkpoint | None = None
    plan: dict | None = None
    layout: Structure | None = None
    sources: dict[str, str] = field(default_factory=dict)  # new name -> base name
    _last: tuple[str, torch.Tensor] | None = None

    def load(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        source = self.sources[name]
        layer = _layer_of(source)
        if layer is None or not source.endswith((*_FFN_ROWS, _FFN_COLUMNS)) or self.layout.keep(layer) is None:
            return self.base.load(source, start, stop)
        if self._last is None or self._last[0] != name:  # row blocks of one tensor come in turn: slice it once
            self._last = (name, self.layout.sliced(source, self.base.load(source)))
        return self._last[1][start:stop]


def _layer_of(name: str) -> int | None:
    m = _LAYER.match(name)
    return int(m.group(2)) if m else None


def planned_checkpoint(ckpt: Checkpoint, plan: dict, where: str = "plan") -> PlannedCheckpoint:
    """``ckpt`` seen through ``plan`` (checked against it: layer count, widths, deepstack)."""
    s = structure(plan, ckpt.text, ckpt.vision, where)
    text = s.text_config(ckpt.text)
    config = dict(ckpt.config)
    if "text_config" in config:
        config["text_config"] = text
    else:
        config = text
    tensors, sources = {}, {}
    for name, src in ckpt.tensors.items():
        new = s.renamed(name)
        if new is None:
            continue
        tensors[new] = replace(src, name=new, shape=s.sliced_shape(name, src.shape))
        sources[new] = name
    return PlannedCheckpoint(
        ckpt.folder,
        config,
        ckpt.model_type,
        text,
        ckpt.vision,
        ckpt.audio,
        ckpt.tie_word_embeddings,
        tensors,
        base=ckpt,
        plan=plan,
        layout=s,
        sources=sources,
    )
