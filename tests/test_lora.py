"""LoRA with peft: targets (never the towers by accident), parameter counts, merging, saving, gradient checkpointing,
and the merged model in our Hub layout loading where this package is not installed."""

import copy

import pytest
import torch
from helpers.processes import run_clean_python
from transformers import Qwen3Config, Qwen3ForSequenceClassification

from transformers_qwen3.checkpoint.presets import preset_config
from transformers_qwen3.errors import FolderError
from transformers_qwen3.remote.configuration_qwen3_multimodal import Qwen3MultimodalConfig
from transformers_qwen3.remote.modeling_qwen3_multimodal import (
    Qwen3MultimodalForConditionalGeneration,
    Qwen3MultimodalForSequenceClassification,
)
from transformers_qwen3.training.lora import (
    adapted_module_names,
    apply_lora,
    load_lora,
    lora_config,
    lora_parameter_count,
    merge_to_hub_folder,
    target_pattern,
)

SMALL_VOCAB = 1024  # merging and saving do not need the real vocabulary; a small one keeps these tests fast
PROMPT = torch.tensor([[5, 17, 300, 42, 9, 1000, 77, 3]])


def meta_model(preset):
    with torch.device("meta"):
        return Qwen3MultimodalForConditionalGeneration(Qwen3MultimodalConfig(**preset_config(preset)))


def small_text_config(**extra):
    text = {**preset_config("tiny")["text_config"], "vocab_size": SMALL_VOCAB, **extra}
    return Qwen3MultimodalConfig(text_config=text)


@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    return Qwen3MultimodalForConditionalGeneration(small_text_config()).eval()


def adapted(base, **options):
    """A LoRA model with random (non-zero) B, so the adapters change the output."""
    torch.manual_seed(1)
    return apply_lora(copy.deepcopy(base), lora_config(init_lora_weights=False, **options)).eval()


def logits(model, ids=PROMPT):
    with torch.no_grad():
        return model(ids).logits


# ---- targets -------------------------------------------------------------------------------------------------------

LAYERS, VISION_BLOCKS, AUDIO_LAYERS = range(2), range(2), range(2)  # tiny-mm: 2 decoder layers, 2 blocks, 2 layers
DECODER_QV = [f"model.layers.{i}.self_attn.{p}" for i in LAYERS for p in ("q_proj", "v_proj")]
DECODER_ATTN = [f"model.layers.{i}.self_attn.{p}" for i in LAYERS for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
DECODER_MLP = [f"model.layers.{i}.mlp.{p}" for i in LAYERS for p in ("gate_proj", "up_proj", "down_proj")]
VISION = [
    f"model.visual.blocks.{i}.{p}"
    for i in VISION_BLOCKS
    for p in ("attn.qkv", "attn.proj", "mlp.linear_fc1", "mlp.linear_fc2")
]
AUDIO = [
    f"model.audio_tower.layers.{i}.{p}"
    for i in AUDIO_LAYERS
    for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2")
]
PROJECTORS = [
    "model.visual.merger.linear_fc1",
    "model.visual.merger.linear_fc2",
    "model.visual.deepstack_merger_list.0.linear_fc1",
    "model.visual.deepstack_merger_list.0.linear_fc2",
    "model.audio_tower.proj1",
    "model.audio_tower.proj2",
]

TARGET_CASES = {
    "default": ({}, DECODER_QV),
    "attention": ({"targets": ("attention",)}, DECODER_ATTN),
    "qv+mlp": ({"include_mlp": True}, DECODER_QV + DECODER_MLP),
    "qv+vision": ({"include_vision": True}, DECODER_QV + VISION),
    "qv+audio": ({"include_audio": True}, DECODER_QV + AUDIO),
    "qv+projectors": ({"include_projectors": True}, DECODER_QV + PROJECTORS),
    "everything": (
        {
            "targets": ("attention",),
            "include_mlp": True,
            "include_vision": True,
            "include_audio": True,
            "include_projectors": True,
        },
        DECODER_ATTN + DECODER_MLP + VISION + AUDIO + PROJECTORS,
    ),
}


@pytest.mark.parametrize("case", TARGET_CASES)
def test_targets_match_exactly_the_named_modules(case):
    options, expected = TARGET_CASES[case]
    model = apply_lora(meta_model("tiny-mm"), lora_config(**options))
    names = adapted_module_names(model)
    assert names == sorted(expected), (
        f"unexpected: {set(names) - set(expected)}, missing: {set(expected) - set(names)}"
    )


def test_default_targets_never_touch_the_towers():
    names = adapted_module_names(apply_lora(meta_model("tiny-mm"), lora_config()))
    assert names and all(n.startswith("model.layers.") for n in names), names


def test_plain_name_list_would_hit_the_audio_tower():
    """The trap the anchored pattern avoids: peft matches list entries by suffix, so q_proj/v_proj also adapt the
    audio encoder's attention."""
    from peft import LoraConfig

    naive = apply_lora(meta_model("tiny-mm"), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    assert any(n.startswith("model.audio_tower.") for n in adapted_module_names(naive))


def test_unknown_group_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown LoRA target group"):
        target_pattern(["attn"])


# ---- parameter counts ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rank", "groups", "trainable", "percent"),
    [
        # 28 layers x r x ((1024 + 2048) for q + (1024 + 1024) for v)
        (8, ("attention-qv",), 28 * 8 * (3072 + 2048), 0.192),
        (52, ("attention-qv",), 28 * 52 * (3072 + 2048), 1.235),
        # q, k, v, o, gate, up, down: r x (3072 + 2048 + 2048 + 3072 + 3 x 4096) per layer
        (12, ("attention", "mlp"), 28 * 12 * (3072 + 2048 + 2048 + 3072 + 3 * 4096), 1.254),
    ],
)
def test_trainable_fraction_on_the_0_6b_shape(rank, groups, trainable, percent):
    model = meta_model("0.6b")
    base_total = model.num_parameters()  # 596,049,920 (tied embeddings counted once)
    assert base_total == 596_049_920
    peft_model = apply_lora(model, lora_config(rank=rank, targets=groups))
    counted, total = peft_model.get_nb_trainable_parameters()
    assert counted == trainable == lora_parameter_count(model.config, rank, groups)
    assert total == base_total + trainable
    assert round(100 * trainable / total, 3) == percent, f"{trainable} of {total}"


def test_lora_info_verb_prints_the_counts(capsys):
    import argparse

    from transformers_qwen3.training.lora import LoraInfo

    parser = argparse.ArgumentParser()
    LoraInfo.add_arguments(parser)
    assert LoraInfo.run(parser.parse_args(["--preset", "0.6b", "--rank", "8", "52"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"0.6b rank {r} attention-qv: trainable params: {28 * r * 5120:,} of {596_049_920 + 28 * r * 5120:,} "
        f"({p} %), 56 modules"
        for r, p in ((8, "0.192"), (52, "1.235"))
    ]


# ---- merging, saving, gradient checkpointing -----------------------------------------------------------------------


def test_merge_and_unload_gives_the_adapted_logits(base_model):
    peft_model = adapted(base_model, include_mlp=True)
    base, lora = logits(base_model), logits(peft_model)
    assert (lora - base).abs().max() > 1e-3, "the adapters should change the output (random B)"
    merged = logits(copy.deepcopy(peft_model).merge_and_unload())
    diff = (merged - lora).abs().max().item()
    assert diff < 1e-5, f"merged vs adapted logits: max abs diff {diff:.3g} (tolerance 1e-5, fp32)"


def test_adapter_save_and_load_round_trip(base_model, tmp_path):
    peft_model = adapted(base_model)
    peft_model.save_pretrained(tmp_path / "adapter")
    loaded = load_lora(copy.deepcopy(base_model), tmp_path / "adapter").eval()
    diff = (logits(loaded) - logits(peft_model)).abs().max().item()
    assert diff == 0.0, f"reloaded adapter: max abs diff {diff:.3g} (expected bit-identical)"
    assert adapted_module_names(loaded) == adapted_module_names(peft_model)


def test_load_lora_names_a_missing_adapter(base_model, tmp_path):
    with pytest.raises(FolderError, match="adapter_config.json"):
        load_lora(base_model, tmp_path)


def test_gradient_checkpointing_backward_matches(base_model):
    grads = []
    for checkpointing in (False, True):
        peft_model = adapted(base_model).train()
        if checkpointing:
            # transformers 5.24's name (gradient_checkpointing_enable is a deprecated alias: FutureWarning = error)
            peft_model.activation_checkpointing_enable()
            assert peft_model.get_base_model().is_activation_checkpointing
        out = peft_model(PROMPT, labels=PROMPT)
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all("lora_" in n for n in grads[1])
    for name in grads[0]:
        diff = (grads[0][name] - grads[1][name]).abs().max().item()
        assert diff < 1e-6, f"{name}: grad with/without checkpointing differ by {diff:.3g} (tolerance 1e-6)"
    assert any(g.abs().sum() > 0 for g in grads[1].values())


def test_merged_hub_folder_loads_in_a_clean_process(base_model, tmp_path):
    peft_model = adapted(base_model)
    expected = logits(peft_model)
    folder = merge_to_hub_folder(peft_model, None, tmp_path / "merged")
    assert (folder / "modeling_qwen3_multimodal.py").is_file()
    code = f"""
import torch
from transformers import AutoModelForCausalLM
torch.set_num_threads(1)
model = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith('transformers_modules'), type(model).__module__
with torch.no_grad():
    torch.save(model(torch.tensor({PROMPT.tolist()})).logits, {str(tmp_path / "logits.pt")!r})
"""
    run_clean_python(code, cwd=tmp_path)
    diff = (torch.load(tmp_path / "logits.pt") - expected).abs().max().item()
    assert diff < 1e-5, f"merged folder in a clean process vs adapted model: max abs diff {diff:.3g} (tol 1e-5)"


# ---- sequence classification ---------------------------------------------------------------------------------------


def test_sequence_classification_head_is_qwen3s():
    """Same parameter names and logits as transformers' Qwen3ForSequenceClassification; LoRA for SEQ_CLS adapts
    the decoder's q/v and trains the ``score`` head in full."""
    text = {**preset_config("tiny")["text_config"], "vocab_size": SMALL_VOCAB, "pad_token_id": 0}
    torch.manual_seed(0)
    ours = Qwen3MultimodalForSequenceClassification(Qwen3MultimodalConfig(text_config=text, num_labels=3)).eval()
    native = Qwen3ForSequenceClassification(Qwen3Config(**text, num_labels=3)).eval()
    assert ours.state_dict().keys() == native.state_dict().keys()
    assert ours.score.bias is None and ours.score.weight.shape == (3, text["hidden_size"])
    native.load_state_dict(ours.state_dict())
    ids = torch.tensor([[5, 17, 300, 42, 9], [7, 8, 9, 0, 0]])  # right padding with pad id 0
    with torch.no_grad():
        diff = (ours(ids).logits - native(ids).logits).abs().max().item()
    assert diff < 1e-6, f"score logits vs Qwen3ForSequenceClassification: max abs diff {diff:.3g}"

    peft_model = apply_lora(ours, lora_config(task_type="SEQ_CLS"))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any(".score." in n for n in trainable)
    assert adapted_module_names(peft_model) == sorted(DECODER_QV)
