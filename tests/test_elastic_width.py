"""Elastic FFN width in llama.cpp (ggml_patches/0004): one GGUF computed with the first w neurons of every FFN.

Oracles, each on the same token prompt:
- F32 GGUF at width w: transformers' native Qwen3ForCausalLM with ``intermediate_size=w`` built from the full
  checkpoint's weights sliced (first w rows of gate/up, first w columns of down); logits within 1e-4 relative.
- F32 GGUF with one width per layer: transformers' own Qwen3 decoder layers with each MLP's Linear weights sliced
  to that layer's width (Qwen3MLP computes with whatever Linear it holds).
- Quantized (Q8_0, Q4_0, Q4_K_M): the GGUF converted from the sliced checkpoint at the same type holds the same
  quantization blocks, so llama.cpp's own narrow file is the oracle; logits agree to float-reduction noise.
  On AVX2, Q4_0 and Q4_K weights sit in ggml's CPU "repack" buffer, whose kernels stepped from one group of
  interleaved rows to the next by the view's row length instead of the stored one: through ffn_down's
  leading-column view that read the wrong bytes. Those two cases fail without the repack fix of 0004 (checked
  by building 0004 without it: Q4_0 at width 256 gave relative error 0.36 instead of ≤ 1e-5).
- Refusals: a width that is not a multiple of the block size, wider than the layer, a list of the wrong length:
  one LlamaCppError, never a crash.

The quantized runs happen in a child process with GGML_CPU_NO_AMX=1 (ggml_patches/0005): on a CPU with AMX,
ggml puts Q4_0/Q8_0/K-quant weights in its AMX buffer instead of the repack one, and on this machine stock
llama.cpp segfaults there on Q4_0 (no elastic width involved). The switch is read once per process, when the CPU
backend first lists its buffer types, hence the child.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.convert_fixtures import checkpoint
from helpers.elastic_width import narrow_mlps, sliced_checkpoint
from transformers import Qwen3ForCausalLM
from transformers_qwen3.convert import convert_checkpoint

from transformers_qwen3.runtime.llama_cpp import load_llama, prompt_logits

CHILD = """
import sys, numpy as np
from transformers_qwen3.runtime.llama_cpp import LlamaCppError, load_llama
path, out, widths = sys.argv[1], sys.argv[2], eval(sys.argv[3])
try:
    llm = load_llama(path, 32, 2, logits_all=True, f32_kv=True, ffn_width=widths[0])
except LlamaCppError as e:
    print(e)
    sys.exit(3)
got = []
for i, w in enumerate(widths):
    if i:
        llm.set_ffn_width(w)
    llm.eval(PROMPT[0])
    got.append(np.array(llm.scores[: len(PROMPT[0])], dtype=np.float32))
    llm.reset()
np.save(out, np.stack(got))
"""

llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (make llama-cpp)")
torch.set_num_threads(1)

PROMPT = [[785, 3974, 13876, 38835, 34208, 916, 279, 15678, 5562, 13, 576, 3974, 13876]]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("elastic-width")


def torch_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(PROMPT)).logits[0].float().numpy()


def without_amx(path, widths: list, tmp_path) -> subprocess.CompletedProcess:
    """PROMPT through one Llama loaded at widths[0], then set to each later width, in a child process without
    ggml's AMX buffer; the logits are in tmp_path/logits.npy."""
    env = {**os.environ, "GGML_CPU_NO_AMX": "1"}
    code = f"PROMPT = {PROMPT!r}\n" + CHILD
    args = [sys.executable, "-c", code, str(path), str(tmp_path / "logits.npy"), repr(widths)]
    return subprocess.run(args, env=env, capture_output=True, text=True)


def logits_without_amx(path, widths: list, tmp_path) -> list[np.ndarray]:
    result = without_amx(path, widths, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return list(np.load(tmp_path / "logits.npy"))


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def gguf(root, name: str, outtype: str, width: int | None = None, tensor_types: dict[str, str] | None = None):
    """The GGUF of fixture ``name`` (cut to ``width`` when given) at ``outtype``, converted once per module."""
    src = checkpoint(root, name)
    if width is not None:
        src = sliced_checkpoint(src, root / f"{name}-w{width}", width)
    out = root / f"{src.name}-{outtype}{'-tt' if tensor_types else ''}"
    if not out.is_dir():
        tmp = root / f"{out.name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        convert_checkpoint(src, tmp, outtype, progress=False, tensor_types=tensor_types)
        tmp.rename(out)
    (text,) = [p for p in out.glob("*.gguf") if "mmproj" not in p.name]
    return src, text


@pytest.mark.parametrize("width", [32, 64, 128])
def test_f32_at_width_matches_transformers_with_the_sliced_ffn(root, width):
    _, full = gguf(root, "qwen3", "f32")  # intermediate_size 128
    sliced, _ = gguf(root, "qwen3", "f32", width) if width < 128 else (checkpoint(root, "qwen3"), None)
    ref = torch_logits(Qwen3ForCausalLM.from_pretrained(sliced, dtype=torch.float32).eval())
    (ours,) = prompt_logits(full, PROMPT, n_threads=2, ffn_width=width)
    err = rel_err(ours, ref)
    print(f"\nF32 width {width}/128: rel err {err:.2e}")
    assert err <= 1e-4
    if width < 128:  # the width changed the function: a run that ignored it would not match
        (unsliced,) = prompt_logits(full, PROMPT, n_threads=2)
        assert rel_err(unsliced, ref) > 1e-2


def test_f32_per_layer_widths_match_transformers_layers_sliced(root):
    src, full = gguf(root, "qwen3", "f32")
    widths = [32, 96]  # two layers
    model = narrow_mlps(Qwen3ForCausalLM.from_pretrained(src, dtype=torch.float32).eval(), widths)
    ref = torch_logits(model)
    (ours,) = prompt_logits(full, PROMPT, n_threads=2, ffn_width=widths)
    err = rel_err(ours, ref)
    print(f"\nF32 widths {widths}: rel err {err:.2e}")
    assert err <= 1e-4
    (zero_is_full,) = prompt_logits(full, PROMPT, n_threads=2, ffn_width=[32, 0])
    (explicit,) = prompt_logits(full, PROMPT, n_threads=2, ffn_width=[32, 128])
    assert np.array_equal(zero_is_full, explicit)


# Q4_K_M writes ffn_down as Q6_K in these two layers (not repacked on x86): the override puts a Q4_K ffn_down,
# which is repacked on AVX2, under the leading-column view.
@pytest.mark.parametrize(
    ("outtype", "tensor_types"), [("q8_0", None), ("q4_0", None), ("q4_k_m", None), ("q4_k_m", {"ffn_down": "q4_k"})]
)
def test_quantized_at_width_matches_the_file_converted_narrow(root, tmp_path, outtype, tensor_types):
    """qwen3_kq: hidden 256, FFN 512, 2 layers; width 256 cuts ffn_down's rows at a whole K-quant super-block.
    One Llama switches width → full → width (set_ffn_width clears the KV cache in between)."""
    _, full = gguf(root, "qwen3_kq", outtype, tensor_types=tensor_types)
    _, narrow = gguf(root, "qwen3_kq", outtype, 256, tensor_types=tensor_types)
    (ref,) = logits_without_amx(narrow, [None], tmp_path)
    ours, unsliced, again = logits_without_amx(full, [256, None, 256], tmp_path)
    err, apart = rel_err(ours, ref), rel_err(unsliced, ref)
    print(
        f"\n{outtype} {tensor_types or ''} width 256/512: rel err {err:.2e} against the narrow file "
        f"(full width: {apart:.2e})"
    )
    assert err <= 1e-5
    assert np.array_equal(again, ours)
    assert apart > 1e-3  # the narrow file is a different function: the check can tell


def test_llama_get_ffn_width(root):
    _, full = gguf(root, "qwen3", "f32")
    llm = load_llama(full, 32, 2, ffn_width=[32, 0])
    try:
        got = [llama_cpp.llama_get_ffn_width(llm._ctx.ctx, il) for il in range(3)]
    finally:
        llm.close()
    assert got == [32, 128, -1]


@pytest.mark.parametrize(
    ("outtype", "width"),
    [
        ("q8_0", 48),  # not a multiple of Q8_0's 32
        ("q4_k_m", 128),  # not a multiple of the K-quants' 256
        ("q8_0", 1024),  # wider than the layer (512)
        ("q8_0", 0),
        ("q8_0", [256, 256, 256]),  # three widths for two layers
    ],
)
def test_bad_widths_are_refused_with_one_error(root, tmp_path, outtype, width):
    _, full = gguf(root, "qwen3_kq", outtype)
    result = without_amx(full, [width], tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr[-3000:]
    assert re.search(r"ffn_width=.* refused: each width must be a multiple", result.stdout), result.stdout
