"""The demo model (trained by this project on its synthetic image/audio task) answering held-out questions with the
RVV build under qemu: the same answers as llama-cpp-python on x86 for the same Q8_0 GGUF, question by question.
The answers' accuracy against the truth is printed (the parity is the check; the demo's own accuracy figures are
in docs/demo.md)."""

from __future__ import annotations

import pytest
from riscv_tools import mtmd_answer

N_PER_KIND = 3  # each answer is one qemu process: ~1 min for the image tower, less for audio


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    from transformers_qwen3.demo.run import write_questions

    path, records = write_questions(tmp_path_factory.mktemp("demo-questions"), N_PER_KIND)
    return path.parent, records


def test_demo_answers_match_x86(rvv_bin, demo_gguf, questions):
    from transformers_qwen3.checkpoint.tokenizer import build_qwen3_tokenizer
    from transformers_qwen3.demo.run import MAX_NEW_TOKENS, llama_cpp_prompt, question_parts, truth
    from transformers_qwen3.remote.processing_qwen3_multimodal import Qwen3MultimodalProcessor
    from transformers_qwen3.runtime.llama_cpp import LlamaCppModel

    data_dir, records = questions
    gguf, mmproj = demo_gguf("q8_0")
    processor = Qwen3MultimodalProcessor(tokenizer=build_qwen3_tokenizer())
    cases = []
    with LlamaCppModel(gguf, mmproj) as model:
        for rec in records:
            kind, media, question = question_parts(rec)
            prompt = model.media_prompt(llama_cpp_prompt(processor, question, kind), [kind])
            tokens, _, _ = model.answer(prompt, [model.file_bitmap(data_dir / media)], MAX_NEW_TOKENS)
            cases.append((kind, data_dir / media, prompt, model.detokenize(tokens).strip(), truth(rec)))
    assert {c[0] for c in cases} == {"image", "audio"}, [c[0] for c in cases]

    mismatches, right = [], 0
    for kind, path, prompt, x86, expected in cases:
        got = mtmd_answer(rvv_bin, gguf, mmproj, prompt, path, MAX_NEW_TOKENS).strip()
        right += got == expected
        print(f"{kind}: truth {expected!r}, x86 {x86!r}, RVV {got!r}")
        if got != x86:
            mismatches.append((kind, path.name, x86, got))
    print(f"RVV under qemu: {right}/{len(cases)} right")
    assert not mismatches, f"RVV answers differ from x86 (kind, file, x86, RVV): {mismatches}"
