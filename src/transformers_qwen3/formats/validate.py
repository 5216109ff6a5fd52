"""What a checkpoint must hold, and what llama.cpp can run.

`check_config` is config.json's schema: the types and ranges of every value that decides a tensor's shape, and the
relations the modules rely on (heads dividing widths, towers projecting to the decoder's width), checked before
transformers ever builds a config from it, so a bad value is one message naming the key instead of a KeyError or
ZeroDivisionError deep inside a model. Keys it does not list are ignored, never fatal (mlx-lm's rule).

Expected tensor names and shapes come from transformers' own modules built on the meta device from the checkpoint's
config (Qwen3ForCausalLM, Qwen3VLVisionModel, Qwen3OmniMoeAudioEncoder): no hand-kept list of parameter names, and
a tensor whose shape disagrees with the config is caught before anything is written. The capability checks below
list each config value the vendored llama.cpp hard-codes or does not implement.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import CheckpointFolderError
from .keys import AUDIO_PREFIX, VISION_PREFIX

if TYPE_CHECKING:  # checkpoint.py imports this module to check what it reads
    from .folder import Checkpoint

ROPE_TYPES = ("default", "linear", "yarn")

# --- config.json schema ----------------------------------------------------------------------------------------------
# Upper bounds are plausibility limits, not model limits: the deepest released transformers have ~130 layers and
# building a module stack of this depth on the meta device already takes seconds, so a larger count is a corrupt value.
MAX_LAYERS = 1024
MAX_SIZE = 2**31 - 1  # torch and ggml index rows with 32-bit integers in places; no real width comes close


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _size(value: Any) -> str | None:
    if not _is_int(value):
        return "must be a whole number"
    return None if 1 <= value <= MAX_SIZE else f"must be a positive size (1 to {MAX_SIZE})"


def _widths(value: Any) -> str | None:
    """An FFN width, or one per decoder layer (a compressed model, docs/compression.md)."""
    if isinstance(value, list):
        return None if value and all(_size(v) is None for v in value) else "must be a size or a list of sizes"
    return _size(value)


def _layers(value: Any) -> str | None:
    if not _is_int(value):
        return "must be a whole number"
    return None if 1 <= value <= MAX_LAYERS else f"must be between 1 and {MAX_LAYERS}"


def _token_id(value: Any) -> str | None:
    return None if _is_int(value) and 0 <= value <= MAX_SIZE else "must be a token id (a whole number >= 0)"


def _token_ids(value: Any) -> str | None:
    ok = _is_int(value) or isinstance(value, list) and all(_is_int(v) for v in value)
    return None if ok else "must be a token id or a list of them"


def _positive(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return None if ok else "must be a positive number"


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _object(value: Any) -> str | None:
    return None if isinstance(value, dict) else "must be an object"


def _strings(value: Any) -> str | None:
    return None if isinstance(value, list) and all(isinstance(v, str) for v in value) else "must be a list of strings"


def _indexes(value: Any) -> str | None:
    ok = isinstance(value, list) and all(_is_int(v) and 0 <= v <= MAX_SIZE for v in value)
    return None if ok else "must be a list of whole numbers >= 0"


Check = Callable[[Any], "str | None"]
# key: (check, required). `null` counts as absent for optional keys (released configs write "rope_scaling": null).
TEXT_SCHEMA: dict[str, tuple[Check, bool]] = {
    "vocab_size": (_size, True),
    "hidden_size": (_size, True),
    "intermediate_size": (_widths, True),
    "skipped_layers": (_indexes, False),
    "num_hidden_layers": (_layers, True),
    "num_attention_heads": (_size, True),
    "num_key_value_heads": (_size, False),  # default: num_attention_heads
    "head_dim": (_size, False),  # default: hidden_size / num_attention_heads
    "max_position_embeddings": (_size, False),
    "rms_norm_eps": (_positive, False),
    "rope_theta": (_positive, False),
    "rope_parameters": (_object, False),
    "rope_scaling": (_object, False),
    "tie_word_embeddings": (_bool, False),
    "attention_bias": (_bool, False),
    "use_sliding_window": (_bool, False),
    "hidden_act": (_string, False),
    "layer_types": (_strings, False),
    "pad_token_id": (_token_ids, False),  # an int (checked against vocab_size below)
    "bos_token_id": (_token_ids, False),
    "eos_token_id": (_token_ids, False),
}
ROPE_SCHEMA: dict[str, tuple[Check, bool]] = {
    "rope_type": (_string, False),
    "type": (_string, False),
    "rope_theta": (_positive, False),
    "factor": (_positive, False),
    "mrope_section": (_indexes, False),
    "mrope_interleaved": (_bool, False),
}
# Tower shapes are required: a missing one would silently take the default of some other model size.
VISION_SCHEMA: dict[str, tuple[Check, bool]] = {
    "depth": (_layers, True),
    "hidden_size": (_size, True),
    "intermediate_size": (_size, True),
    "num_heads": (_size, True),
    "out_hidden_size": (_size, True),
    "patch_size": (_size, True),
    "spatial_merge_size": (_size, True),
    "temporal_patch_size": (_size, True),
    "num_position_embeddings": (_size, True),
    "in_channels": (_size, False),
    "deepstack_visual_indexes": (_indexes, False),
    "hidden_act": (_string, False),
}
AUDIO_SCHEMA: dict[str, tuple[Check, bool]] = {
    "d_model": (_size, True),
    "encoder_layers": (_layers, True),
    "encoder_attention_heads": (_size, True),
    "encoder_ffn_dim": (_size, True),
    "num_mel_bins": (_size, True),
    "output_dim": (_size, True),
    "downsample_hidden_size": (_size, True),
    "max_source_positions": (_size, False),
    "n_window": (_size, False),
    "n_window_infer": (_size, False),
    "conv_chunksize": (_size, False),
    "activation_function": (_string, False),
    "scale_embedding": (_bool, False),
}
TOP_SCHEMA: dict[str, tuple[Check, bool]] = {
    "tie_word_embeddings": (_bool, False),
    **{
        key: (_token_id, False)
        for key in (
            "image_token_id",
            "video_token_id",
            "audio_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
            "audio_start_token_id",
            "audio_end_token_id",
        )
    },
}


def _check_section(section: dict[str, Any], schema: dict[str, tuple[Check, bool]], where: str) -> list[str]:
    problems = []
    for key, (check, required) in schema.items():
        value = section.get(key)
        if value is None:
            if required:
                problems.append(f"{where}{key} is missing")
            continue
        if (why := check(value)) is not None:
            problems.append(f"{where}{key} {why} (got {value!r:.40})")
    return problems


def check_config(
    path: Path,
    config: dict[str, Any],
    text: dict[str, Any],
    vision: dict[str, Any] | None,
    audio: dict[str, Any] | None,
) -> None:
    """config.json against the schema above: one error listing every problem, naming each key."""
    nested = text is not config
    t = "text_config." if nested else ""
    problems = _check_section(config, TOP_SCHEMA, "") if nested else []
    problems += _check_section(text, TEXT_SCHEMA, t)
    for key in ("rope_parameters", "rope_scaling"):
        if isinstance(text.get(key), dict):
            problems += _check_section(text[key], ROPE_SCHEMA, f"{t}{key}.")
    if vision is not None:
        problems += _check_section(vision, VISION_SCHEMA, "vision_config.")
    if audio is not None:
        problems += _check_section(audio, AUDIO_SCHEMA, "audio_config.")
    if not problems:  # the relations, once every value has its type
        problems = _relations(config, text, vision, audio, t)
    if problems:
        raise CheckpointFolderError(
            f"{path}: {'; '.join(problems)}; fix config.json (or restore the checkpoint's own)"
        )


def _relations(config, text, vision, audio, t: str) -> list[str]:
    """Every relation between config values that the modules rely on and that does not hold, as messages."""
    hidden = text["hidden_size"]
    checks = _text_relations(config, text, t)
    if vision is not None:
        checks += _vision_relations(vision, hidden, t)
    if audio is not None:
        checks += _audio_relations(audio, hidden, t)
    return [what for ok, what in checks if not ok]


def _text_relations(config, text, t: str) -> list[tuple[bool, str]]:
    hidden, heads = text["hidden_size"], text["num_attention_heads"]
    kv = text.get("num_key_value_heads") or heads
    checks = [
        (
            heads % kv == 0,
            f"{t}num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv}): each key/value "
            "head serves a whole group of query heads",
        )
    ]
    head_dim = text.get("head_dim")
    if head_dim is None:
        checks.append(
            (
                hidden % heads == 0,
                f"{t}hidden_size ({hidden}) must be a multiple of num_attention_heads ({heads}) when head_dim is "
                "not given",
            )
        )
        head_dim = hidden // heads
    widths = text["intermediate_size"]
    if isinstance(widths, list):
        n_layers = text["num_hidden_layers"]
        checks.append(
            (len(widths) == n_layers, f"{t}intermediate_size lists {len(widths)} widths for {n_layers} layers")
        )
    layer_types = text.get("layer_types")
    if layer_types is not None:
        n_layers = text["num_hidden_layers"]
        checks.append(
            (len(layer_types) == n_layers, f"{t}layer_types has {len(layer_types)} entries for {n_layers} layers")
        )
    vocab = text["vocab_size"]
    pad = text.get("pad_token_id")
    if pad is not None:  # the embedding's padding_idx: transformers asserts on any other value
        checks.append(
            (
                _is_int(pad) and -vocab <= pad < vocab,
                f"{t}pad_token_id {pad} is outside the vocabulary (vocab_size {vocab})",
            )
        )
    for key in TOP_SCHEMA:
        if key.endswith("_token_id") and config.get(key) is not None:
            checks.append((config[key] < vocab, f"{key} {config[key]} is outside the vocabulary (vocab_size {vocab})"))
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    section = rope.get("mrope_section")
    if section:
        checks.append(
            (
                sum(section) == head_dim // 2,
                f"{t}rope_parameters.mrope_section {section} must sum to head_dim/2 = {head_dim // 2} (M-RoPE "
                "splits each head's rotary frequencies between time, height and width)",
            )
        )
    return checks


def _vision_relations(vision, hidden: int, t: str) -> list[tuple[bool, str]]:
    depth = vision["depth"]
    deepstack = vision.get("deepstack_visual_indexes") or []
    return [
        (
            vision["hidden_size"] % vision["num_heads"] == 0,
            f"vision_config.hidden_size ({vision['hidden_size']}) must be a multiple of num_heads "
            f"({vision['num_heads']})",
        ),
        (
            vision["out_hidden_size"] == hidden,
            f"vision_config.out_hidden_size ({vision['out_hidden_size']}) must equal {t}hidden_size ({hidden}): "
            "image features enter the decoder's embedding stream",
        ),
        (
            all(i < depth for i in deepstack),
            f"vision_config.deepstack_visual_indexes {deepstack} must be layers of the tower (0 to {depth - 1})",
        ),
    ]


def _audio_relations(audio, hidden: int, t: str) -> list[tuple[bool, str]]:
    return [
        (
            audio["d_model"] % audio["encoder_attention_heads"] == 0,
            f"audio_config.d_model ({audio['d_model']}) must be a multiple of encoder_attention_heads "
            f"({audio['encoder_attention_heads']})",
        ),
        (
            audio["output_dim"] == hidden,
            f"audio_config.output_dim ({audio['output_dim']}) must equal {t}hidden_size ({hidden}): audio "
            "features enter the decoder's embedding stream",
        ),
    ]


# --- tensors the config implies --------------------------------------------------------------------------------------
def _meta_state_shapes(module_factory) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        module = module_factory()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def text_rope_parameters(text: dict[str, Any]) -> dict[str, Any]:
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    if "rope_theta" not in rope and "rope_theta" in text:
        rope["rope_theta"] = text["rope_theta"]
    rope.setdefault("rope_type", rope.get("type", "default"))
    return rope


def _built(what: str, ckpt: Checkpoint, build: Callable[[], dict[str, tuple[int, ...]]]) -> dict:
    # The schema has passed; what transformers' config classes still refuse (their strict dataclass fields check the
    # type of every key the schema leaves alone) is reported the same way.
    from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError

    try:
        return build()
    except (
        TypeError,
        ValueError,
        KeyError,
        StrictDataclassFieldValidationError,
        StrictDataclassClassValidationError,
    ) as e:
        raise CheckpointFolderError(
            f"{ckpt.folder / 'config.json'}: {what} cannot be built from it ({type(e).__name__}: {e}); fix config.json"
        ) from e


def qwen3_text_shapes(c) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of transformers' ``Qwen3ForCausalLM(c)`` (``lm_head.weight`` included, as its state dict
    has it even when tied), written out from its module definitions. Building the module on the meta device would
    import transformers' modeling code, 3.3 s of every verb's start (docs/benchmarks.md); the tests compare this
    table with that module for every preset and for random configs."""
    hidden, inter, vocab = c.hidden_size, c.intermediate_size, c.vocab_size
    head_dim = getattr(c, "head_dim", hidden // c.num_attention_heads)  # Qwen3Attention's own rule
    if not isinstance(head_dim, int):
        raise TypeError(f"head_dim must be an int, got {head_dim!r}")
    q, kv = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    layer = {
        "self_attn.q_proj.weight": (q, hidden),
        "self_attn.k_proj.weight": (kv, hidden),
        "self_attn.v_proj.weight": (kv, hidden),
        "self_attn.o_proj.weight": (hidden, q),
        "self_attn.q_norm.weight": (head_dim,),
        "self_attn.k_norm.weight": (head_dim,),
        "mlp.gate_proj.weight": (inter, hidden),
        "mlp.up_proj.weight": (inter, hidden),
        "mlp.down_proj.weight": (hidden, inter),
        "input_layernorm.weight": (hidden,),
        "post_attention_layernorm.weight": (hidden,),
    }
    if c.attention_bias:
        layer |= {f"self_attn.{n}_proj.bias": (w,) for n, w in (("q", q), ("k", kv), ("v", kv), ("o", hidden))}
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(c.num_hidden_layers):
        shapes |= {f"model.layers.{i}.{name}": shape for name, shape in layer.items()}
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def expected_tensors(ckpt: Checkpoint) -> dict[str, tuple[int, ...]]:
    """Every tensor the checkpoint must have on disk (name → torch shape)."""
    # the configuration module only (0.85 s): its strict fields and defaults are transformers' own
    from transformers.models.qwen3.configuration_qwen3 import Qwen3Config

    text = {k: v for k, v in ckpt.text.items() if k not in ("model_type", "architectures", "auto_map")}
    rope = {
        k: v for k, v in text_rope_parameters(ckpt.text).items() if k not in ("mrope_section", "mrope_interleaved")
    }
    text["rope_parameters"] = rope
    text.pop("rope_scaling", None)
    text["tie_word_embeddings"] = ckpt.tie_word_embeddings
    widths = text.get("intermediate_size")
    if isinstance(widths, list):  # per-layer FFN widths (a compressed model): Qwen3's shapes, each MLP at its width
        text["intermediate_size"] = widths[0]
    text.pop("skipped_layers", None)
    shapes = _built("a Qwen3 decoder", ckpt, lambda: qwen3_text_shapes(Qwen3Config(**text)))
    if isinstance(widths, list):
        for i, width in enumerate(widths):
            p = f"model.layers.{i}.mlp."
            shapes[p + "gate_proj.weight"] = shapes[p + "up_proj.weight"] = (width, text["hidden_size"])
            shapes[p + "down_proj.weight"] = (text["hidden_size"], width)
    if ckpt.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)

    if ckpt.vision is not None:
        from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

        vision = {k: v for k, v in ckpt.vision.items() if k != "model_type"}
        tower = _built(
            "the vision tower",
            ckpt,
            lambda: _meta_state_shapes(lambda: Qwen3VLVisionModel(Qwen3VLVisionConfig(**vision))),
        )
        shapes.update({VISION_PREFIX + k: v for k, v in tower.items()})
    if ckpt.audio is not None:
        from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

        audio = {k: v for k, v in ckpt.audio.items() if k != "model_type"}
        tower = _built(
            "the audio tower",
            ckpt,
            lambda: _meta_state_shapes(lambda: Qwen3OmniMoeAudioEncoder(Qwen3OmniMoeAudioEncoderConfig(**audio))),
        )
        shapes.update({AUDIO_PREFIX + k: v for k, v in tower.items()})
    return shapes


def check_tensors(ckpt: Checkpoint) -> None:
    """Missing / unexpected tensors and shapes that disagree with the config: one error listing all of them."""
    expected = expected_tensors(ckpt)
    present = {name: t.shape for name, t in ckpt.tensors.items()}
    if ckpt.tie_word_embeddings:
        present.pop("lm_head.weight", None)  # tied: transformers ignores a stored copy, so do we
    missing = sorted(set(expected) - set(present))
    unexpected = sorted(set(present) - set(expected))
    wrong = sorted(n for n in set(expected) & set(present) if tuple(expected[n]) != tuple(present[n]))
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {_short(missing)}")
    if unexpected:
        problems.append(
            f"tensors the config does not account for ({len(unexpected)}): {_short(unexpected)} "
            "(a tower without its *_config, or a different architecture)"
        )
    if wrong:
        details = [
            f"{n} in {ckpt.tensors[n].file.name} is {list(present[n])}, config implies {list(expected[n])}"
            for n in wrong
        ]
        problems.append(f"shapes inconsistent with config.json ({len(wrong)}): {_short(details)}")
    if problems:
        raise CheckpointFolderError(
            f"{ckpt.folder}: the weights do not match config.json: "
            + "; ".join(problems)
            + "; use the config.json the weights were saved with (or the weights of this config)"
        )


def _short(items: list[str], n: int = 6) -> str:
    head = ", ".join(items[:n])
    return head + (f", … ({len(items) - n} more)" if len(items) > n else "")
