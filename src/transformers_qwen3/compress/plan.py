"""The planner (``transformers-qwen3 plan``): fit a calibrated model to a byte budget.

Choices: each weight tensor's ggml type (``quants.CANDIDATE_TYPES`` that fit its row width), each decoder layer's
FFN width (the calibrated candidate widths; neurons are in importance order, so a width keeps the most important
ones) and which layers to skip (at most ``--max-skip``).

Loss model (first version, stated in docs/compression.md): the predicted KL of a plan is the sum of the calibrated
KLs of its choices, each measured alone (tensor types, layer widths, skipped layers). A skipped layer's tensors add
neither bytes nor KL; a narrowed layer's FFN tensors keep their calibrated type KL and shrink in bytes.

Search: greedy on the exchange rate. From the widest plan, repeatedly take the one change (a cheaper type for one
tensor, a narrower width or a skip for one layer) that adds the least predicted KL per byte saved, until the plan
fits; then spend what is left of the budget on the changes back that remove the most KL per byte added.

The JSON plan has a versioned schema and the model's hash; ``load_plan`` refuses another model's plan, a newer
schema and a malformed file.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputError
from ..formats.compression import SCHEMA, VERSION, PlanError, deepstack_layers, read_plan
from ..formats.folder import open_checkpoint
from ..outputs import atomic_file
from . import calibrate as calib_mod
from .importance import importance_order
from .quants import CANDIDATE_TYPES, fits, tensor_bytes

# Which types each runtime can hold a weight in. Torch (issue 11, item 4b, measured in docs/compression.md "Torch
# quantizers measured"; compress/torch_types.py): F16 kept as nn.Linear (2 bytes in a bf16/f16 model), Q8_0 as
# bitsandbytes LLM.int8, 8 + 32/row-width bits per weight, at most the 8.5 counted here, so a torch plan's bytes are
# an upper bound. No 4-bit: HQQ is unavailable in transformers 5.24, bnb NF4 reloads with drifting logits, torchao
# int4 has no CPU path.
RUNTIME_TYPES = {"gguf": CANDIDATE_TYPES, "torch": ("F16", "Q8_0")}
KV_BYTES_PER_VALUE = 2  # f16 K and V caches, llama.cpp's and transformers' default


# --- budgets -----------------------------------------------------------------------------------------------------------
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(text: str) -> int:
    """'4.2GB' (decimal), '4GiB' (binary), '500MB', '123456' → bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise PlanError(f"--budget {text!r}: give bytes with a unit, e.g. 4.2GB, 3.5GiB, 800MB, or 'auto'")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def budget_bytes(text: str, runtime: str = "gguf") -> tuple[int, str]:
    """(bytes, where from) of a ``--budget``: 'auto' (``transformers-qwen3 hw``: free memory minus a reserve, for
    ``runtime``) or a size such as 4.2GB. ``plan``, ``run`` and ``serve`` read it here."""
    if text != "auto":
        return parse_bytes(text), "--budget"
    from .hardware import probe

    nbytes, why = probe().budget(runtime)
    if nbytes is None:
        raise PlanError(f"--budget auto: {why}")
    return nbytes, f"auto: {why}"


def fmt_bytes(n: float) -> str:
    return f"{n / 1e9:.3f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


# --- the model's shape, as the planner needs it --------------------------------------------------------------------------
@dataclass
class Shape:
    n_layers: int
    hidden: int
    head_dim: int
    n_kv_heads: int
    fixed_bytes: int  # the norms (F32 in GGUF), never planned

    @classmethod
    def from_text_config(cls, text: dict) -> Shape:
        n_layers, hidden = text["num_hidden_layers"], text["hidden_size"]
        head_dim = text.get("head_dim") or hidden // text["num_attention_heads"]
        norms = n_layers * (2 * hidden + 2 * head_dim) + hidden
        return cls(n_layers, hidden, head_dim, text.get("num_key_value_heads", text["num_attention_heads"]), 4 * norms)

    def kv_bytes(self, context: int, layers_kept: int) -> int:
        return kv_cache_bytes([self.n_kv_heads] * layers_kept, self.head_dim, context)


def kv_cache_bytes(kv_heads_per_layer: list[int], head_dim: int, context: int) -> int:
    """Bytes of an f16 K and V cache for ``context`` tokens (what the planner and ``run --budget`` count)."""
    return 2 * sum(kv_heads_per_layer) * head_dim * context * KV_BYTES_PER_VALUE


_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


def _layer_of(name: str) -> int | None:
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def _is_ffn(name: str) -> bool:
    return ".mlp." in name


# --- the search ------------------------------------------------------------------------------------------------------------
class _State:
    """One candidate plan: a type per tensor, an FFN width and a skip flag per layer. Its bytes and KL are sums over
    groups (each decoder layer, and ``None`` for the tensors outside the layers); every single change touches one
    group, so the search prices a change by recomputing that group alone (an 8B's 254 weights: O(one layer) per
    candidate instead of O(every tensor))."""

    def __init__(
        self, calib: calib_mod.Calibration, shape: Shape, types: tuple[str, ...], context: int, keep_first: int = 0
    ):
        self.calib, self.shape, self.context = calib, shape, context
        self.options = {
            n: [t for t in types if fits(t, tuple(s)) and t in calib.tensor_kl.get(n, {})]
            for n, s in calib.shapes.items()
        }
        for n, opts in self.options.items():
            if not opts:
                raise PlanError(f"tensor {n} {calib.shapes[n]}: none of {', '.join(types)} fits its row width")
        self.type = {n: opts[0] for n, opts in self.options.items()}  # widest first
        self.members: dict[int | None, list[str]] = {}
        for n in self.type:
            self.members.setdefault(_layer_of(n), []).append(n)
        self.full = [max([*calib.width_kl[i], _ffn_full(calib, i)]) for i in range(shape.n_layers)]
        self.width = list(self.full)
        self.skip = [False] * shape.n_layers
        self.max_skip = 0
        # the first `keep_first` layers are never skipped, and one more is kept after them (deepstack:
        # formats.compression.deepstack_layers and structure())
        self.skippable = range(keep_first, shape.n_layers)
        self.most_skips = most_skips(shape.n_layers, keep_first)

    def tensor_bytes(self, name: str, type_name: str | None = None, width: int | None = None) -> int:
        layer = _layer_of(name)
        shape = list(self.calib.shapes[name])
        if layer is not None and _is_ffn(name):
            w = self.width[layer] if width is None else width
            if name.endswith("down_proj.weight"):
                shape[1] = w
            else:
                shape[0] = w
        return tensor_bytes(type_name or self.type[name], tuple(shape))

    def group(self, g: int | None) -> tuple[int, float]:
        """(bytes, predicted KL) of one group: a skipped layer costs no bytes and its calibrated skip KL; a kept one
        its tensors' bytes at their types and widths, their type KLs and its width's KL."""
        if g is not None and self.skip[g]:
            return 0, self.calib.layer_kl[g]
        names = self.members[g]
        kl = sum(self.calib.tensor_kl[n].get(self.type[n], 0.0) for n in names)
        if g is not None and self.width[g] != self.full[g]:
            kl += self.calib.width_kl[g][self.width[g]]
        return sum(self.tensor_bytes(n) for n in names), kl

    def kv_bytes(self) -> int:
        return self.shape.kv_bytes(self.context, self.skip.count(False))

    def bytes(self) -> int:
        return self.shape.fixed_bytes + sum(self.group(g)[0] for g in self.members) + self.kv_bytes()

    def kl(self) -> float:
        return sum(self.group(g)[1] for g in self.members)

    def moves(self, shrink: bool):
        """(group, apply, undo) of single changes; shrink=True lists the ones that save bytes."""
        for n, opts in self.options.items():
            layer = _layer_of(n)
            if layer is not None and self.skip[layer]:
                continue
            here = opts.index(self.type[n])
            for t in opts[here + 1 :] if shrink else opts[:here]:
                yield (layer, *_set(self.type, n, t))
        for i in range(self.shape.n_layers):
            if self.skip[i]:
                if not shrink:
                    yield (i, *_set(self.skip, i, False))
                continue
            widths = sorted(self.calib.width_kl[i]) + [self.full[i]]
            for w in widths:
                if (w < self.width[i]) == shrink and w != self.width[i]:
                    yield (i, *_set(self.width, i, w))
            if shrink and i in self.skippable and self.skip.count(True) < min(self.max_skip, self.most_skips):
                yield (i, *_set(self.skip, i, True))


def most_skips(n_layers: int, keep_first: int) -> int:
    """Layers a plan may skip at most: those after the first ``keep_first``, keeping one of them."""
    return max(0, n_layers - keep_first - 1)


def _ffn_full(calib, layer: int) -> int:
    for n, s in calib.shapes.items():
        if _layer_of(n) == layer and n.endswith("mlp.down_proj.weight"):
            return s[1]
    raise PlanError(f"calibration has no FFN for layer {layer}")


def _set(container, key, value):
    old = container[key]

    def apply():
        container[key] = value

    def undo():
        container[key] = old

    return apply, undo


def _best(state: _State, shrink: bool, budget: int):
    """The best single change: least KL added per byte saved (shrink), or most KL removed per byte added that
    still fits the budget (grow)."""
    groups = {g: state.group(g) for g in state.members}
    kv = state.kv_bytes()
    base_b = state.shape.fixed_bytes + sum(b for b, _ in groups.values()) + kv
    best, best_score = None, None
    for g, apply, undo in state.moves(shrink):
        apply()
        (gb, gkl), new_kv = state.group(g), state.kv_bytes()
        undo()
        db = groups[g][0] - gb + kv - new_kv  # bytes saved
        dkl = gkl - groups[g][1]  # KL added
        if shrink:
            if db <= 0:
                continue
            score = max(dkl, 0.0) / db
        else:
            if base_b - db > budget or dkl >= 0:
                continue
            score = dkl / -db if db < 0 else dkl * 1e30
        if best_score is None or score < best_score:
            best, best_score = apply, score
    return best


def minimum_bytes(calib, shape: Shape, runtime: str, context: int, max_skip: int, keep_first: int = 0) -> int:
    state = _State(calib, shape, RUNTIME_TYPES[runtime], context, keep_first)
    for n, opts in state.options.items():
        state.type[n] = opts[-1]
    state.width = [min([*calib.width_kl[i], state.full[i]]) for i in range(shape.n_layers)]
    per_layer = {i: state.group(i)[0] for i in state.skippable}
    for i in sorted(state.skippable, key=lambda i: -per_layer[i])[: min(max_skip, state.most_skips)]:
        state.skip[i] = True
    return state.bytes()


def make_plan(
    calib: calib_mod.Calibration,
    text_config: dict,
    budget: int,
    runtime: str = "gguf",
    context: int = 0,
    max_skip: int | None = None,
    vision_config: dict | None = None,
) -> dict:
    shape = Shape.from_text_config(text_config)
    max_skip = shape.n_layers // 4 if max_skip is None else max_skip
    keep_first = deepstack_layers(vision_config)
    floor = minimum_bytes(calib, shape, runtime, context, max_skip, keep_first)
    if budget < floor:
        skips = min(max_skip, most_skips(shape.n_layers, keep_first))
        raise PlanError(
            f"budget {fmt_bytes(budget)} is below the smallest model this plan can make, {fmt_bytes(floor)} "
            f"({floor} bytes: every tensor at its narrowest type, every FFN at its narrowest width, {skips} "
            f"layer(s) skipped{f', KV cache for {context} tokens' if context else ''})"
        )
    state = _State(calib, shape, RUNTIME_TYPES[runtime], context, keep_first)
    state.max_skip = max_skip
    while state.bytes() > budget:
        move = _best(state, shrink=True, budget=budget)
        if move is None:  # cannot happen above the floor; kept as a guard
            raise PlanError(f"no change brings the plan under {fmt_bytes(budget)}")
        move()
    while (move := _best(state, shrink=False, budget=budget)) is not None:
        move()
    return _plan_json(state, calib, budget, runtime)


def _plan_json(state: _State, calib, budget: int, runtime: str) -> dict:
    shape, context = state.shape, state.context
    kept = [i for i in range(shape.n_layers) if not state.skip[i]]
    tensors = {
        n: {"type": t, "bytes": state.tensor_bytes(n), "kl": calib.tensor_kl[n].get(t, 0.0)}
        for n, t in state.type.items()
        if _layer_of(n) is None or not state.skip[_layer_of(n)]
    }
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "model_sha256": calib.model_sha256,
        "runtime": runtime,
        "budget_bytes": budget,
        "context": context,
        "kv_cache_bytes": shape.kv_bytes(context, len(kept)),
        "bytes": state.bytes(),
        "weight_bytes": state.bytes() - shape.kv_bytes(context, len(kept)),
        "predicted_kl": state.kl(),
        "layers": [
            {
                "index": i,
                "skip": state.skip[i],
                "new_index": kept.index(i) if i in kept else None,
                "ffn_width": state.width[i],
                "ffn_full": state.full[i],
                # the neurons most important first: a width keeps the first ffn_width (formats/compression.py)
                "ffn_order": importance_order(calib.neuron_scores[i]).tolist(),
                "kl": calib.layer_kl[i] if state.skip[i] else calib.width_kl[i].get(state.width[i], 0.0),
            }
            for i in range(shape.n_layers)
        ],
        "tensors": tensors,
    }


def table(plan: dict) -> str:
    """The plan as a readable table: tensor group → types, widths, bytes, predicted KL."""
    groups: dict[str, dict] = {}
    for name, t in plan["tensors"].items():
        key = re.sub(r"\.layers\.\d+\.", ".layers.*.", name)
        g = groups.setdefault(key, {"types": {}, "bytes": 0, "kl": 0.0})
        g["types"][t["type"]] = g["types"].get(t["type"], 0) + 1
        g["bytes"] += t["bytes"]
        g["kl"] += t["kl"]
    rows = [f"{'tensor group':<44} {'types':<28} {'bytes':>12} {'pred. KL':>10}"]
    for key, g in groups.items():
        types = ", ".join(f"{t}×{c}" for t, c in g["types"].items())
        rows.append(f"{key:<44} {types:<28} {fmt_bytes(g['bytes']):>12} {g['kl']:>10.2e}")
    layers = plan["layers"]
    widths = " ".join("skip" if entry["skip"] else str(entry["ffn_width"]) for entry in layers)
    rows.append(f"FFN widths per layer (of {layers[0]['ffn_full']}): {widths}")
    structural = sum(entry["kl"] for entry in layers)
    rows.append(f"width/depth predicted KL: {structural:.2e}")
    rows.append(
        f"total {fmt_bytes(plan['bytes'])} (weights {fmt_bytes(plan['weight_bytes'])}, KV cache "
        f"{fmt_bytes(plan['kv_cache_bytes'])}) of budget {fmt_bytes(plan['budget_bytes'])}; "
        f"predicted KL {plan['predicted_kl']:.3e} nats/token"
    )
    return "\n".join(rows)


# --- the file -------------------------------------------------------------------------------------------------------------
def load_plan(path: str | Path, model_sha256: str | None = None) -> dict:
    """Read a plan file (``formats.compression.read_plan``: the one reader both runtimes use)."""
    return read_plan(path, model_sha256)


# --- the verb ---------------------------------------------------------------------------------------------------------------
def add_arguments(parser):
    parser.add_argument("model", help="the model folder that was calibrated")
    parser.add_argument("--calib", required=True, help="the calibration file (transformers-qwen3 calibrate)")
    parser.add_argument(
        "--budget", required=True, help="bytes (4.2GB, 3.5GiB, 800MB) or 'auto' (transformers-qwen3 hw)"
    )
    parser.add_argument("--context", type=int, default=0, help="tokens of KV cache to fit in the budget (default 0)")
    parser.add_argument("--runtime", choices=sorted(RUNTIME_TYPES), default="gguf")
    parser.add_argument("--max-skip", type=int, default=None, help="most decoder layers to skip (default: a quarter)")
    parser.add_argument("-o", "--output", required=True, help="the plan JSON to write")
    parser.add_argument("--force", action="store_true", help="replace an existing plan file")


def run(args) -> int:
    out = Path(args.output)
    if out.exists() and not args.force:
        raise OutputError(f"{out} already exists; choose another name or pass --force to replace it.")
    if args.context < 0:
        raise PlanError(f"--context {args.context}: give a number of tokens >= 0")
    checkpoint = open_checkpoint(args.model)
    calib = calib_mod.load(args.calib, calib_mod.model_sha256(args.model))
    budget, why = budget_bytes(args.budget, args.runtime)
    if args.budget == "auto":
        print(f"budget {fmt_bytes(budget)} ({why})", file=sys.stderr)
    plan = make_plan(calib, checkpoint.text, budget, args.runtime, args.context, args.max_skip, checkpoint.vision)
    print(table(plan))
    with atomic_file(out) as tmp:
        Path(tmp).write_text(json.dumps(plan, indent=1) + "\n")
    print(f"wrote {out}")
    return 0
