"""Converted files run in llama.cpp (llama-cpp-python) and agree with transformers.

- F32 GGUF + F32 KV cache: logits relative error ≤ 1e-4 against the checkpoint, for a native Qwen3ForCausalLM
  (arch qwen3), a native Qwen3-VL (arch qwen3vl, text input) and our multimodal layout (qwen3vl).
- Other types: against transformers running the GGUF's own dequantized weights (`verify`'s limits: top-1 and KL).
- K-quants through llama.cpp's quantizer: the types written are reported; with 256-multiple widths nothing is
  substituted, with a 64-wide model the substitutions are listed; per-tensor overrides reach the quantizer.
Each check prints its measured numbers (pytest -s shows them).
"""

from __future__ import annotations

import os

import gguf
import pytest
import torch
from helpers.convert_fixtures import checkpoint, read_gguf
from transformers_qwen3.convert import convert_checkpoint, type_report, written_types

from transformers_qwen3.runtime.verify import verify

llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (make llama-cpp)")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("convert-llama")


def _run(model, gguf_path, checks):
    results = verify(model, gguf_path, checks=checks, n_threads=2)
    for r in results:
        print(f"\n{gguf_path.name} {r.name}: {r.summary}")
    return results


@pytest.mark.parametrize("name", ["qwen3", "qwen3_vl", "mm"])
def test_f32_logits_match_transformers(root, tmp_path, name):
    src = checkpoint(root, name)
    text = convert_checkpoint(src, tmp_path, "f32", progress=False)[0]
    (result,) = _run(src, text, ["text_logits"])
    assert result.metrics["rel_err"] <= 1e-4, result.summary
    assert result.metrics["top1_agreement"] == 1.0, result.summary


def test_llama_cpp_tokenizes_like_transformers(root, tmp_path):
    src = checkpoint(root, "mm")
    text = convert_checkpoint(src, tmp_path, "q8_0", progress=False)[0]
    (result,) = _run(src, text, ["tokenizer"])
    assert result.passed, result.summary


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_typed_files_match_their_dequantized_weights(root, tmp_path, outtype):
    src = checkpoint(root, "qwen3")
    text = convert_checkpoint(src, tmp_path, outtype, progress=False)[0]
    (result,) = _run(src, text, ["text_logits"])
    assert result.passed, result.summary


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["q6_k", "q5_k_m", "q4_k_m", "q4_0"])
def test_k_quants_through_llama_cpp(root, tmp_path, outtype):
    src = checkpoint(root, "qwen3_kq")  # every row width a multiple of 256
    (text,) = convert_checkpoint(src, tmp_path, outtype, progress=False)
    assert text.name == f"qwen3_kq-{outtype.upper()}.gguf"
    report = type_report(written_types(text), outtype)
    print("\n" + "\n".join(report))
    assert len(report) == 1, report  # no tensor outside the mix
    kv, _ = read_gguf(text)
    assert kv["general.file_type"] == gguf.LlamaFileType[f"MOSTLY_{outtype.upper()}"]
    (result,) = _run(src, text, ["text_logits"])
    assert result.passed, result.summary


def test_k_quant_substitutions_are_reported(root, tmp_path):
    (text,) = convert_checkpoint(checkpoint(root, "qwen3"), tmp_path, "q4_k_m", progress=False)  # 64 wide
    report = type_report(written_types(text), "q4_k_m")
    print("\n" + "\n".join(report))
    assert "not in the Q4_K_M mix" in report[1]
    assert any("blk.0.attn_q.weight" in line for line in report[2:])


def test_tensor_type_overrides_reach_the_quantizer(root, tmp_path):
    src = checkpoint(root, "qwen3_kq")
    (text,) = convert_checkpoint(src, tmp_path, "q4_k_m", tensor_types={r"ffn_down": "q8_0"}, progress=False)
    types = written_types(text)
    assert {t for n, t in types.items() if "ffn_down" in n} == {"Q8_0"}
    assert types["blk.0.ffn_up.weight"] == "Q4_K"


def test_verify_cli(root, tmp_path, capsys):
    from transformers_qwen3.cli import main

    src = checkpoint(root, "qwen3")
    text = convert_checkpoint(src, tmp_path, "f32", progress=False)[0]
    assert main(["verify", str(src), str(text), "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert "PASS  tokenizer" in out and "PASS  text_logits" in out


def test_logit_metrics_match_torch():
    """runtime.metrics (verify's criteria and bench_quality's table) against torch's own KL, softmax and argmax."""
    from transformers_qwen3.runtime.metrics import compare_logits

    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(6, 50, generator=gen, dtype=torch.float64) * 4
    got = ref + torch.randn(6, 50, generator=gen, dtype=torch.float64)
    got[0] = ref[0]  # one position identical: top-1 agrees there for sure
    m = compare_logits([ref[:2].numpy(), ref[2:].numpy()], [got[:2].numpy(), got[2:].numpy()])
    log_p, log_q = ref.log_softmax(-1), got.log_softmax(-1)
    kl = torch.nn.functional.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)  # KL(p ‖ q) per row
    assert m["positions"] == 6
    assert abs(m["kl_mean"] - float(kl.mean())) < 1e-12 and abs(m["kl_max"] - float(kl.max())) < 1e-12, (m, kl)
    assert m["top1_agreement"] == float((ref.argmax(-1) == got.argmax(-1)).double().mean())
    assert abs(m["rel_err"] - float(torch.linalg.norm(got - ref) / torch.linalg.norm(ref))) < 1e-12
    assert m["max_abs_diff"] == float((got - ref).abs().max())


# --- media: mtmd's embeddings vs our towers (our layout, vision + audio in one mmproj) --------------------------
def _media_check(root, outtype, check):
    """One verify check on our multimodal fixture, converted once per type for all the media tests."""
    src = checkpoint(root, "mm")
    out = root / f"mm-gguf-{outtype}"
    if not out.is_dir():
        convert_checkpoint(src, out, outtype, progress=False)
    (mmproj,) = out.glob("mmproj-*.gguf")
    (text,) = (p for p in out.glob("*.gguf") if p != mmproj)
    (result,) = verify(src, text, mmproj, checks=[check], n_threads=2)
    print(f"\n{text.name} + {mmproj.name} {result.name}: {result.summary}")
    return result


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_image_embeddings_match_our_vision_tower(root, outtype):
    result = _media_check(root, outtype, "image_embeddings")
    assert result.passed, result.summary


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_audio_embeddings_match_our_audio_tower(root, outtype):
    """Needs the patched llama.cpp (ggml_patches/): token counts as transformers', rows zero-padded to the
    deepstack text model's input width."""
    result = _media_check(root, outtype, "audio_embeddings")
    assert result.passed, result.summary


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_greedy_generation_with_media_matches(root, outtype):
    """image+text, audio+text, image+audio+text: same prompt length, same greedy tokens, close last logits."""
    result = _media_check(root, outtype, "generation")
    assert len(result.metrics) == 3 and result.passed, result.summary


def test_k_quant_conversions_share_the_q8_0_mmproj(root, tmp_path):
    src = checkpoint(root, "mm")
    text, mmproj = convert_checkpoint(src, tmp_path, "q4_k_m", progress=False)
    assert (text.name, mmproj.name) == ("mm-Q4_K_M.gguf", "mmproj-mm-Q8_0.gguf")
    before = mmproj.stat().st_mtime_ns, mmproj.read_bytes()
    text2, mmproj2 = convert_checkpoint(src, tmp_path, "q5_k_m", progress=False)  # no --force needed
    assert mmproj2 == mmproj and (mmproj.stat().st_mtime_ns, mmproj.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mm-Q4_K_M.gguf", "mm-Q5_K_M.gguf", "mmproj-mm-Q8_0.gguf"]
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in (text, text2, mmproj)} == {0o666 & ~umask}  # umask, not mkstemp's 0600
