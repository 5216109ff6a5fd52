"""Creating and importing checkpoints in our Hub layout, streamed tensor by tensor.

- :func:`init_checkpoint` writes a randomly initialised model shard by shard: the model is built on the meta
  device and each module is materialised, initialised with the model's own ``_init_weights``, written and dropped
  again, so an 8B preset never exists whole in memory (it is 33 GB in fp32; the machine has 24 GB).
- :func:`import_checkpoint` takes a native Qwen3 folder. Our text keys *are* Qwen3ForCausalLM's, so after every
  shard's header has been checked against the expected names and shapes the shards are copied byte for byte:
  no tensor is ever loaded.
"""

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .configuration_qwen3_multimodal import Qwen3MultimodalConfig
from .hub import atomic_folder, copy_code_files, save_tokenizer, set_auto_map
from .modeling_qwen3_multimodal import Qwen3MultimodalForConditionalGeneration
from .presets import preset_config

SHARD_BYTES = 2 * 1024**3
INDEX_NAME = "model.safetensors.index.json"
# Keys of the native config.json that describe the file, not the decoder.
NON_MODEL_KEYS = {"architectures", "model_type", "auto_map", "transformers_version", "_name_or_path"}


class CheckpointError(ValueError):
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
        eos_token_id=[151645, 151643],  # <|im_end|>, <|endoftext|> as Qwen3's generation_config.json
        pad_token_id=151643,
    ).save_pretrained(folder)
    if tokenizer is not None:
        save_tokenizer(tokenizer, folder)
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


def init_checkpoint(dst, preset: str, seed: int = 0, dtype: torch.dtype | None = None, tokenizer=None,
                    force: bool = False, shard_bytes: int = SHARD_BYTES) -> Path:
    """Write a randomly initialised checkpoint of ``preset`` to ``dst`` (bf16 by default except ``tiny``)."""
    config = Qwen3MultimodalConfig(**preset_config(preset))
    dtype = dtype or (torch.float32 if preset.startswith("tiny") else torch.bfloat16)
    config.dtype = dtype
    torch.manual_seed(seed)
    model = _meta_model(config)
    owners = _owner_init(model)
    skip = {"lm_head.weight"} if config.tie_word_embeddings else set()

    with atomic_folder(dst, force=force) as tmp:
        shards, current, current_bytes, total = [], {}, 0, 0

        def flush():
            nonlocal current, current_bytes
            if current:
                name = f"shard-{len(shards):05d}.safetensors"
                save_file(current, tmp / name, metadata={"format": "pt"})
                shards.append((name, list(current)))
                current, current_bytes = {}, 0

        for module_name, module in model.named_modules():
            own = {**module._parameters, **{k: v for k, v in module._buffers.items()
                                            if k not in module._non_persistent_buffers_set}}
            if not any(v is not None for v in own.values()):
                continue
            module.to_empty(device="cpu", recurse=False)
            module.to(dtype)
            with torch.no_grad():
                owners[module]._init_weights(module)
            for key, tensor in list(module._parameters.items()) + list(module._buffers.items()):
                full = f"{module_name}.{key}" if module_name else key
                if tensor is None or full in skip or key in module._non_persistent_buffers_set:
                    continue
                if current_bytes and current_bytes + tensor.nbytes > shard_bytes:
                    flush()
                current[full] = tensor.detach().contiguous()
                current_bytes += tensor.nbytes
                total += tensor.nbytes
            module.to("meta")  # free it: the next shard must not hold this one
        flush()

        weight_map = {}
        if len(shards) == 1:
            (tmp / shards[0][0]).rename(tmp / "model.safetensors")
        else:
            for i, (name, keys) in enumerate(shards):
                final = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                (tmp / name).rename(tmp / final)
                weight_map.update(dict.fromkeys(keys, final))
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        _write_common(tmp, config, tokenizer)
    return Path(dst)


# ---- import --------------------------------------------------------------------------------------------------------


def read_native_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: `import` takes a folder holding a native Qwen3 checkpoint.")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}).") from err
    if raw.get("model_type") != "qwen3":
        raise CheckpointError(
            f"{path} has model_type {raw.get('model_type')!r}; `import` takes a native Qwen3 checkpoint "
            f"(model_type 'qwen3', as written by Qwen3ForCausalLM). Supported: qwen3."
        )
    return raw


def source_shards(src: Path) -> list[Path]:
    index = src / INDEX_NAME
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        shards = [src / n for n in names]
    elif (src / "model.safetensors").is_file():
        shards = [src / "model.safetensors"]
    else:
        raise CheckpointError(f"{src} has neither model.safetensors nor {INDEX_NAME}: no weights to import.")
    for shard in shards:
        if not shard.is_file():
            raise CheckpointError(f"{shard} is listed in {index} but missing: download the complete checkpoint.")
    return shards


def check_shards(shards: list[Path], expected: dict[str, tuple[int, ...]]) -> None:
    """Open every shard's header (safetensors validates that the data region is complete) and check names/shapes."""
    seen = set()
    for shard in shards:
        try:
            with safe_open(shard, framework="pt") as f:
                for key in f.keys():
                    shape = tuple(f.get_slice(key).get_shape())
                    if key == "lm_head.weight" and key not in expected:
                        continue  # some tied checkpoints still store the (identical) output matrix
                    if key not in expected:
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


def import_checkpoint(src, dst, tokenizer=None, force: bool = False) -> Path:
    """Import a native Qwen3 folder (config.json in the Qwen release format or transformers 5's) into our layout."""
    src = Path(src)
    raw = read_native_config(src)
    text = {k: v for k, v in raw.items() if k not in NON_MODEL_KEYS}
    dtype = text.pop("dtype", None) or text.pop("torch_dtype", None)
    text.pop("torch_dtype", None)
    config = Qwen3MultimodalConfig(text_config=text, tie_word_embeddings=raw.get("tie_word_embeddings", False))
    config.dtype = dtype
    shards = source_shards(src)
    check_shards(shards, expected_shapes(config))
    with atomic_folder(dst, force=force) as tmp:
        for shard in shards:
            shutil.copyfile(shard, tmp / shard.name)
        if (src / INDEX_NAME).is_file():
            shutil.copyfile(src / INDEX_NAME, tmp / INDEX_NAME)
        _write_common(tmp, config, tokenizer)
    return Path(dst)
