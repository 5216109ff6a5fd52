"""Importing real multimodal checkpoint layouts: a native Qwen3-VL folder (release-format config.json, decoder under
``model.language_model.``) plus Qwen3-Omni's audio tower (``thinker.audio_tower.*``, config nested under
``thinker_config``). Oracles: the native Qwen3-VL model and the native Omni audio encoder on the same weights."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

from transformers_qwen3 import Qwen3MultimodalForConditionalGeneration
from transformers_qwen3.checkpoint.build import CheckpointError, import_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def vl_folder(tmp_path_factory):
    release = json.loads((FIXTURES / "qwen3_vl_release_config.json").read_text())
    torch.manual_seed(0)
    fields = {k: v for k, v in release.items() if k not in ("architectures", "transformers_version")}
    # build the oracle in fp32 (the release file says bf16; import keeps whatever dtype the tensors are stored in)
    fields["text_config"] = {k: v for k, v in fields["text_config"].items() if k != "dtype"}
    config = Qwen3VLConfig(**fields)
    assert config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    native = Qwen3VLForConditionalGeneration(config).eval()
    folder = tmp_path_factory.mktemp("qwen3vl")
    native.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(release))  # the layout the real repositories ship
    return folder, native


@pytest.fixture(scope="module")
def omni_folder(tmp_path_factory):
    release = json.loads((FIXTURES / "qwen3_omni_release_config.json").read_text())
    torch.manual_seed(1)
    audio = {k: v for k, v in release["thinker_config"]["audio_config"].items() if k != "model_type"}
    encoder = Qwen3OmniMoeAudioEncoder(Qwen3OmniMoeAudioEncoderConfig(**audio)).eval()
    tensors = {f"thinker.audio_tower.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
    tensors["thinker.model.layers.0.mlp.experts.0.up_proj.weight"] = torch.zeros(4, 4)  # the rest of the model
    folder = tmp_path_factory.mktemp("omni")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(release))
    return folder, encoder


def test_qwen3_vl_import_matches_native(vl_folder, omni_folder, tmp_path):
    folder, native = vl_folder
    omni, encoder = omni_folder
    dst = tmp_path / "ours"
    import_checkpoint(folder, dst, audio_from=omni)
    ours = Qwen3MultimodalForConditionalGeneration.from_pretrained(dst, dtype=torch.float32).eval()
    assert ours.config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    stored = json.loads((dst / "config.json").read_text())
    assert stored["model_type"] == "qwen3_multimodal" and stored["audio_config"]["output_dim"] == 64

    grid = torch.tensor([[1, 4, 6]])
    pixels = torch.randn(24, 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[9707, 151652] + [151655] * 6 + [151653, 3838, 30]])
    types = (ids == 151655).int()
    with torch.no_grad():
        expected = native(input_ids=ids, pixel_values=pixels, image_grid_thw=grid, mm_token_type_ids=types).logits
        got = ours(input_ids=ids, pixel_values=pixels, image_grid_thw=grid).logits
        assert (got - expected).abs().max().item() <= 1e-5
        features = torch.randn(128, 250, generator=torch.Generator().manual_seed(2))
        lens = torch.tensor([250])
        assert torch.equal(
            ours.model.audio_tower(features, feature_lens=lens).last_hidden_state,
            encoder(features, feature_lens=lens).last_hidden_state,
        )


def test_audio_tower_width_must_match_decoder(vl_folder, tmp_path):
    folder, _ = vl_folder
    omni = tmp_path / "omni"
    omni.mkdir()
    release = json.loads((FIXTURES / "qwen3_omni_release_config.json").read_text())
    release["thinker_config"]["audio_config"]["output_dim"] = 2048
    (omni / "config.json").write_text(json.dumps(release))
    with pytest.raises(CheckpointError, match="projects to 2048 but the decoder's hidden size is 64"):
        import_checkpoint(folder, tmp_path / "dst", audio_from=omni)
    assert not (tmp_path / "dst").exists()


def test_audio_from_must_be_omni(vl_folder, tmp_path):
    folder, _ = vl_folder
    with pytest.raises(CheckpointError, match="qwen3_omni_moe"):
        import_checkpoint(folder, tmp_path / "dst", audio_from=folder)


def test_unsupported_model_type_lists_supported(tmp_path):
    src = tmp_path / "src"  # not the parent of dst: a destination inside the source is refused first
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    with pytest.raises(CheckpointError, match="supports: qwen3, qwen3_vl"):
        import_checkpoint(src, tmp_path / "dst")
