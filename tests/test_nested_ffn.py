"""Nested (MatFormer-style) FFN training (training/nested.py, `finetune --nested-ffn`).

The oracle for "the model at width w" is transformers' own Qwen3ForCausalLM built with intermediate_size=w from the
sliced weights (the first w rows of gate/up, the first w columns of down), what llama.cpp's elastic width and a
checkpoint cut to w compute (tests/test_elastic_width.py checks those against the same oracle).
"""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from transformers_qwen3.compress.importance import slice_mlp
from transformers_qwen3.errors import UserError
from transformers_qwen3.training.nested import NestedFFN, NestedFFNError

FULL = 96


def _config(width: int) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=width,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Qwen3ForCausalLM(_config(FULL)).eval()


def _sliced_native(model, width: int):
    """transformers' model at intermediate_size=width holding the first `width` neurons of `model`."""
    narrow = Qwen3ForCausalLM(_config(width)).eval()
    state = {}
    for name, value in model.state_dict().items():
        if name.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight")):
            value = value[:width]
        elif name.endswith("mlp.down_proj.weight"):
            value = value[:, :width]
        state[name] = value
    narrow.load_state_dict(state)
    return narrow


IDS = torch.tensor([[5, 17, 99, 3, 42, 7, 64, 1]])


@pytest.mark.parametrize("width", [32, 64])
def test_width_prefix_equals_the_native_narrow_model(model, width):
    want = _sliced_native(model, width)(IDS).logits
    with NestedFFN(model, [32, 64]) as nested:
        nested.set(width)
        got = model(IDS).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # and compress's slice (how a plan cuts a model) is the same model
    for layer in model.model.layers:
        slice_mlp(layer.mlp, width)
    torch.testing.assert_close(model(IDS).logits, want, rtol=1e-5, atol=1e-5)


def test_full_width_is_the_original_forward_and_close_restores(model):
    before = model(IDS).logits
    nested = NestedFFN(model, [32])
    nested.set(FULL)
    assert torch.equal(model(IDS).logits, before)
    nested.set(32)
    assert not torch.allclose(model(IDS).logits, before)
    nested.close()
    assert torch.equal(model(IDS).logits, before)


def test_a_narrow_step_trains_only_the_prefix(model):
    with NestedFFN(model, [32]) as nested:
        nested.set(32)
        model(IDS, labels=IDS).loss.backward()
    mlp = model.model.layers[0].mlp
    assert mlp.gate_proj.weight.grad[:32].abs().sum() > 0
    assert torch.equal(mlp.gate_proj.weight.grad[32:], torch.zeros_like(mlp.gate_proj.weight.grad[32:]))
    assert torch.equal(mlp.down_proj.weight.grad[:, 32:], torch.zeros_like(mlp.down_proj.weight.grad[:, 32:]))
    assert mlp.down_proj.weight.grad[:, :32].abs().sum() > 0


def test_sampling_draws_every_width_including_the_full_one(model):
    nested = NestedFFN(model, [64, 32], seed=1)
    assert nested.widths == [32, 64, FULL]
    drawn = {nested.sample() for _ in range(60)}
    assert drawn == {32, 64, FULL}
    nested.close()


@pytest.mark.parametrize("widths", [[0], [FULL + 1], []])
def test_bad_widths_are_one_user_error(model, widths):
    with pytest.raises(NestedFFNError, match="--nested-ffn") as err:
        NestedFFN(model, widths)
    assert isinstance(err.value, UserError)


def test_finetune_parses_and_refuses_nested_widths():
    import argparse

    from transformers_qwen3.training import finetune

    parser = argparse.ArgumentParser()
    finetune.add_arguments(parser)
    args = parser.parse_args(["m", "d.jsonl", "o", "--full", "--nested-ffn", "256,512"])
    assert args.nested_ffn == [256, 512]
    with pytest.raises(SystemExit):
        parser.parse_args(["m", "d.jsonl", "o", "--nested-ffn", "0,abc"])


# ---- finetune --nested-ffn -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, qwen3_tokenizer):
    from transformers_qwen3.checkpoint.build import init_checkpoint

    return init_checkpoint(tmp_path_factory.mktemp("model") / "tiny", "tiny", seed=0, tokenizer=qwen3_tokenizer)


def _chat(tmp_path):
    import json

    records = [
        {"messages": [{"role": "user", "content": f"Colour {i}?"}, {"role": "assistant", "content": "blue"}]}
        for i in range(6)
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_finetune_nested_ffn_trains_and_records_the_widths(tiny_model, tmp_path):
    import json

    from transformers_qwen3.cli import main

    out = tmp_path / "full"
    args = ["finetune", tiny_model, _chat(tmp_path), out, "--full", "--nested-ffn", "64", "--max-steps", "6"]
    assert main([str(a) for a in [*args, "--batch-size", "2", "--save-steps", "100"]]) == 0
    summary = json.loads((out / "finetune.json").read_text())
    nested = summary["nested_ffn"]
    assert nested["widths"] == [64, 128]  # tiny: intermediate_size 128, the full width always among them
    assert sum(nested["steps_per_width"].values()) == summary["global_step"] == 6
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["intermediate_size"] == 128  # saved at full width, an ordinary checkpoint


def test_finetune_refuses_nested_ffn_with_lora_on_the_mlp(tiny_model, tmp_path, capsys):
    from transformers_qwen3.cli import main

    out = tmp_path / "lora"
    args = ["finetune", tiny_model, _chat(tmp_path), out, "--nested-ffn", "64", "--lora-mlp", "--max-steps", "1"]
    assert main([str(a) for a in args]) == 2
    assert "--nested-ffn" in capsys.readouterr().err
    assert not out.exists()
