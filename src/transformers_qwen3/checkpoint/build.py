"""Creating and importing checkpoints in our Hub layout, streamed tensor by tensor.

- :func:`init_checkpoint` writes a randomly initialised model shard by shard: the model is built on the meta
  device and each module is materialised, initialised with the model's own ``_init_weights``, written and dropped
  again, so an 8B preset never exists whole in memory (it is 33 GB in fp32; the machine has 24 GB).
- :func:`import_checkpoint` takes a native Qwen3 folder. Our text keys *are* Qwen3ForCausalLM's, so after every
  shard's header has been checked against the expected names and shapes the shards are copied byte for byte:
  no tensor is ever loaded.
"""

import json
import re
import shutil
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import FolderError
from ..formats.keys import AUDIO_PREFIX, OMNI_AUDIO_PREFIX, QWEN3_VL_RENAMES, key_mapping
from ..outputs import atomic_folder, check_destination
from ..remote.configuration_qwen3_multimodal import Qwen3MultimodalConfig
from ..remote.modeling_qwen3_multimodal import Qwen3MultimodalForConditionalGeneration
from ..remote.tokens_qwen3_multimodal import ENDOFTEXT_ID, IM_END_ID
from .hub_folder import copy_code_files, save_preprocessing, set_auto_map
from .presets import preset_config

SHARD_BYTES = 2 * 1024**3
INDEX_NAME = "model.safetensors.index.json"
# Keys of the native config.json that describe the file, not the decoder.
NON_MODEL_KEYS = {"architectures", "model_type", "auto_map", "transformers_version", "_name_or_path"}


class CheckpointError(FolderError):
    """A source checkpoint that cannot be used; the message names the file or tensor and what was expected."""


def _meta_model(config):
    with torch.device("meta"):
        return Qwen3MultimodalForConditionalGeneration(config)


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every tensor a checkpoint of ``config`` stores (tied lm_head excluded)."""
    model = _meta_model(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def _write_common(folder: Path, config, tokenizer) -> None:
    set_auto_map(config)
    config.save_pretrained(folder)
    from transformers import GenerationConfig

    GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=[IM_END_ID, ENDOFTEXT_ID],  # <|im_end|>, <|endoftext|> as Qwen3's generation_config.json
        pad_token_id=ENDOFTEXT_ID,
    ).save_pretrained(folder)
    save_preprocessing(config, tokenizer, folder)
    copy_code_files(folder)


def _owner_init(model):
    """Map each module to the ``_init_weights`` of its nearest PreTrainedModel (towers initialise themselves)."""
    from transformers import PreTrainedModel

    owners = {}

    def walk(module, owner):
        if isinstance(module, PreTrainedModel):
            owner = module
        owners[module] = owner
        for child in module.children():
            walk(child, owner)

    walk(model, model)
    return owners


def write_shards(folder: Path, tensors, layout: dict, shard_bytes: int = SHARD_BYTES) -> None:
    """Write ``(name, tensor)`` pairs as safetensors files the way ``save_pretrained`` names them:
    ``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` shards of at most ``shard_bytes`` plus
    ``model.safetensors.index.json``.

    huggingface_hub's ``split_torch_state_dict_into_shards`` (transformers' own splitter) plans the shards from
    ``layout`` (name → tensor, meta tensors are enough: only sizes are read). Unlike ``save_pretrained`` the pairs
    are consumed lazily and each shard is written as soon as its last tensor arrives, so an 8B ``init`` holds
    about one shard at a time. The index carries ``total_size`` only (transformers adds ``total_parameters``,
    which no loader reads)."""
    split = split_torch_state_dict_into_shards(
        layout, filename_pattern="model{suffix}.safetensors", max_shard_size=shard_bytes
    )
    missing = {file: set(keys) for file, keys in split.filename_to_tensors.items()}
    held: dict[str, dict[str, torch.Tensor]] = {file: {} for file in missing}
    for name, tensor in tensors:
        file = split.tensor_to_filename[name]
        held[file][name] = tensor.detach().contiguous()
        missing[file].discard(name)
        if not missing[file]:
            save_file(held.pop(file), folder / file, metadata={"format": "pt"})
    if held:  # the layout promised tensors the stream never produced: a bug, not bad input
        raise RuntimeError(f"write_shards: no tensors for {sorted(set().union(*missing.values()))[:5]}")
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": dict(sorted(split.tensor_to_filename.items()))}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def _initialised_tensors(model, owners, dtype, skip):
    """Materialise one module at a time, initialise it with its owner's ``_init_weights``, yield its tensors,
    then send it back to the meta device."""
    for module_name, module in model.named_modules():
        persistent = [k for k in module._buffers if k not in module._non_persistent_buffers_set]
        if not any(v is not None for v in module._parameters.values()) and not persistent:
            continue
        module.to_empty(device="cpu", recurse=False)
        module.to(dtype)
        with torch.no_grad():
            owners[module]._init_weights(module)
        for key, tensor in list(module._parameters.items()) + [(k, module._buffers[k]) for k in persistent]:
            full = f"{module_name}.{key}" if module_name else key
            if tensor is not None and full not in skip:
                yield full, tensor
        module.to("meta")  # free it: the next shard must not hold this one


def init_checkpoint(
    dst,
    preset: str,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    tokenizer=None,
    force: bool = False,
    shard_bytes: int = SHARD_BYTES,
) -> Path:
    """Write a randomly initialised checkpoint of ``preset`` to ``dst`` (bf16 by default except ``tiny``)."""
    check_destination(dst, force=force)  # before building anything
    config = Qwen3MultimodalConfig(**preset_config(preset))
    dtype = dtype or (torch.float32 if preset.startswith("tiny") else torch.bfloat16)
    config.dtype = dtype
    torch.manual_seed(seed)
    model = _meta_model(config)
    owners = _owner_init(model)
    skip = {"lm_head.weight"} if config.tie_word_embeddings else set()

    layout = {k: v.to(dtype) for k, v in model.state_dict().items() if k not in skip}  # meta: sizes only
    with atomic_folder(dst, force=force) as tmp:
        write_shards(tmp, _initialised_tensors(model, owners, dtype, skip), layout, shard_bytes)
        _write_common(tmp, config, tokenizer)
    return Path(dst)


# ---- import --------------------------------------------------------------------------------------------------------


def read_config_json(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: `import` takes a folder holding a Qwen3 or Qwen3-VL checkpoint.")
    from ..formats.folder import read_json_object

    return read_json_object(path, "`import` takes a folder holding a Qwen3 or Qwen3-VL checkpoint")


def _strip(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in NON_MODEL_KEYS | {"dtype", "torch_dtype"}}


def qwen3_config(raw: dict) -> Qwen3MultimodalConfig:
    """A native Qwen3 config.json (release format or transformers 5's) as our text-only config."""
    return Qwen3MultimodalConfig(text_config=_strip(raw), tie_word_embeddings=raw.get("tie_word_embeddings", False))


def qwen3_vl_config(raw: dict) -> Qwen3MultimodalConfig:
    """A native Qwen3-VL config.json. The release format keeps rope as ``rope_scaling`` (with ``mrope_section``)
    plus ``rope_theta`` inside text_config; our text config converts that legacy form like Qwen3's does."""
    token_ids = {
        k: raw[k]
        for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
        if k in raw
    }
    text = _strip(raw["text_config"])
    return Qwen3MultimodalConfig(
        text_config=text,
        vision_config=_strip(raw["vision_config"]),
        tie_word_embeddings=raw.get("tie_word_embeddings", text.get("tie_word_embeddings", False)),
        **token_ids,
    )


def omni_audio_config(raw: dict) -> dict:
    """The audio encoder config of a native Qwen3-Omni config.json (nested under thinker_config)."""
    thinker = raw.get("thinker_config") or {}
    if raw.get("model_type") != "qwen3_omni_moe" or "audio_config" not in thinker:
        raise CheckpointError(
            f"--audio-from takes a Qwen3-Omni checkpoint (model_type 'qwen3_omni_moe' with "
            f"thinker_config.audio_config); got model_type {raw.get('model_type')!r}."
        )
    return _strip(thinker["audio_config"])


# model_type of the source -> (our config from its config.json, key renames applied by transformers while loading)
IMPORTERS = {
    "qwen3": (qwen3_config, None),
    "qwen3_vl": (qwen3_vl_config, key_mapping(QWEN3_VL_RENAMES)),
}


def source_shards(src: Path) -> list[Path]:
    """The safetensors files holding ``src``'s weights, by the converter's one rule for that (``weight_files``:
    model.safetensors, else the shards the index lists, each a regular file inside ``src``; an index naming
    ``..``, an absolute path or a symlink out of the folder is refused)."""
    from ..formats.folder import weight_files

    try:
        return weight_files(src)
    except FolderError as err:
        raise CheckpointError(str(err)) from err


def check_shards(
    shards: list[Path], expected: dict[str, tuple[int, ...]], key_mapping=None, partial: bool = False
) -> None:
    """Open every shard's header (safetensors validates that the data region is complete) and check names/shapes.

    ``partial``: the shards hold a larger model (Qwen3-Omni) and only the expected tensors are taken from it.
    """
    seen = set()
    for shard in shards:
        try:
            with safe_open(shard, framework="pt") as f:
                for stored in f.keys():
                    shape = tuple(f.get_slice(stored).get_shape())
                    # the same regex renames transformers applies when loading with key_mapping
                    key = stored
                    for pattern, replacement in (key_mapping or {}).items():
                        key = re.sub(pattern, replacement, key)
                    if key == "lm_head.weight" and key not in expected:
                        continue  # some tied checkpoints still store the (identical) output matrix
                    if key not in expected:
                        if partial:
                            continue
                        raise CheckpointError(
                            f"{shard.name}: unexpected tensor {key!r}; a Qwen3 checkpoint of this config has no "
                            f"such parameter."
                        )
                    if shape != expected[key]:
                        raise CheckpointError(
                            f"{shard.name}: tensor {key!r} has shape {list(shape)}, expected {list(expected[key])} "
                            f"from config.json."
                        )
                    seen.add(key)
        except CheckpointError:
            raise
        except Exception as err:  # safetensors raises its own error types for truncated or corrupt files
            raise CheckpointError(f"{shard} is not a readable safetensors file ({err}); it may be truncated.") from err
    missing = sorted(set(expected) - seen)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"The checkpoint lacks tensors: {', '.join(missing[:5])}{more}.")


def write_provenance(folder: Path, src: Path, audio_from, base_model) -> None:
    """Record where imported weights came from (read by ``export`` for the card; format in docs/export.md).
    Qwen3, Qwen3-VL and Qwen3-Omni are released under Apache-2.0, which the export then keeps."""
    record = {
        "format_version": 1,
        "relation": "imported",
        "license": "apache-2.0",
        "description": f"Imported from {src.name}"
        + (f" with the audio tower of {Path(audio_from).name}" if audio_from else ""),
    }
    if base_model:
        record["base_model"] = base_model
    (folder / "qwen3_multimodal_provenance.json").write_text(json.dumps(record, indent=2) + "\n")


def import_checkpoint(src, dst, tokenizer=None, force: bool = False, audio_from=None, base_model=None) -> Path:
    """Import a native Qwen3 or Qwen3-VL folder into our layout (optionally with Qwen3-Omni's audio tower).

    Text-only Qwen3: every shard's header is checked against the expected names and shapes, then the shards are
    copied byte for byte (our keys are Qwen3's). Qwen3-VL, or any import that adds an audio tower, goes through
    ``from_pretrained`` with transformers' key mapping, holding the model once in its stored dtype.
    """
    src = Path(src)
    sources = [src] + ([Path(audio_from)] if audio_from is not None else [])
    check_destination(dst, force=force, sources=sources)  # before any heavy reading
    config, key_mapping = _source_config(src)
    shards = source_shards(src)
    omni_shards = []
    if audio_from is not None:
        config = _with_omni_audio(config, Path(audio_from))
        omni_shards = source_shards(Path(audio_from))
    _check_all_shards(config, key_mapping, shards, omni_shards)
    dtype = stored_dtype(shards[0])  # keep the tensors as stored, whatever config.json claims
    config.dtype = dtype

    with atomic_folder(dst, force=force, sources=sources) as tmp:
        if key_mapping is None and not omni_shards:
            for shard in shards:
                shutil.copyfile(shard, tmp / shard.name)
            if len(shards) > 1 or shards[0].name != "model.safetensors":  # the shards came from the index
                shutil.copyfile(src / INDEX_NAME, tmp / INDEX_NAME)
        else:
            _write_through_transformers(tmp, src, config, key_mapping, omni_shards, dtype)
        _write_common(tmp, config, tokenizer)
        write_provenance(tmp, src, audio_from, base_model)
    return Path(dst)


def _source_config(src: Path):
    """Our config for the native folder ``src`` (validated first) and the key mapping its weights need."""
    raw = read_config_json(src)
    model_type = raw.get("model_type")
    if model_type not in IMPORTERS:
        raise CheckpointError(
            f"{src / 'config.json'} has model_type {model_type!r}; `import` supports: {', '.join(IMPORTERS)} "
            f"(native Qwen3ForCausalLM and Qwen3VLForConditionalGeneration checkpoints)."
        )
    from ..formats.folder import validate_folder

    validate_folder(src)  # schema, index, headers, shapes: one clear error before transformers reads anything
    make_config, key_mapping = IMPORTERS[model_type]
    return make_config(raw), key_mapping


def _with_omni_audio(config, audio_from: Path):
    """``config`` plus the audio tower of the Qwen3-Omni checkpoint ``audio_from``, whose width must fit."""
    audio = omni_audio_config(read_config_json(audio_from))
    if audio.get("output_dim") != config.text_config.hidden_size:
        raise CheckpointError(
            f"{audio_from}: the audio tower projects to {audio.get('output_dim')} but the decoder's hidden size "
            f"is {config.text_config.hidden_size}; take the audio tower from a Qwen3-Omni whose thinker "
            f"matches this decoder's width."
        )
    return Qwen3MultimodalConfig(**{**config.to_dict(), "audio_config": audio})


def _check_all_shards(config, key_mapping, shards: list[Path], omni_shards: list[Path]) -> None:
    expected = expected_shapes(config)
    check_shards(shards, {k: v for k, v in expected.items() if not k.startswith(AUDIO_PREFIX)}, key_mapping)
    if omni_shards:
        audio = {
            k.replace(AUDIO_PREFIX, OMNI_AUDIO_PREFIX, 1): v for k, v in expected.items() if k.startswith(AUDIO_PREFIX)
        }
        check_shards(omni_shards, audio, None, partial=True)


def _write_through_transformers(tmp: Path, src: Path, config, key_mapping, omni_shards: list[Path], dtype) -> None:
    """Load with transformers' key mapping (plus the Omni audio tower) and write our keys."""
    model = Qwen3MultimodalForConditionalGeneration.from_pretrained(
        src, config=config, key_mapping=key_mapping, dtype=dtype
    )
    if omni_shards:
        model.model.audio_tower.load_state_dict(read_prefixed(omni_shards, OMNI_AUDIO_PREFIX), strict=True)
    # not save_pretrained: it would reverse the key mapping and write Qwen3-VL's names back
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    state = {k: v for k, v in model.state_dict().items() if k not in tied}
    write_shards(tmp, state.items(), state)


def stored_dtype(shard: Path) -> torch.dtype:
    """The dtype the checkpoint's tensors are stored in (read from the header; no tensor is loaded)."""
    from ..formats.folder import SAFETENSORS_DTYPES  # the one safetensors dtype table

    with safe_open(shard, framework="pt") as f:
        return SAFETENSORS_DTYPES.get(f.get_slice(next(iter(f.keys()))).get_dtype(), torch.float32)


def read_prefixed(shards: list[Path], prefix: str) -> dict:
    """Only the tensors under ``prefix`` (e.g. the Omni audio tower out of a 30B checkpoint), prefix removed."""
    out = {}
    for shard in shards:
        with safe_open(shard, framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    out[key[len(prefix) :]] = f.get_tensor(key)
    return out
