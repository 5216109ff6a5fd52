"""Writing our Hub layout: weights + config with a complete ``auto_map`` + the three code files + tokenizer.

A folder written here loads with ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` on a
machine where this package is not installed. Every writer goes through :func:`.outputs.atomic_folder`, so a failure
never leaves a half-written destination.
"""

import json
import shutil
from pathlib import Path

from ..outputs import atomic_folder

# The Hub code: these files ship to a model folder verbatim (and are all it imports besides torch/transformers).
REMOTE_DIR = Path(__file__).parents[1] / "remote"
# Every code file of the folder ships (they import each other relatively); its __init__.py does not.
HUB_FILES = tuple(sorted(p.name for p in REMOTE_DIR.glob("*_qwen3_multimodal.py")))
# save_pretrained writes only the saving class's own entry, so the whole map is set before saving (entries merge).
MODEL_AUTO_MAP = {
    "AutoConfig": "configuration_qwen3_multimodal.Qwen3MultimodalConfig",
    "AutoModel": "modeling_qwen3_multimodal.Qwen3MultimodalModel",
    "AutoModelForCausalLM": "modeling_qwen3_multimodal.Qwen3MultimodalForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_qwen3_multimodal.Qwen3MultimodalForConditionalGeneration",
    "AutoModelForSequenceClassification": "modeling_qwen3_multimodal.Qwen3MultimodalForSequenceClassification",
}
TOKENIZER_AUTO_MAP = {"AutoTokenizer": [None, "tokenization_qwen3_multimodal.Qwen3MultimodalTokenizer"]}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_qwen3_multimodal.Qwen3MultimodalProcessor"}


def copy_code_files(folder: Path) -> None:
    for name in HUB_FILES:
        shutil.copyfile(REMOTE_DIR / name, Path(folder) / name)


def code_differences(folder: Path) -> list[str]:
    """The Hub code files in ``folder`` that differ from the installed package's (absent ones are not listed).

    A folder's code runs only when the user asks (``trust_remote_code``); the CLI uses the installed classes and
    reports these so that a modified folder is never run, nor shipped onward, silently."""
    return [
        name
        for name in HUB_FILES
        if (Path(folder) / name).is_file() and (Path(folder) / name).read_bytes() != (REMOTE_DIR / name).read_bytes()
    ]


def set_auto_map(config) -> None:
    config.auto_map = dict(MODEL_AUTO_MAP)
    config.architectures = ["Qwen3MultimodalForConditionalGeneration"]


def save_tokenizer(tokenizer, folder: Path) -> None:
    tokenizer.save_pretrained(folder)
    path = Path(folder) / "tokenizer_config.json"
    data = json.loads(path.read_text())
    data["auto_map"] = TOKENIZER_AUTO_MAP
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def save_processor(processor, folder: Path) -> None:
    """processor_config.json (image processor + feature extractor + video settings) with its AutoProcessor entry,
    and the tokenizer it holds."""
    processor.save_pretrained(folder)
    path = Path(folder) / "processor_config.json"
    data = json.loads(path.read_text())
    data["auto_map"] = PROCESSOR_AUTO_MAP
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    save_tokenizer(processor.tokenizer, folder)


def default_processor(config, tokenizer):
    """A processor matching ``config``'s towers (``None`` for a text-only model)."""
    if config.vision_config is None and config.audio_config is None:
        return None
    from ..remote.processing_qwen3_multimodal import Qwen3MultimodalProcessor

    n_window = config.audio_config.n_window if config.audio_config is not None else 50
    return Qwen3MultimodalProcessor(tokenizer=tokenizer, n_window=n_window)


def save_hub_folder(model, tokenizer, dst: Path, force: bool = False, max_shard_size="2GB", processor=None) -> Path:
    """Save ``model`` (+ ``tokenizer``, + a processor for models with a vision or audio tower) in our Hub layout at
    ``dst``, atomically. Without ``processor``, a multimodal model gets the default one built on ``tokenizer``."""
    with atomic_folder(dst, force=force) as tmp:
        set_auto_map(model.config)
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        save_preprocessing(model.config, tokenizer, tmp, processor)
        copy_code_files(tmp)
    return Path(dst)


def save_preprocessing(config, tokenizer, folder: Path, processor=None) -> None:
    """Tokenizer files, plus processor files for a model with a vision or audio tower (the default processor on
    ``tokenizer`` unless one is given)."""
    if processor is None and tokenizer is not None:
        processor = default_processor(config, tokenizer)
    if processor is not None:
        save_processor(processor, folder)
    elif tokenizer is not None:
        save_tokenizer(tokenizer, folder)
