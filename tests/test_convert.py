"""GGUF conversion without running llama.cpp: equivalence with llama.cpp's own converter, metadata, determinism,
dry run, bad input. (tests/test_convert_llama.py runs the files in llama-cpp-python.)

Oracle: the convert_hf_to_gguf.py of the pinned llama-cpp-python sdist, run on native transformers checkpoints
(Qwen3ForCausalLM, Qwen3VLForConditionalGeneration, and our towers in Qwen3-Omni's layout). Equal means every
tensor's name, type, shape and bytes, and every metadata key except those docs/gguf.md lists as intentional
differences.
"""

from __future__ import annotations

import json
import shutil

import gguf
import pytest
import torch
from helpers.convert_fixtures import (
    checkpoint,
    metadata_differences,
    read_gguf,
    run_upstream,
    tensor_differences,
)
from transformers_qwen3.convert import ConversionError, convert_checkpoint
from transformers_qwen3.convert.tensor_map import AUDIO_TENSORS, TEXT_TENSORS, VISION_TENSORS

from transformers_qwen3.errors import UserError

torch.set_num_threads(1)

# Intentional metadata differences (docs/gguf.md): the name is ours as given (upstream title-cases a guess from the
# folder name); a vision-only mmproj names its projector per modality like a two-encoder one.
ALWAYS_DIFFERENT = {"general.name"}
VISION_ONLY_MMPROJ_DIFFERENT = {"clip.projector_type", "clip.vision.projector_type"}


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("convert")


def _assert_same(ours, theirs, ignore=frozenset()):
    kv_a, t_a = read_gguf(ours)
    kv_b, t_b = read_gguf(theirs)
    diffs = tensor_differences(t_a, t_b)
    assert not diffs, f"{ours.name} vs llama.cpp's converter, tensors: {diffs[:10]}"
    diffs = metadata_differences(kv_a, kv_b, ALWAYS_DIFFERENT | set(ignore))
    assert not diffs, f"{ours.name} vs llama.cpp's converter, metadata: {diffs}"
    return kv_a, t_a


# --- equivalence with llama.cpp's convert_hf_to_gguf.py -----------------------------------------------------------
# f16 always; the other types (each one more run of the upstream converter, ~30 s) in the slow suite
OUTTYPES = ["f16", *(pytest.param(t, marks=pytest.mark.slow) for t in ("f32", "bf16", "q8_0"))]


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_qwen3_text_matches_upstream(root, tmp_path, outtype):
    src = checkpoint(root, "qwen3")
    (ours,) = convert_checkpoint(src, tmp_path, outtype, progress=False)
    assert ours.name == f"qwen3-{outtype.upper()}.gguf"
    theirs = run_upstream(root, src, tmp_path / "upstream.gguf", outtype)
    kv, tensors = _assert_same(ours, theirs)
    assert kv["general.architecture"] == "qwen3"
    assert "output.weight" in tensors  # untied checkpoint


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_qwen3_vl_matches_upstream(root, tmp_path, outtype):
    src = checkpoint(root, "qwen3_vl")
    text, mmproj = convert_checkpoint(src, tmp_path, outtype, progress=False)
    assert (text.name, mmproj.name) == (f"qwen3_vl-{outtype.upper()}.gguf", f"mmproj-qwen3_vl-{outtype.upper()}.gguf")
    kv, _ = _assert_same(text, run_upstream(root, src, tmp_path / "up-text.gguf", outtype))
    assert kv["general.architecture"] == "qwen3vl"
    assert kv["qwen3vl.rope.dimension_sections"] == [2, 3, 3, 0]
    assert kv["qwen3vl.n_deepstack_layers"] == 2
    up_mmproj = run_upstream(root, src, tmp_path / "up-mmproj.gguf", outtype, mmproj=True)
    kv, tensors = _assert_same(mmproj, up_mmproj, ignore=VISION_ONLY_MMPROJ_DIFFERENT)
    assert kv["clip.vision.projector_type"] == "qwen3vl_merger" and "clip.projector_type" not in kv
    assert read_gguf(up_mmproj)[0]["clip.projector_type"] == "qwen3vl_merger"
    assert {"v.patch_embd.weight", "v.patch_embd.weight.1", "v.deepstack.0.fc1.weight"} <= set(tensors)


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_vision_audio_mmproj_matches_upstream_omni(root, tmp_path, outtype):
    """One mmproj, both towers: llama.cpp's converter writes that only for Qwen3-Omni, so it gets our towers'
    weights in Omni's layout; the files must agree on everything but the name."""
    (mmproj,) = [
        p
        for p in convert_checkpoint(checkpoint(root, "mm"), tmp_path, outtype, progress=False)
        if p.name.startswith("mmproj-")
    ]
    theirs = run_upstream(root, checkpoint(root, "mm_omni"), tmp_path / "up-mmproj.gguf", outtype, mmproj=True)
    kv, tensors = _assert_same(mmproj, theirs)
    assert kv["clip.has_vision_encoder"] and kv["clip.has_audio_encoder"]
    assert (kv["clip.vision.projector_type"], kv["clip.audio.projector_type"]) == ("qwen3vl_merger", "qwen3a")
    assert "clip.projector_type" not in kv
    assert tensors["a.position_embd.weight"][0] == "F32" and tensors["a.conv2d.1.bias"][1] == (1, 1, 16)


# --- metadata of our own layout -----------------------------------------------------------------------------------
def test_multimodal_text_metadata(root, tmp_path):
    text, mmproj = convert_checkpoint(checkpoint(root, "mm"), tmp_path, "f32", progress=False)
    kv, tensors = read_gguf(text)
    assert kv["general.architecture"] == "qwen3vl"
    assert kv["qwen3vl.rope.dimension_sections"] == [6, 5, 5, 0]
    assert kv["qwen3vl.n_deepstack_layers"] == 1
    assert kv["qwen3vl.embedding_length"] == 64 and kv["qwen3vl.attention.key_length"] == 32
    assert (kv["tokenizer.ggml.model"], kv["tokenizer.ggml.pre"]) == ("gpt2", "qwen2")
    assert kv["tokenizer.ggml.eos_token_id"] == 151645 and kv["tokenizer.ggml.padding_token_id"] == 151643
    assert kv["tokenizer.ggml.add_bos_token"] is False
    assert len(kv["tokenizer.ggml.tokens"]) == 151936 and kv["tokenizer.ggml.tokens"][151675] == "<|audio_pad|>"
    assert kv["tokenizer.ggml.token_type"][151675] == gguf.TokenType.CONTROL
    assert kv["tokenizer.ggml.token_type"][151667] == gguf.TokenType.USER_DEFINED  # <think>
    assert kv["tokenizer.ggml.token_type"][151700] == gguf.TokenType.UNUSED
    assert "<|im_start|>" in kv["tokenizer.chat_template"]
    assert "output.weight" not in tensors  # tied
    assert all(t[0] == "F32" for t in tensors.values())


def test_text_only_layout_gives_qwen3_arch(root, tmp_path):
    from transformers_qwen3.checkpoint.build import init_checkpoint
    from transformers_qwen3.checkpoint.tokenizer import build_qwen3_tokenizer

    src = tmp_path / "tiny"
    init_checkpoint(src, "tiny", tokenizer=build_qwen3_tokenizer())
    paths = convert_checkpoint(src, tmp_path / "out", "f16", progress=False)
    assert [p.name for p in paths] == ["tiny-F16.gguf"]
    kv, _ = read_gguf(paths[0])
    assert kv["general.architecture"] == "qwen3" and "qwen3.rope.dimension_sections" not in kv


def test_tables_cover_every_tensor(root):
    """Every tensor of every test checkpoint has exactly one rule (the tables hold no dead or shadowed lines)."""
    from transformers_qwen3.convert.tensor_map import match

    from transformers_qwen3.formats.folder import open_checkpoint

    used = set()
    for name in ("qwen3", "qwen3_vl", "mm"):
        for key in open_checkpoint(checkpoint(root, name)).tensors:
            hits = [
                (tid, m) for tid, t in enumerate((TEXT_TENSORS, VISION_TENSORS, AUDIO_TENSORS)) if (m := match(t, key))
            ]
            assert len(hits) == 1, f"{key}: {hits}"
            used.add(hits[0][1].rule.gguf)
    rules = {r.gguf for t in (TEXT_TENSORS, VISION_TENSORS, AUDIO_TENSORS) for r in t.values()}
    assert rules == used, f"rules never used: {rules - used}"


# gguf-py's TensorNameMap has no entry for Qwen3-VL's patch merger: llama.cpp's convert_hf_to_gguf.py (class
# Qwen3VLVisionModel) writes these MODEL_TENSOR names in code. (HF base name, gguf-py tensor, its block index)
MERGER_NAMES_UPSTREAM_WRITES_IN_CODE = {
    "model.visual.merger.norm": (gguf.MODEL_TENSOR.V_POST_NORM, None),
    "model.visual.merger.linear_fc1": (gguf.MODEL_TENSOR.V_MMPROJ, 0),
    "model.visual.merger.linear_fc2": (gguf.MODEL_TENSOR.V_MMPROJ, 2),
}


def _ours(table, hf_base: str, bid: int) -> str:
    """The GGUF name our table gives ``hf_base`` at block ``bid`` (deepstack mergers keyed by list position, as
    gguf-py's table keys them; the converter renumbers them afterwards, see tensor_map.gguf_base_name)."""
    from transformers_qwen3.convert.tensor_map import match

    m = match(table, hf_base.format(bid=bid) + ".weight")
    return m.rule.gguf.format(bid=bid) + ".weight"


@pytest.mark.parametrize("arch", [gguf.MODEL_ARCH.QWEN3, gguf.MODEL_ARCH.QWEN3VL])
@pytest.mark.parametrize("hf_base", list(TEXT_TENSORS))
def test_text_names_are_the_names_gguf_py_maps_to(arch, hf_base):
    """Oracle: gguf-py's own HF → GGUF table for llama.cpp's qwen3 / qwen3vl architectures."""
    n_blocks = 4
    upstream = gguf.get_tensor_name_map(arch, n_blocks)
    for bid in (0, n_blocks - 1):
        hf = hf_base.format(bid=bid) + ".weight"
        assert _ours(TEXT_TENSORS, hf_base, bid) == upstream.get_name(hf, try_suffixes=(".weight", ".bias")), hf


@pytest.mark.parametrize("table, hf_base", [(t, k) for t in (VISION_TENSORS, AUDIO_TENSORS) for k in t])
def test_mmproj_names_are_the_names_gguf_py_maps_to(table, hf_base):
    """Oracle: gguf-py's mmproj table (MODEL_ARCH.MMPROJ), which knows the towers under the prefixes the released
    checkpoints use (Qwen3-VL's ``visual.`` / ``model.visual.``, Qwen3-Omni's ``audio_tower.``); the three merger
    tensors it lacks are checked against the MODEL_TENSOR names upstream's converter writes for them."""
    upstream = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, 64)
    for bid in (0, 2):
        ours = _ours(table, hf_base, bid)
        hf = hf_base.format(bid=bid)
        if hf_base in MERGER_NAMES_UPSTREAM_WRITES_IN_CODE:
            tensor, index = MERGER_NAMES_UPSTREAM_WRITES_IN_CODE[hf_base]
            assert all(upstream.get_name(c) is None for c in (hf, hf.removeprefix("model."))), "gguf-py maps it now"
            assert ours == gguf.TENSOR_NAMES[tensor].format(bid=index) + ".weight"
            continue
        names = {upstream.get_name(c) for c in (hf, hf.removeprefix("model."))} - {None}
        assert names == {ours.removesuffix(".weight")}, f"{hf}: ours {ours}, gguf-py {names or 'no entry'}"


# --- determinism, dry run, naming ---------------------------------------------------------------------------------
def test_conversion_is_deterministic_and_idempotent(root, tmp_path):
    src = checkpoint(root, "mm")
    first = convert_checkpoint(src, tmp_path / "a", "q8_0", progress=False)
    second = convert_checkpoint(src, tmp_path / "b", "q8_0", progress=False)
    again = convert_checkpoint(src, tmp_path / "a", "q8_0", force=True, progress=False)
    for a, b, c in zip(first, second, again, strict=True):
        assert a.read_bytes() == b.read_bytes() == c.read_bytes(), a.name
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["mm-Q8_0.gguf", "mmproj-mm-Q8_0.gguf"]


def test_dry_run_lists_every_tensor_and_writes_nothing(root, tmp_path, capsys):
    out = tmp_path / "never-created"
    paths = convert_checkpoint(checkpoint(root, "mm"), out, "q8_0", name="demo", dry_run=True)
    assert [p.name for p in paths] == ["demo-Q8_0.gguf", "mmproj-demo-Q8_0.gguf"]
    assert not out.exists()
    printed = capsys.readouterr().out
    real = convert_checkpoint(checkpoint(root, "mm"), tmp_path / "real", "q8_0", name="demo", progress=False)
    for path in real:
        _, tensors = read_gguf(path)
        for name, (qtype, shape, data) in tensors.items():
            line = next(line for line in printed.splitlines() if line.split()[:1] == [name])
            ggml_shape = "{" + ", ".join(map(str, shape)) + "}"
            assert qtype in line and ggml_shape in line and f"{len(data):,}" in line, line
        total = sum(len(t[2]) for t in tensors.values())
        assert f"total: {len(tensors)} tensors" in printed and f"{total:,} bytes" in printed


def test_name_option_and_k_quant_dry_run(root, tmp_path, capsys):
    paths = convert_checkpoint(checkpoint(root, "mm"), tmp_path, "q4_k_m", name="x", dry_run=True)
    assert [p.name for p in paths] == ["x-Q4_K_M.gguf", "mmproj-x-Q8_0.gguf"]
    assert "llama.cpp's quantizer" in capsys.readouterr().out


# --- bad input: one clear error, nothing left behind -------------------------------------------------------------
def _edit_config(folder, edit):
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def _drop_tensor(folder, name):
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    del tensors[name]
    save_file(tensors, path, metadata={"format": "pt"})


BAD_INPUTS = {
    "vision tower variant": (
        lambda f: _edit_config(f, lambda c: c["vision_config"].update(model_type="qwen2_5_vl_vision")),
        "tower variant",
    ),
    "audio tower variant": (
        lambda f: _edit_config(f, lambda c: c["audio_config"].update(model_type="qwen2_audio_encoder")),
        "tower variant",
    ),
    "architecture": (lambda f: _edit_config(f, lambda c: c.update(model_type="llama")), "supported model_type"),
    "missing tensor": (lambda f: _drop_tensor(f, "model.layers.1.mlp.up_proj.weight"), "missing tensors"),
    "missing tower tensor": (lambda f: _drop_tensor(f, "model.audio_tower.proj2.bias"), "missing tensors"),
    "inconsistent dims": (
        lambda f: _edit_config(f, lambda c: c["text_config"].update(intermediate_size=96)),
        "inconsistent with config",
    ),
    "tower without config": (lambda f: _edit_config(f, lambda c: c.update(audio_config=None)), "does not account"),
    "audio window": (lambda f: _edit_config(f, lambda c: c["audio_config"].update(n_window=100)), "n_window"),
    "sliding window": (
        lambda f: _edit_config(f, lambda c: c["text_config"].update(use_sliding_window=True, sliding_window=64)),
        "sliding",
    ),
    "no M-RoPE": (
        lambda f: _edit_config(
            f, lambda c: c["text_config"].update(rope_parameters={"rope_type": "default", "rope_theta": 1e4})
        ),
        "mrope_section",
    ),
    "no tokenizer": (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_clear_error(root, tmp_path, case):
    src = tmp_path / "src"
    shutil.copytree(checkpoint(root, "mm"), src)
    damage, message = BAD_INPUTS[case]
    damage(src)
    out = tmp_path / "out"
    # a broken folder is the folder check's error, a checkpoint llama.cpp cannot run the converter's: both are the
    # one-line kind the CLI prints
    with pytest.raises(UserError, match=message):
        convert_checkpoint(src, out, "f16", progress=False)
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_outdir(root, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConversionError, match="OUTDIR .* not a folder"):
        convert_checkpoint(checkpoint(root, "qwen3"), blocker, "f16", progress=False)
    with pytest.raises(ConversionError, match="OUTDIR .*cannot create"):
        convert_checkpoint(checkpoint(root, "qwen3"), blocker / "sub", "f16", progress=False)
    with pytest.raises(ConversionError, match="OUTDIR"):
        convert_checkpoint(checkpoint(root, "qwen3"), "/proc/transformers-qwen3-out", "f16", progress=False)


def test_existing_output_needs_force(root, tmp_path):
    src = checkpoint(root, "qwen3")
    (path,) = convert_checkpoint(src, tmp_path, "q8_0", progress=False)
    path.write_bytes(b"old")
    with pytest.raises(ConversionError, match="--force"):
        convert_checkpoint(src, tmp_path, "q8_0", progress=False)
    assert path.read_bytes() == b"old"
    convert_checkpoint(src, tmp_path, "q8_0", force=True, progress=False)
    assert path.read_bytes()[:4] == b"GGUF"


def test_failure_mid_write_leaves_nothing(root, tmp_path, monkeypatch):
    """A crash while streaming the second file removes the finished first one too (all files publish together)."""
    from transformers_qwen3.convert import plan as plan_module

    real = plan_module.materialize

    def failing(ckpt, item, cache):
        if item.name.startswith("v.blk.1"):
            raise OSError("disk full (simulated)")
        return real(ckpt, item, cache)

    monkeypatch.setattr("transformers_qwen3.convert.writer.materialize", failing)
    with pytest.raises(OSError, match="simulated"):
        convert_checkpoint(checkpoint(root, "mm"), tmp_path, "f16", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_convert_dry_run_and_error(root, tmp_path, capsys):
    from transformers_qwen3.cli import main

    assert main(["convert", str(checkpoint(root, "qwen3")), str(tmp_path), "--outtype", "Q8_0", "--dry-run"]) == 0
    assert "token_embd.weight" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "nope"), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a folder" in err


# --- reading GGUF files back (formats.gguf_file) ------------------------------------------------------------------
def test_gguf_reader_reads_what_gguf_py_wrote_and_refuses_damaged_files(tmp_path):
    """Oracle: the types, architecture and file type handed to gguf-py's writer; damaged copies are one
    GGUFFileError (a UserError) naming the file, not numpy's or struct's error."""
    import numpy as np

    from transformers_qwen3.formats.errors import GGUFFileError
    from transformers_qwen3.formats.gguf_file import architecture, file_type_name, read_gguf, tensor_types

    path = tmp_path / "t.gguf"
    writer = gguf.GGUFWriter(path, "qwen3")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tensor("a.weight", np.ones((4, 32), dtype=np.float32))
    writer.add_tensor("b.weight", np.ones((2, 32), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert tensor_types(path) == {"a.weight": "F32", "b.weight": "F16"}
    reader = read_gguf(path)
    assert architecture(reader) == "qwen3" and file_type_name(reader) == "Q8_0"

    data = path.read_bytes()
    (tmp_path / "short.gguf").write_bytes(data[:40])
    (tmp_path / "other.gguf").write_bytes(b"PK\x03\x04" + data[4:])
    for name, message in (
        ("short.gguf", "truncated or corrupt"),
        ("other.gguf", "not a GGUF file"),
        ("no.gguf", "cannot read"),
    ):
        with pytest.raises(GGUFFileError, match=message) as err:
            read_gguf(tmp_path / name)
        assert name in str(err.value) and isinstance(err.value, UserError)
