"""peft LoRA adapters → GGUF LoRA adapters (convert/lora.py) that llama.cpp applies.

- Adapted logits: tiny native Qwen3ForCausalLM (arch qwen3), native Qwen3-VL and our multimodal layout (arch
  qwen3vl), text prompts; peft adapters
  with a random non-zero B. The base goes to an F32 GGUF, the adapter to an F32 GGUF LoRA; llama.cpp (F32 KV cache,
  lora_scale 1) vs transformers' adapted model on a fixed prompt: relative error (Frobenius norm over every
  position's logits) ≤ 1e-4. Control: the adapter moves transformers' logits at least 100x that limit, so a
  converter that dropped or mis-scaled the factors could not pass.
- Equivalence with upstream: the same adapter converted by the sdist's convert_lora_to_gguf.py (native Qwen3 base)
  gives the same tensor names, types, shapes and bytes, and the same adapter metadata. Intentional difference
  (docs/gguf.md): rsLoRA / alpha_pattern scales are folded into lora_b here; upstream ignores them.
- Errors: tower-targeting and other unrepresentable adapters, a wrong base, an existing output without --force.
Measured numbers are printed (pytest -s shows them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.convert_fixtures import (
    _upstream_values,
    checkpoint,
    metadata_differences,
    read_gguf,
    tensor_differences,
    upstream_converter,
)
from transformers_qwen3.convert import ConversionError, convert_checkpoint
from transformers_qwen3.convert import cli as convert_cli
from transformers_qwen3.convert.lora import convert_lora

from transformers_qwen3.runtime.verify import load_transformers_model

llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (make llama-cpp)")
torch.set_num_threads(1)

MAX_REL_ERR = 1e-4  # F32 GGUF + F32 LoRA + F32 KV cache (the base alone reproduces transformers to ~1e-6)
MIN_EFFECT = 100 * MAX_REL_ERR  # base vs adapted logits, relative: the adapter must visibly matter
# a fixed prompt (token ids of the real Qwen3 vocabulary: plain text, digits, a chat-template special token)
PROMPT = [785, 3974, 13876, 38835, 34208, 916, 279, 15678, 5562, 13, 758, 220, 16, 24, 15, 20, 11, 151644, 872, 198]


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("convert-lora")


def base_gguf(root: Path, name: str) -> Path:
    """The F32 text GGUF of fixture `name`, converted once per session."""
    path = root / "gguf" / f"{name}-F32.gguf"
    if not path.is_file():
        convert_checkpoint(checkpoint(root, name), root / "gguf", "f32", progress=False)
    return path


def make_adapter(base: Path, out: Path, config, seed: int = 0):
    """peft-wrap the base model with `config`, save the adapter to `out`; returns the PeftModel (eval)."""
    from transformers_qwen3.training.lora import apply_lora

    model = load_transformers_model(base)
    torch.manual_seed(seed)
    peft_model = apply_lora(model, config).eval()
    peft_model.save_pretrained(out)
    return peft_model


def transformers_logits(model, ids=PROMPT) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def llama_logits(model_path: Path, lora_path: Path | None, ids=PROMPT) -> np.ndarray:
    llm = llama_cpp.Llama(
        model_path=str(model_path),
        lora_path=str(lora_path) if lora_path else None,
        lora_scale=1.0,
        n_ctx=64,
        n_batch=64,
        n_ubatch=64,
        logits_all=True,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        n_threads=2,
        n_threads_batch=2,
        verbose=False,
    )
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --- adapted logits: llama.cpp with the converted adapter vs transformers' adapted model ---------------------------
def _qv(**kw):
    from transformers_qwen3.training.lora import lora_config

    return lora_config(rank=8, alpha=16, init_lora_weights=False, **kw)  # the default targets: decoder q/v


def _everything(**kw):
    from peft import LoraConfig

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head"]
    return LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False, **kw)


LOGIT_CASES = {
    # name: (fixture, GGUF arch, LoRA config factory)
    "qwen3-qv": ("qwen3", "qwen3", _qv),
    "mm-qv-mlp": ("mm", "qwen3vl", lambda: _qv(include_mlp=True)),
    # native Qwen3-VL: the decoder sits under model.language_model. (no tower has q_proj / v_proj there)
    "qwen3_vl-qv": ("qwen3_vl", "qwen3vl", lambda: _peft(target_modules=["q_proj", "v_proj"], r=8, lora_alpha=16)()),
    # every decoder Linear + embedding + head (untied base), rsLoRA, per-module rank and alpha
    "qwen3-all-rslora-patterns": (
        "qwen3",
        "qwen3",
        lambda: _everything(use_rslora=True, rank_pattern={"o_proj": 4}, alpha_pattern={"v_proj": 32}),
    ),
}


@pytest.mark.parametrize("case", list(LOGIT_CASES))
def test_adapted_logits_match_transformers(root, tmp_path, case):
    fixture, arch, make_config = LOGIT_CASES[case]
    base = checkpoint(root, fixture)
    peft_model = make_adapter(base, tmp_path / "adapter", make_config())
    adapted = transformers_logits(peft_model)
    with peft_model.disable_adapter():
        plain = transformers_logits(peft_model)
    del peft_model

    (lora,) = convert_lora(tmp_path / "adapter", tmp_path, "f32", base=base, progress=False)
    assert lora.name == "adapter-lora-F32.gguf"
    kv, tensors = read_gguf(lora)
    assert kv["general.architecture"] == arch and kv["general.type"] == "adapter" and kv["adapter.type"] == "lora"

    text = base_gguf(root, fixture)
    got = llama_logits(text, lora)
    err, effect = rel(got, adapted), rel(adapted, plain)
    base_err = rel(llama_logits(text, None), plain)
    print(
        f"\n{case}: {len(tensors) // 2} LoRA pairs, llama.cpp+LoRA vs transformers+LoRA relative error {err:.2e} "
        f"(limit {MAX_REL_ERR:.0e}); base alone {base_err:.2e}; the adapter moves the logits by {effect:.2e}"
    )
    assert err <= MAX_REL_ERR, f"{case}: relative error {err:.2e} > {MAX_REL_ERR:.0e}"
    assert effect >= MIN_EFFECT, f"{case}: the adapter changes the logits by only {effect:.2e}"
    assert np.array_equal(got.argmax(-1), adapted.argmax(-1))


def test_base_defaults_to_the_adapters_recorded_base(root, tmp_path, capsys):
    base = checkpoint(root, "qwen3")
    make_adapter(base, tmp_path / "adapter", _qv())
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    (lora,) = convert_lora(tmp_path / "adapter", tmp_path / "out", "f16", name="mine", progress=False)
    assert lora == tmp_path / "out" / "mine-lora-F16.gguf"
    _, tensors = read_gguf(lora)
    assert set(tensors) == {f"blk.{i}.attn_{p}.weight.lora_{f}" for i in (0, 1) for p in "qv" for f in "ab"}
    convert_lora(tmp_path / "adapter", tmp_path / "dry", "q8_0", dry_run=True)
    printed = capsys.readouterr().out
    assert "blk.1.attn_v.weight.lora_b" in printed and "total: 8 tensors" in printed, printed
    assert not (tmp_path / "dry").exists()


def test_bin_adapter_converts_like_safetensors(root, tmp_path):
    """Older peft writes adapter_model.bin: the same GGUF comes out."""
    base = checkpoint(root, "qwen3")
    peft_model = make_adapter(base, tmp_path / "st", _qv())
    peft_model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "adapter_model.bin").is_file()
    a = convert_lora(tmp_path / "st", tmp_path / "out", "q8_0", base=base, name="x", progress=False)[0].read_bytes()
    b = convert_lora(tmp_path / "bin", tmp_path / "out", "q8_0", base=base, name="x", force=True, progress=False)
    assert b[0].read_bytes() == a


# --- equivalence with llama.cpp's convert_lora_to_gguf.py ------------------------------------------------------------
# Intentional metadata differences (docs/gguf.md). Upstream fills model-card keys from the README peft writes into
# the adapter folder (general.base_model.*, general.tags: a local base path becomes a huggingface.co URL) and titles a
# name guessed from the folder; ours names the file as given and writes no model card. Ours writes general.file_type
# (as for model files); upstream's adapter path leaves it out. llama.cpp's adapter loader reads none of these.
UPSTREAM_IGNORED = {"general.name", "general.tags", "general.file_type", "general.size_label", "general.basename"}


def _essential(kv: dict) -> dict:
    return {k: v for k, v in kv.items() if not k.startswith("general.base_model.")}


def upstream_lora_converter(root: Path) -> Path:
    """convert_lora_to_gguf.py from the same pinned sdist, next to the extracted convert_hf_to_gguf.py."""
    dest = upstream_converter(root)
    script = dest / "convert_lora_to_gguf.py"
    if not script.is_file():
        up = _upstream_values()
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "transformers-qwen3" / "sdist"
        sdist = cache / up["LLAMA_CPP_PYTHON_SDIST"]
        member = sdist.name.removesuffix(".tar.gz") + "/vendor/llama.cpp/convert_lora_to_gguf.py"
        with tarfile.open(sdist) as tar:
            data = tar.extractfile(member).read()
        script.with_suffix(".partial").write_bytes(data)
        script.with_suffix(".partial").rename(script)
    return script


def run_upstream_lora(root: Path, adapter: Path, base: Path, outfile: Path, outtype: str) -> Path:
    script = upstream_lora_converter(root)
    cmd = [
        sys.executable,
        str(script),
        str(adapter),
        "--base",
        str(base),
        "--outtype",
        outtype,
        "--outfile",
        str(outfile),
    ]
    env = {**os.environ, "PYTHONPATH": str(script.parent / "gguf-py"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=script.parent, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"upstream convert_lora_to_gguf.py failed:\n{proc.stderr[-3000:]}"
    return outfile


@pytest.fixture(scope="module")
def everything_adapter(root):
    """Every decoder Linear + embed_tokens + lm_head on the native Qwen3 base (plain alpha / r scaling)."""
    folder = root / "adapter-everything"
    if not folder.is_dir():
        make_adapter(checkpoint(root, "qwen3"), folder, _everything())
    return folder


@pytest.mark.parametrize(
    "outtype", ["f32", "q8_0", *(pytest.param(t, marks=pytest.mark.slow) for t in ("f16", "bf16"))]
)
def test_matches_upstream_convert_lora_to_gguf(root, tmp_path, everything_adapter, outtype):
    base = checkpoint(root, "qwen3")
    (ours,) = convert_lora(everything_adapter, tmp_path, outtype, base=base, progress=False)
    theirs = run_upstream_lora(root, everything_adapter, base, tmp_path / "upstream.gguf", outtype)
    kv_a, t_a = read_gguf(ours)
    kv_b, t_b = read_gguf(theirs)
    diffs = tensor_differences(t_a, t_b)
    assert not diffs, f"{ours.name} vs convert_lora_to_gguf.py, tensors: {diffs[:10]}"
    diffs = metadata_differences(_essential(kv_a), _essential(kv_b), UPSTREAM_IGNORED)
    assert not diffs, f"{ours.name} vs convert_lora_to_gguf.py, metadata: {diffs}"
    types = sorted({t for t, _, _ in t_a.values()})
    same = {k: kv_a[k] for k in ("general.architecture", "general.type", "adapter.type", "adapter.lora.alpha")}
    print(f"\n{outtype}: {len(t_a)} tensors identical to upstream's (types {types}); same {same}")
    assert same == {k: kv_b[k] for k in same}
    assert "token_embd.weight.lora_a" in t_a and "output.weight.lora_b" in t_a


def test_rslora_and_alpha_pattern_fold_into_lora_b(root, tmp_path):
    """The one intentional difference: peft's scale (alpha / sqrt(r), per-module alpha) lands in lora_b."""
    base = checkpoint(root, "qwen3")
    make_adapter(base, tmp_path / "plain", _qv(), seed=1)
    make_adapter(base, tmp_path / "rs", _qv(use_rslora=True, alpha_pattern={"v_proj": 32}), seed=1)
    _, plain = read_gguf(convert_lora(tmp_path / "plain", tmp_path, "f32", base=base, progress=False)[0])
    _, rs = read_gguf(convert_lora(tmp_path / "rs", tmp_path, "f32", base=base, progress=False)[0])

    def arr(t):
        return np.frombuffer(t[2], dtype=np.float32)

    r = 8
    for name in plain:
        ratio = 1.0
        if name.endswith("lora_b"):  # llama.cpp applies 16 / r; peft: alpha / sqrt(r), alpha 32 on v_proj
            ratio = (32 if "attn_v" in name else 16) / np.sqrt(r) / (16 / r)
        np.testing.assert_allclose(arr(rs[name]), arr(plain[name]) * ratio, rtol=1e-6, err_msg=name)


# --- errors: one clear message, nothing written ----------------------------------------------------------------------
def _tower(group):
    return lambda: _qv(**{f"include_{group}": True})


def _peft(**kw):
    from peft import LoraConfig

    return lambda: LoraConfig(**{"r": 4, "lora_alpha": 8, "init_lora_weights": False, **kw})


REFUSED = {
    # name: (fixture, LoRA config factory, what the message must name)
    "vision-tower": ("mm", _tower("vision"), ["vision/audio towers", "model.visual.blocks.N.attn.qkv", "--merge"]),
    "audio-tower": ("mm", _tower("audio"), ["model.audio_tower.layers.N.self_attn.q_proj", "--merge"]),
    "projectors": ("mm", _tower("projectors"), ["model.visual.merger.linear_fc1", "merge_to_hub_folder"]),
    "dora": (
        "qwen3",
        _peft(target_modules=["q_proj"], use_dora=True),
        ["use_dora=True (DoRA", "lora_magnitude_vector"],
    ),
    "modules-to-save": ("qwen3", _peft(target_modules=["q_proj"], modules_to_save=["lm_head"]), ["modules_to_save"]),
    "bias": ("qwen3", _peft(target_modules=["q_proj"], bias="all"), ["bias='all' (trained biases)"]),
    "tied-embedding": ("mm", _peft(target_modules=["embed_tokens"]), ["tied embeddings", "model.embed_tokens"]),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unrepresentable_adapters_are_refused(root, tmp_path, case):
    fixture, make_config, needles = REFUSED[case]
    base = checkpoint(root, fixture)
    make_adapter(base, tmp_path / "adapter", make_config())
    with pytest.raises(ConversionError) as e:
        convert_lora(tmp_path / "adapter", tmp_path / "out", "f32", base=base, progress=False)
    msg = str(e.value)
    print(f"\n{case}: {msg}")
    assert all(n in msg for n in needles), msg
    assert not (tmp_path / "out").exists()


def test_a_changed_embedding_copy_is_refused(root, tmp_path, everything_adapter):
    """peft saves an adapted embedding / head whole (save_embedding_layers); equal to the base it is skipped (the
    equivalence test above), changed (e.g. a resized or retrained vocabulary) it is refused."""
    from safetensors.torch import load_file, save_file

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_bytes((everything_adapter / "adapter_config.json").read_bytes())
    state = load_file(everything_adapter / "adapter_model.safetensors")
    key = "base_model.model.model.embed_tokens.base_layer.weight"
    state[key] = state[key].clone()
    state[key][7] += 1.0
    save_file(state, adapter / "adapter_model.safetensors")
    with pytest.raises(ConversionError, match=r"not LoRA factors \(model\.embed_tokens\.base_layer\.weight\)"):
        convert_lora(adapter, tmp_path / "out", "f32", base=checkpoint(root, "qwen3"), progress=False)


def test_wrong_base_is_named(root, tmp_path):
    make_adapter(checkpoint(root, "mm"), tmp_path / "adapter", _qv())  # head_dim 32: q_proj is [128, 64]
    with pytest.raises(ConversionError, match="does not fit the base model .*q_proj.*--base") as e:
        convert_lora(tmp_path / "adapter", tmp_path / "out", "f32", base=checkpoint(root, "qwen3"), progress=False)
    print(f"\n{e.value}")


def test_existing_output_needs_force_and_nothing_partial_is_left(root, tmp_path):
    base = checkpoint(root, "qwen3")
    make_adapter(base, tmp_path / "adapter", _qv())
    parser = argparse.ArgumentParser()
    convert_cli.add_arguments(parser)
    argv = [
        str(tmp_path / "adapter"),
        str(tmp_path / "out"),
        "--outtype",
        "q8_0",
        "--base",
        str(base),
        "--no-progress",
    ]
    assert convert_cli.run(parser.parse_args(argv)) == 0
    out = tmp_path / "out" / "adapter-lora-Q8_0.gguf"
    before = out.read_bytes()
    with pytest.raises(ConversionError, match="already exists; pass --force"):
        convert_cli.run(parser.parse_args(argv))
    assert convert_cli.run(parser.parse_args([*argv, "--force"])) == 0
    assert out.read_bytes() == before  # deterministic
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [out.name]  # no temporary files
    with pytest.raises(ConversionError, match="choose one of f32, f16, bf16, q8_0"):
        convert_cli.run(parser.parse_args([*argv[:2], "--outtype", "q4_k_m", "--base", str(base)]))
    with pytest.raises(ConversionError, match="--base applies to LoRA adapter folders"):
        convert_cli.run(parser.parse_args([str(base), str(tmp_path / "x"), "--base", str(base)]))
