"""The tiny multimodal model (``init --preset tiny-mm``) converted by ``transformers-qwen3 convert`` to Q8_0 and
Q4_K_M (text model + mmproj), run by the RVV build under qemu, against the same GGUFs on x86 through
llama-cpp-python (:mod:`transformers_qwen3.runtime.llama_cpp`, the project's llama.cpp driver).

- Text: the final-position logits of a prompt (llama.cpp's ``llama-debug --save-logits``, F32 KV cache as the
  driver's ``prompt_logits`` uses) match x86's within a tenth of the quantization error itself (the x86 distance
  between the quantized GGUF and the F32 one), with the same top token.
- An image prompt and an audio prompt (our chat template, media through mtmd: ``llama-mtmd-cli`` under qemu,
  ``mtmd_helper_eval_chunks`` on x86) give the same greedy answer token for token, whitespace included (the random
  weights answer the image prompt with newlines only; the demo model's check is the one with meaningful answers).
"""

from __future__ import annotations

import numpy as np
import pytest
from riscv_tools import final_logits, mtmd_answer

PROMPT = "The quick brown fox jumps over the lazy dog because"
N_ANSWER = 8


@pytest.mark.parametrize("outtype", ["q8_0", "q4_k_m"])
def test_text_logits_match_x86(rvv_bin, tiny_mm_gguf, tmp_path, outtype):
    from transformers_qwen3.runtime.llama_cpp import prompt_logits

    gguf, _ = tiny_mm_gguf(outtype)
    got, tokens = final_logits(rvv_bin, gguf, tmp_path, PROMPT)
    x86 = prompt_logits(gguf, [tokens])[0][-1]
    f32 = prompt_logits(tiny_mm_gguf("f32")[0], [tokens])[0][-1]
    assert got.shape == x86.shape, (got.shape, x86.shape)
    diff = float(np.abs(got - x86).max())
    quant_err = float(np.abs(x86 - f32).max())
    print(f"{outtype}: max |RVV - x86| = {diff:.3g}, quantization error max |x86 - F32| = {quant_err:.3g}")
    assert diff <= 0.1 * quant_err, f"{outtype}: max |RVV - x86| {diff:.3g} > 0.1 x quantization error {quant_err:.3g}"
    assert int(got.argmax()) == int(x86.argmax()), (int(got.argmax()), int(x86.argmax()))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """An image file (PNG) and an audio file (WAV, 16 kHz), as a user would hand them to either runtime."""
    import soundfile
    from PIL import Image

    folder = tmp_path_factory.mktemp("media")
    y, x = np.mgrid[0:64, 0:96]
    rgb = np.stack([(x * 255 // 95), (y * 255 // 63), ((x + y) % 32) * 8], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "image.png")
    t = np.arange(int(1.5 * 16000)) / 16000
    soundfile.write(folder / "audio.wav", 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t)), 16000)
    return {"image": folder / "image.png", "audio": folder / "audio.wav"}


def x86_answer(gguf, mmproj, kind, path) -> tuple[str, str]:
    """(prompt with mtmd's marker, greedy answer text) on x86."""
    from transformers_qwen3.checkpoint.tokenizer import build_qwen3_tokenizer
    from transformers_qwen3.demo.run import llama_cpp_prompt
    from transformers_qwen3.remote.processing_qwen3_multimodal import Qwen3MultimodalProcessor
    from transformers_qwen3.runtime.llama_cpp import LlamaCppModel

    processor = Qwen3MultimodalProcessor(tokenizer=build_qwen3_tokenizer())
    with LlamaCppModel(gguf, mmproj) as model:
        prompt = model.media_prompt(llama_cpp_prompt(processor, f"What is in this {kind}?", kind), [kind])
        tokens, _, _ = model.answer(prompt, [model.file_bitmap(path)], N_ANSWER)
        return prompt, model.detokenize(tokens)


@pytest.mark.parametrize("outtype", ["q8_0", "q4_k_m"])
@pytest.mark.parametrize("kind", ["image", "audio"])
def test_media_answer_matches_x86(rvv_bin, tiny_mm_gguf, media, outtype, kind):
    gguf, mmproj = tiny_mm_gguf(outtype)
    prompt, expected = x86_answer(gguf, mmproj, kind, media[kind])
    got = mtmd_answer(rvv_bin, gguf, mmproj, prompt, media[kind], N_ANSWER)
    print(f"{outtype} {kind}: x86 {expected!r}, RVV {got!r}")
    assert expected, f"x86 answered nothing to the {kind} prompt"
    assert got == expected  # token for token, whitespace included
