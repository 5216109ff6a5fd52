"""Hub layout, import/init round trips through a clean process, the remote-code import scanner, and bad input."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers.processes import run_clean_python
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Qwen3Config, Qwen3ForCausalLM

from transformers_qwen3.checkpoint.build import expected_shapes, import_checkpoint, init_checkpoint
from transformers_qwen3.checkpoint.hub_folder import HUB_FILES
from transformers_qwen3.checkpoint.presets import preset_config
from transformers_qwen3.errors import FolderError
from transformers_qwen3.remote.configuration_qwen3_multimodal import Qwen3MultimodalConfig

NATIVE = dict(
    vocab_size=151936,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    tie_word_embeddings=False,
    initializer_range=0.1,
)


@pytest.fixture(scope="module")
def native_folder(tmp_path_factory):
    """A native Qwen3 checkpoint saved in two shards, its config.json rewritten in the Qwen release format."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("native")
    model = Qwen3ForCausalLM(Qwen3Config(**NATIVE))
    model.save_pretrained(folder, max_shard_size="25MB")
    config = json.loads((folder / "config.json").read_text())
    # the format the real Qwen/Qwen3-* repositories ship: top-level rope_theta / rope_scaling / torch_dtype
    rope = config.pop("rope_parameters")
    config.update(rope_theta=rope["rope_theta"], rope_scaling=None, torch_dtype=str(config.pop("dtype", "float32")))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


PROMPT = [[14990, 1879, 11, 1052, 374, 264, 1273, 13]]


def native_logits(folder):
    model = Qwen3ForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.tensor(PROMPT)).logits


def clean_logits(folder, tmp_path):
    code = f"""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(1)
model = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith('transformers_modules'), type(model).__module__
tok = AutoTokenizer.from_pretrained({str(folder)!r}, trust_remote_code=True)
assert type(tok).__name__ == 'Qwen3MultimodalTokenizer', type(tok)
with torch.no_grad():
    torch.save(model(torch.tensor({PROMPT})).logits, {str(tmp_path / "logits.pt")!r})
"""
    run_clean_python(code, cwd=tmp_path)
    return torch.load(tmp_path / "logits.pt")


def test_import_then_clean_process_load_gives_native_logits(native_folder, tmp_path, qwen3_tokenizer):
    dst = tmp_path / "ours"
    import_checkpoint(native_folder, dst, tokenizer=qwen3_tokenizer)
    config = json.loads((dst / "config.json").read_text())
    assert config["model_type"] == "qwen3_multimodal"
    assert {"AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText"} <= set(
        config["auto_map"]
    )
    assert all((dst / name).is_file() for name in HUB_FILES)
    provenance = json.loads((dst / "qwen3_multimodal_provenance.json").read_text())
    assert provenance["relation"] == "imported" and provenance["license"] == "apache-2.0"
    got = clean_logits(dst, tmp_path)
    expected = native_logits(native_folder)
    assert (got - expected).abs().max().item() <= 1e-6


def test_init_writes_shards_that_reload(tmp_path, qwen3_tokenizer):
    dst = tmp_path / "tiny"
    init_checkpoint(dst, "tiny", seed=3, tokenizer=qwen3_tokenizer, shard_bytes=8 * 1024**2)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    config = Qwen3MultimodalConfig(**preset_config("tiny"))
    assert set(index["weight_map"]) == set(expected_shapes(config))
    logits = clean_logits(dst, tmp_path)
    assert torch.isfinite(logits).all() and logits.std() > 0
    # the same seed gives the same weights
    init_checkpoint(tmp_path / "again", "tiny", seed=3, tokenizer=None, shard_bytes=8 * 1024**2)
    for name in set(index["weight_map"].values()):
        assert (dst / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_sharded_write_loads_like_the_single_file_and_as_save_pretrained_names_it(tmp_path):
    """Oracles: from_pretrained reads both writes to the same tensors, and transformers' own save_pretrained of
    that model at the same shard size writes the same file names and the same weight_map."""
    from transformers import AutoModelForCausalLM

    shard = 8 * 1024**2
    init_checkpoint(tmp_path / "one", "tiny", seed=5, shard_bytes=10 * 1024**3)
    init_checkpoint(tmp_path / "many", "tiny", seed=5, shard_bytes=shard)
    assert not (tmp_path / "one" / "model.safetensors.index.json").exists()
    one = AutoModelForCausalLM.from_pretrained(tmp_path / "one").state_dict()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "many")
    many = model.state_dict()
    assert one.keys() == many.keys()
    for key in one:
        assert torch.equal(one[key], many[key]), key
    model.save_pretrained(tmp_path / "theirs", max_shard_size=shard)
    ours = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    theirs = json.loads((tmp_path / "theirs" / "model.safetensors.index.json").read_text())
    assert len(set(ours["weight_map"].values())) > 1
    assert ours["weight_map"] == theirs["weight_map"]
    assert ours["metadata"]["total_size"] == theirs["metadata"]["total_size"]


@pytest.mark.parametrize(
    "preset, params",
    [("0.6b", 0.596e9), ("1.7b", 1.72e9), ("4b", 4.02e9), ("8b", 8.19e9)],
)
def test_presets_have_the_real_qwen3_sizes(preset, params):
    shapes = expected_shapes(Qwen3MultimodalConfig(**preset_config(preset)))
    total = sum(torch.Size(s).numel() for s in shapes.values())
    assert abs(total - params) / params < 0.01, f"{preset}: {total / 1e9:.3f} B parameters"


# ---- bad input -----------------------------------------------------------------------------------------------------


def copy_native(native_folder, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(native_folder, src)
    return src


def shards_of(folder):
    return sorted(Path(folder).glob("model-*.safetensors"))


def expect_error(src, dst, *needles):
    # FolderError: import's own checks (CheckpointError) and the shared folder validator's both derive from it
    with pytest.raises(FolderError) as info:
        import_checkpoint(src, dst)
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    assert not dst.exists() and not list(dst.parent.glob(f".{dst.name}.*")), "DST left half-written"


def test_import_rejects_non_qwen3(native_folder, tmp_path):
    src = copy_native(native_folder, tmp_path)
    config = json.loads((src / "config.json").read_text())
    config["model_type"] = "llama"
    (src / "config.json").write_text(json.dumps(config))
    expect_error(src, tmp_path / "dst", "config.json", "'llama'", "qwen3")


def test_import_rejects_missing_shard(native_folder, tmp_path):
    src = copy_native(native_folder, tmp_path)
    missing = shards_of(src)[-1]
    missing.unlink()
    expect_error(src, tmp_path / "dst", missing.name, "missing")


def test_import_rejects_wrong_shape(native_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    src = copy_native(native_folder, tmp_path)
    shard = next(s for s in shards_of(src) if any(k.endswith("q_proj.weight") for k in load_file(s)))
    tensors = load_file(shard)
    key = next(k for k in tensors if k.endswith("q_proj.weight"))
    tensors[key] = tensors[key][:-1]
    save_file(tensors, shard, metadata={"format": "pt"})
    expect_error(src, tmp_path / "dst", shard.name, key, "config implies")


def test_import_rejects_truncated_file(native_folder, tmp_path):
    src = copy_native(native_folder, tmp_path)
    shard = shards_of(src)[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    expect_error(src, tmp_path / "dst", shard.name, "truncated")


def test_existing_destination_needs_force(native_folder, tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    with pytest.raises(FileExistsError, match="--force"):
        import_checkpoint(native_folder, dst)


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from transformers_qwen3.cli import main

    code = main(["import", str(tmp_path / "nowhere"), str(tmp_path / "dst")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "config.json not found" in err


# ---- the folder check's written-out Qwen3 shapes vs transformers' own module ---------------------------------------


def native_text_shapes(config: Qwen3Config) -> dict:
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("preset", ["tiny", "0.6b", "1.7b", "4b", "8b"])
def test_text_shape_table_equals_qwen3_for_causal_lm_on_presets(preset):
    from transformers_qwen3.checkpoint.presets import text_config
    from transformers_qwen3.formats.validate import qwen3_text_shapes

    config = Qwen3Config(**text_config(preset))
    assert qwen3_text_shapes(config) == native_text_shapes(config)


@settings(max_examples=25, deadline=None)
@given(
    heads=st.integers(1, 8),
    kv_divisor=st.sampled_from([1, 2, 4, 8]),
    head_dim=st.one_of(st.none(), st.sampled_from([4, 8, 12])),
    layers=st.integers(1, 3),
    inter=st.integers(1, 40),
    vocab=st.integers(8, 300),
    bias=st.booleans(),
    tied=st.booleans(),
)
def test_text_shape_table_equals_qwen3_for_causal_lm_on_random_configs(
    heads, kv_divisor, head_dim, layers, inter, vocab, bias, tied
):
    from transformers_qwen3.formats.validate import qwen3_text_shapes

    kv = max(1, heads // kv_divisor)
    hidden = 8 * heads
    extra = {"head_dim": head_dim} if head_dim is not None else {}
    config = Qwen3Config(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab,
        attention_bias=bias,
        tie_word_embeddings=tied,
        **extra,
    )
    assert qwen3_text_shapes(config) == native_text_shapes(config)
