"""Per-layer FFN widths in the config and the importance order: what makes a compressed model an ordinary
checkpoint. The oracle is transformers' native Qwen3ForCausalLM (the same weights, narrower layers sliced)."""

import json

import pytest
import torch
from helpers.tiny_models import TEXT, max_diff, text_pair
from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

from transformers_qwen3 import Qwen3MultimodalConfig, Qwen3MultimodalForConditionalGeneration
from transformers_qwen3.checkpoint.hub_folder import copy_code_files, set_auto_map
from transformers_qwen3.compress.importance import permute_ffn, slice_mlp
from transformers_qwen3.remote.configuration_qwen3_multimodal import Qwen3MultimodalTextConfig

IDS = torch.randint(0, TEXT["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(0))


def test_plain_config_serializes_as_before():
    # a plain int width and no skipped layers: the config JSON is Qwen3's, key for key
    ours = Qwen3MultimodalTextConfig(**TEXT).to_dict()
    native = Qwen3Config(**TEXT).to_dict()
    assert "skipped_layers" not in ours
    assert {k: v for k, v in ours.items() if k != "model_type"} == {
        k: v for k, v in native.items() if k != "model_type"
    }


@pytest.mark.parametrize(
    "widths,error",
    [
        ([64], "1 widths for 2 layers"),
        ([64, 0], "positive ints"),
        ("64", "an int or a list"),
        ([64, True], "positive"),
    ],
)
def test_bad_widths_are_refused(widths, error):
    # the type check runs as huggingface_hub's strict-dataclass validator (its own error class), the length check
    # in __post_init__ (ValueError); either way the message names the problem
    with pytest.raises((ValueError, StrictDataclassFieldValidationError), match=error):
        Qwen3MultimodalTextConfig(**{**TEXT, "intermediate_size": widths})


def test_per_layer_widths_match_native_layers(tmp_path):
    """A model with widths [64, 32] computes what the native model computes with layer 1 sliced to 32 neurons,
    and saves / reloads through trust_remote_code with the widths and the skipped-layer record intact."""
    native, ours = text_pair()
    with torch.no_grad():
        slice_mlp(native.model.layers[1].mlp, 32)
        config = Qwen3MultimodalConfig(
            text_config={**native.config.to_dict(), "intermediate_size": [64, 32], "skipped_layers": [2, 5]}
        )
        narrow = Qwen3MultimodalForConditionalGeneration(config).eval()
        narrow.load_state_dict(native.state_dict(), strict=True)
        assert torch.equal(narrow(input_ids=IDS).logits, native(input_ids=IDS).logits)

    set_auto_map(narrow.config)
    narrow.save_pretrained(tmp_path)
    copy_code_files(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["text_config"]
    assert saved["intermediate_size"] == [64, 32] and saved["skipped_layers"] == [2, 5]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert reloaded.model.layers[1].mlp.down_proj.in_features == 32
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=IDS).logits, native(input_ids=IDS).logits)
    # the attention implementation still reaches layers built from a per-layer config copy
    reloaded.set_attn_implementation("eager")
    assert reloaded.model.layers[1].self_attn.config._attn_implementation == "eager"


def test_importance_permutation_preserves_the_function():
    """Reordering neurons permutes gate/up outputs exactly (each is its own dot product); the down projection then
    sums the same products in another order, so logits agree to rounding, not bit for bit. Measured: float32 max
    |diff| ~5e-6 on logits of size ~3; float64 ~1e-15. torch.equal cannot hold in general (see docs/compression.md)."""
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-12)):
        native, ours = text_pair(hidden_size=64, intermediate_size=128, head_dim=16)
        ours = ours.to(dtype)
        orders = [torch.randperm(128, generator=torch.Generator().manual_seed(i)) for i in range(2)]
        x = torch.randn(3, 64, dtype=dtype)
        mlp = ours.model.layers[0].mlp
        with torch.no_grad():
            before_gate = mlp.gate_proj(x)
            before = ours(input_ids=IDS).logits
            permute_ffn(ours, orders)
            assert torch.equal(mlp.gate_proj(x), before_gate[:, orders[0]])  # bit-exact: rows moved, not changed
            after = ours(input_ids=IDS).logits
        assert max_diff(before, after) < tol, f"{dtype}: max |diff| {max_diff(before, after):.3g}"
        assert torch.equal(before.argmax(-1), after.argmax(-1))


def test_native_oracle_builds_the_same_sliced_layer():
    # slice_mlp leaves a module the native class would build at that width (shapes and attributes)
    config = Qwen3Config(**{**TEXT, "intermediate_size": 32})
    reference = Qwen3ForCausalLM(config).model.layers[0].mlp
    native, _ = text_pair()
    mlp = native.model.layers[0].mlp
    slice_mlp(mlp, 32)
    for name in ("gate_proj", "up_proj", "down_proj"):
        assert getattr(mlp, name).weight.shape == getattr(reference, name).weight.shape
    assert mlp.intermediate_size == reference.intermediate_size == 32
