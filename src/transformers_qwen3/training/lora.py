"""LoRA for Qwen3-Multimodal with peft: which modules get adapters, how many parameters train, merging.

Targets are given by *group* (``attention-qv``, ``attention``, ``mlp``, ``vision``, ``projectors``, ``audio``) and
turned into ONE regular expression for peft's ``target_modules``. peft matches a string ``target_modules`` with
``re.fullmatch`` against each module's full name, so every alternative is anchored on its owner's path
(``model.layers.N.`` for the decoder, ``model.visual.blocks.N.`` / ``model.audio_tower.layers.N.`` for the towers).
Why not ``target_modules=["q_proj", "v_proj"]``: peft matches list entries by name *suffix*, and the audio tower
(Qwen3-Omni's encoder) also has ``self_attn.q_proj`` / ``self_attn.v_proj``, so a plain list silently adapts the
audio tower too.

Parameter count of one adapted ``nn.Linear(d_in, d_out)`` at rank r: ``r * (d_in + d_out)`` (A is r x d_in, B is
d_out x r); :func:`lora_parameter_count` evaluates that formula on a config without building anything.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path

import torch

from ..errors import FolderError, UserError

# group -> (owner path, module path inside the owner); both are regular expressions.
DECODER_LAYER = r"model\.layers\.\d+"
VISION_BLOCK = r"model\.visual\.blocks\.\d+"
AUDIO_LAYER = r"model\.audio_tower\.layers\.\d+"
TARGET_GROUPS: dict[str, tuple[str, str]] = {
    # the default, as in the LoRA paper: query and value projections of the text decoder
    "attention-qv": (DECODER_LAYER, r"self_attn\.(?:q_proj|v_proj)"),
    "attention": (DECODER_LAYER, r"self_attn\.(?:q_proj|k_proj|v_proj|o_proj)"),
    "mlp": (DECODER_LAYER, r"mlp\.(?:gate_proj|up_proj|down_proj)"),
    # Qwen3-VL vision blocks: fused qkv, output proj, two-layer MLP
    "vision": (VISION_BLOCK, r"(?:attn\.(?:qkv|proj)|mlp\.(?:linear_fc1|linear_fc2))"),
    # the modality interfaces: vision merger + deepstack mergers, audio output projections
    "projectors": (
        r"model\.(?:visual\.merger|visual\.deepstack_merger_list\.\d+|audio_tower)",
        r"(?:linear_fc1|linear_fc2|proj1|proj2)",
    ),
    # Qwen3-Omni audio encoder layers: q/k/v/out projections and the MLP
    "audio": (AUDIO_LAYER, r"(?:self_attn\.(?:q_proj|k_proj|v_proj|out_proj)|fc1|fc2)"),
}
DECODER_GROUPS = ("attention-qv", "attention", "mlp")


class LoraSettingError(UserError, ValueError):
    """A LoRA setting that cannot be built (an unknown target group, a rank below 1)."""


def target_pattern(groups) -> str:
    """One regex (for ``re.fullmatch``) matching exactly the Linear modules of ``groups``."""
    unknown = [g for g in groups if g not in TARGET_GROUPS]
    if unknown or not groups:
        raise LoraSettingError(
            f"Unknown LoRA target group(s) {unknown or groups!r}; choose from {', '.join(TARGET_GROUPS)}."
        )
    alternatives = []
    for group in dict.fromkeys(groups):  # keep order, drop repeats
        owner, inner = TARGET_GROUPS[group]
        alternatives.append(rf"{owner}\.{inner}")
    return "(?:" + "|".join(alternatives) + ")"


def resolve_groups(
    targets=("attention-qv",), include_mlp=False, include_vision=False, include_audio=False, include_projectors=False
) -> tuple[str, ...]:
    groups = list(targets)
    for flag, group in (
        (include_mlp, "mlp"),
        (include_vision, "vision"),
        (include_projectors, "projectors"),
        (include_audio, "audio"),
    ):
        if flag:
            groups.append(group)
    if "attention" in groups and "attention-qv" in groups:
        groups.remove("attention-qv")  # a subset of "attention"
    return tuple(dict.fromkeys(groups))


def lora_config(
    rank: int = 8,
    alpha: int | None = 16,
    targets=("attention-qv",),
    include_mlp: bool = False,
    include_vision: bool = False,
    include_audio: bool = False,
    include_projectors: bool = False,
    dropout: float = 0.0,
    task_type: str | None = "CAUSAL_LM",
    modules_to_save=None,
    **kwargs,
):
    """A peft ``LoraConfig`` whose ``target_modules`` is an anchored regex (see the module docstring).

    ``alpha=None`` uses ``2 * rank`` (the scale alpha/rank stays 2 when the rank changes). ``task_type``
    "SEQ_CLS" makes peft train and save the ``score`` head in full. Extra keyword arguments go to ``LoraConfig``
    (e.g. ``init_lora_weights=False`` for a non-zero B in tests).
    """
    from peft import LoraConfig

    if rank < 1:
        raise LoraSettingError(f"LoRA rank must be >= 1, got {rank}; pass --rank 1 or more.")
    groups = resolve_groups(targets, include_mlp, include_vision, include_audio, include_projectors)
    return LoraConfig(
        r=rank,
        lora_alpha=2 * rank if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=target_pattern(groups),
        task_type=task_type,
        modules_to_save=modules_to_save,
        **kwargs,
    )


@contextlib.contextmanager
def _peft_compat():
    """peft (0.21) asks ``model.is_gradient_checkpointing`` when it wraps a model; transformers 5.24 deprecated that
    property (FutureWarning, an error under our test settings). The answer is the same as the new name's, so the
    warning carries no information for us; silence exactly that one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def apply_lora(model, config):
    """Wrap ``model`` with the adapters of ``config`` (base weights frozen)."""
    from peft import get_peft_model

    with _peft_compat():
        return get_peft_model(model, config)


def load_lora(model, adapter_dir, is_trainable: bool = False):
    """``model`` with the adapters saved in ``adapter_dir`` (``PeftModel.save_pretrained`` output)."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FolderError(
            f"{adapter_dir} holds no adapter_config.json: pass a folder written by "
            f"`transformers-qwen3 finetune --lora` (or PeftModel.save_pretrained)."
        )
    with _peft_compat():
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable)


def adapted_module_names(peft_model) -> list[str]:
    """Names (relative to the base model, e.g. ``model.layers.0.self_attn.q_proj``) of modules holding a LoRA."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    return sorted(name for name, module in base.named_modules() if isinstance(module, LoraLayer))


def lora_parameter_count(model_config, rank: int, groups=("attention-qv",)) -> int:
    """``sum(rank * (d_in + d_out))`` over the Linear modules the groups target, from the config alone.

    Builds the model on the meta device (no memory), so it works for any preset.
    """
    from ..remote.modeling_qwen3_multimodal import Qwen3MultimodalForConditionalGeneration

    pattern = re.compile(target_pattern(groups))
    with torch.device("meta"):
        model = Qwen3MultimodalForConditionalGeneration(model_config)
    return sum(
        rank * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and pattern.fullmatch(name)
    )


def merge_to_hub_folder(
    peft_model, tokenizer, dst, processor=None, dtype: torch.dtype | None = None, force: bool = False
) -> Path:
    """Merge the adapters into the base weights and write our Hub layout (code files, auto_map, tokenizer/processor).

    Goes through :func:`transformers_qwen3.checkpoint.hub_folder.save_hub_folder`: a plain ``save_pretrained`` of the merged model
    copies the remote-code files only when the auto class is registered on it, so the folder would not load on a
    machine without this package.
    """
    from ..checkpoint.hub_folder import save_hub_folder

    merged = peft_model.merge_and_unload()
    if dtype is not None:
        merged = merged.to(dtype)
        merged.config.dtype = dtype
    return save_hub_folder(merged, tokenizer, Path(dst), force=force, processor=processor)


class LoraInfo:
    """``transformers-qwen3 lora-info --preset 0.6b --rank 8 [--targets attention] [--mlp] ...``: trainable parameters
    of a LoRA setting on a preset shape (on the meta device: nothing is allocated), counted by peft."""

    @staticmethod
    def add_arguments(parser) -> None:
        from ..checkpoint.presets import PRESETS

        parser.add_argument("--preset", choices=list(PRESETS), default="0.6b", help="model shape (default 0.6b)")
        parser.add_argument("--rank", type=int, nargs="+", default=[8], help="one or more LoRA ranks (default 8)")
        parser.add_argument("--targets", nargs="+", choices=DECODER_GROUPS, default=["attention-qv"])
        for group in ("mlp", "vision", "projectors", "audio"):
            parser.add_argument(f"--{group}", action="store_true", help=f"add the {group} group")

    @staticmethod
    def run(args) -> int:
        from ..checkpoint.presets import preset_config
        from ..remote.configuration_qwen3_multimodal import Qwen3MultimodalConfig
        from ..remote.modeling_qwen3_multimodal import Qwen3MultimodalForConditionalGeneration

        config = Qwen3MultimodalConfig(**preset_config(args.preset))
        options = dict(
            include_mlp=args.mlp,
            include_vision=args.vision,
            include_projectors=args.projectors,
            include_audio=args.audio,
        )
        groups = resolve_groups(tuple(args.targets), args.mlp, args.vision, args.audio, args.projectors)
        for rank in args.rank:
            with torch.device("meta"):
                model = Qwen3MultimodalForConditionalGeneration(config)
            peft_model = apply_lora(model, lora_config(rank=rank, targets=tuple(args.targets), **options))
            trainable, total = peft_model.get_nb_trainable_parameters()
            print(
                f"{args.preset} rank {rank} {'+'.join(groups)}: trainable params: {trainable:,} of {total:,} "
                f"({100 * trainable / total:.3f} %), {len(adapted_module_names(peft_model))} modules"
            )
        return 0


__all__ = [
    "TARGET_GROUPS",
    "LoraInfo",
    "LoraSettingError",
    "adapted_module_names",
    "apply_lora",
    "load_lora",
    "lora_config",
    "lora_parameter_count",
    "merge_to_hub_folder",
    "resolve_groups",
    "target_pattern",
]
