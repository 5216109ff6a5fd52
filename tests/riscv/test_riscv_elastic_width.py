"""Elastic FFN width (ggml_patches/0004, llama.cpp's ``--ffn-width``) in the RVV build under qemu: one GGUF computed
with the first w neurons of every FFN, through ggml views of ffn_gate/ffn_up's leading rows and ffn_down's leading
columns. tests/test_elastic_width.py is the x86 half (including the GGUF converted from the sliced checkpoint as the
oracle of the quantized types); here the same files run under qemu and must give what x86 gives.

- F32, the tiny qwen3 (FFN 128) at width 64: the last position's logits (``llama-debug --save-logits``) match
  transformers' Qwen3ForCausalLM with every MLP cut to its first 64 neurons, and x86 llama.cpp at width 64
  (relative error ≤ 1e-4 each).
- Q4_0 and Q4_K_M (ffn_down forced to Q4_K) of qwen3_kq (hidden 256, FFN 512) at width 256: the RVV run of the full
  GGUF at width 256 matches the RVV run of the GGUF converted from the checkpoint cut to 256 (the same quantization
  blocks, the same kernels: relative error ≤ 1e-5), and x86 llama.cpp at width 256 within a tenth of the
  quantization error (x86 at width 256 against the F32 GGUF at width 256; random-weight models amplify the platforms'
  rounding differences: RVV and x86 differ by ~1.5e-2 relative at full width too, measured), with the same top
  token. At VLEN 256 ggml's RVV "repack" buffer (16x1 interleaved rows) holds the Q4_0 / Q4_K weights: the buffer
  whose kernels stepped by the view's row length instead of the stored one (the trap 0004 fixes in
  forward_mul_mat_one_chunk); at VLEN 128 the plain vec_dot kernels run (ggml has no RVV repack at 128).
- Each check can fail: full width differs from width w by far more than its tolerance (asserted on x86), so a run
  that ignored ``--ffn-width`` or read the wrong bytes through a view would not match.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from helpers.convert_fixtures import checkpoint
from riscv_tools import final_logits

PROMPT = "The quick brown fox jumps over the lazy dog because"


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    """(fixture name, outtype, tensor_types, width) -> (checkpoint folder, text GGUF), converted once; a width cuts
    the checkpoint's FFNs first (helpers.elastic_width.sliced_checkpoint)."""
    from helpers.elastic_width import sliced_checkpoint
    from transformers_qwen3.convert import convert_checkpoint

    root = tmp_path_factory.mktemp("riscv-elastic")
    done = {}

    def get(name: str, outtype: str, tensor_types: dict[str, str] | None = None, width: int | None = None):
        key = (name, outtype, tuple(sorted((tensor_types or {}).items())), width)
        if key not in done:
            src = checkpoint(root, name)
            if width is not None:
                src = sliced_checkpoint(src, root / f"{name}-w{width}", width)
            out = root / f"{src.name}-{outtype}{'-tt' if tensor_types else ''}"
            shutil.rmtree(out, ignore_errors=True)
            convert_checkpoint(src, out, outtype, progress=False, tensor_types=tensor_types)
            (text,) = [p for p in out.glob("*.gguf") if "mmproj" not in p.name]
            done[key] = src, text
        return done[key]

    return get


def x86_last(gguf, tokens, width=None) -> np.ndarray:
    from transformers_qwen3.runtime.llama_cpp import prompt_logits

    return prompt_logits(gguf, [tokens], n_threads=2, ffn_width=width)[0][-1]


def test_f32_at_width_matches_transformers_and_x86(rvv_bin, ggufs, tmp_path):
    import torch
    from helpers.elastic_width import narrow_mlps
    from transformers import Qwen3ForCausalLM

    width = 64
    src, gguf = ggufs("qwen3", "f32")  # intermediate_size 128
    got, tokens = final_logits(rvv_bin, gguf, tmp_path, PROMPT, "--ffn-width", width, vlen=128)
    model = Qwen3ForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    n_layers = model.config.num_hidden_layers
    with torch.no_grad():
        ref = narrow_mlps(model, [width] * n_layers)(torch.tensor([tokens])).logits[0, -1].numpy()
    x86, x86_full = x86_last(gguf, tokens, width), x86_last(gguf, tokens)
    err_tf, err_x86, apart = rel_err(got, ref), rel_err(got, x86), rel_err(x86_full, ref)
    print(f"F32 width {width}/128 RVV: rel err {err_tf:.2e} vs transformers, {err_x86:.2e} vs x86 (full: {apart:.2e})")
    assert apart > 1e-2  # the width changes the function: a run that ignored it would not match
    assert err_tf <= 1e-4
    assert err_x86 <= 1e-4


# ffn_down is Q6_K in Q4_K_M's mix for these two layers (no RVV repack for Q6_K): the override makes it Q4_K, which
# the RVV repack buffer takes at VLEN 256, so the leading-column view of ffn_down goes through repacked rows too.
@pytest.mark.parametrize(
    ("outtype", "tensor_types", "vlen"),
    [("q4_0", None, 128), ("q4_0", None, 256), ("q4_k_m", {"ffn_down": "q4_k"}, 256)],
)
def test_quantized_at_width_matches_the_narrow_file_and_x86(rvv_bin, ggufs, tmp_path, outtype, tensor_types, vlen):
    width = 256
    _, gguf = ggufs("qwen3_kq", outtype, tensor_types)  # FFN 512
    _, narrow = ggufs("qwen3_kq", outtype, tensor_types, width)
    got, tokens = final_logits(rvv_bin, gguf, tmp_path / "full", PROMPT, "--ffn-width", width, vlen=vlen)
    ref, ref_tokens = final_logits(rvv_bin, narrow, tmp_path / "narrow", PROMPT, vlen=vlen)
    assert tokens == ref_tokens
    x86, x86_full = x86_last(gguf, tokens, width), x86_last(gguf, tokens)
    f32 = x86_last(ggufs("qwen3_kq", "f32")[1], tokens, width)
    err, apart = rel_err(got, ref), rel_err(x86_full, x86)
    diff, quant_err = float(np.abs(got - x86).max()), float(np.abs(x86 - f32).max())
    print(
        f"{outtype} width {width}/512 VLEN {vlen}: RVV vs the narrow file (RVV) rel err {err:.2e}; "
        f"max |RVV - x86| {diff:.3g}, quantization error {quant_err:.3g} (x86 full vs width: {apart:.2e})"
    )
    assert apart > 1e-2  # the width changes the function
    assert err <= 1e-5
    assert diff <= 0.1 * quant_err, f"max |RVV - x86| {diff:.3g} > 0.1 x quantization error {quant_err:.3g}"
    assert int(got.argmax()) == int(x86.argmax())
