"""CUDA checks: the parity suites' oracles on a GPU, bf16 as users run it, device_map loading, LoRA training, and the
patched llama.cpp's CUDA build against its CPU run (tiny-mm and the demo model, text, image and audio).

Where they run (docs/backends.md):
- CI has no GPU: every test here skips ("needs a CUDA device"); a skip is not a pass.
- ``TRANSFORMERS_QWEN3_REQUIRE_GPU=1`` (scripts/gpu_check.sh sets it): a machine without a CUDA device, or a
  llama-cpp-python without a GPU back end, FAILS every test instead of skipping it.
- ``TRANSFORMERS_QWEN3_GPU_DEVICE=cpu`` (``scripts/gpu_check.sh --dry-run``): the same code with the device swapped
  for "cpu" and llama.cpp's layers left on the CPU. A dry run proves the code paths run; its "GPU vs CPU"
  comparisons compare the CPU with itself and prove nothing about a GPU.

The same random weights go to our model and transformers' native class on the device, as in the CPU parity tests,
and each fp32 device result is also compared with the CPU run of the same model. TF32 is off (cuDNN enables it for
convolutions by default, which alone moves the vision tower's patch embedding by ~1e-3).
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.vl_prompts import AUDIO_CFG, PROMPTS, TEXT, VISION, build, mm_types
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from transformers_qwen3 import Qwen3MultimodalConfig, Qwen3MultimodalForConditionalGeneration
from transformers_qwen3.formats.keys import renamed

CUDA = os.environ.get("TRANSFORMERS_QWEN3_GPU_DEVICE", "cuda")
REQUIRE_GPU = os.environ.get("TRANSFORMERS_QWEN3_REQUIRE_GPU") == "1"
if CUDA not in ("cuda", "cpu"):
    raise ValueError(f"TRANSFORMERS_QWEN3_GPU_DEVICE must be 'cuda' or 'cpu', not {CUDA!r}")
pytestmark = pytest.mark.gpu
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(autouse=True, scope="module")  # module scope: before the module fixtures that load models
def _device():
    if CUDA == "cuda" and not torch.cuda.is_available():
        if REQUIRE_GPU:
            pytest.fail("TRANSFORMERS_QWEN3_REQUIRE_GPU=1 but torch sees no CUDA device")
        pytest.skip("needs a CUDA device")


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    native = Qwen3VLForConditionalGeneration(Qwen3VLConfig(text_config=TEXT, vision_config=VISION)).eval()
    ours = Qwen3MultimodalForConditionalGeneration(
        Qwen3MultimodalConfig(text_config=TEXT, vision_config=VISION, audio_config=AUDIO_CFG)
    ).eval()
    state = {renamed(k): v for k, v in native.state_dict().items()}
    ours.load_state_dict(state, strict=False)
    with torch.no_grad():
        ours.cpu_logits = {name: ours(**build(PROMPTS[name])).logits for name in PROMPTS}
    return native.to(CUDA), ours.to(CUDA)


def on_device(inputs, dtype=None):
    out = {}
    for k, v in inputs.items():
        v = v.to(CUDA)
        out[k] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
    return out


@pytest.mark.parametrize("name", PROMPTS)
def test_fp32_logits_match_native_on_cuda(pair, name):
    native, ours = pair
    inputs = on_device(build(PROMPTS[name]))
    with torch.no_grad():
        expected = native(**inputs, mm_token_type_ids=mm_types(inputs["input_ids"])).logits
        got = ours(**inputs).logits
    diff = (got - expected).abs().max().item()
    vs_cpu = (got.cpu() - ours.cpu_logits[name]).abs().max().item()
    print(f"\n{name}: fp32 {CUDA} max |diff| vs native {diff:.3g}, vs our CPU run {vs_cpu:.3g}")
    assert diff <= 1e-4, diff
    assert vs_cpu <= 1e-4, vs_cpu


def test_bf16_logits_and_generation_match_native_on_cuda(pair):
    native, ours = (m.to(torch.bfloat16) for m in pair)
    try:
        inputs = on_device(build(PROMPTS["two_odd_images"]), torch.bfloat16)
        types = mm_types(inputs["input_ids"])
        with torch.no_grad():
            expected = native(**inputs, mm_token_type_ids=types).logits.float()
            got = ours(**inputs).logits.float()
        diff = (got - expected).abs().max().item()
        print(f"\nbf16 {CUDA} max |diff| {diff:.3g} (logit scale {expected.abs().max().item():.3g})")
        assert torch.equal(got, expected), diff  # the same kernels in the same order
        kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert torch.equal(
            ours.generate(**inputs, **kwargs), native.generate(**inputs, mm_token_type_ids=types, **kwargs)
        )
    finally:
        for m in pair:
            m.float()


def test_saved_folder_loads_with_device_map_and_generates(tmp_path, qwen3_tokenizer):
    """save_hub_folder + trust_remote_code + device_map="auto" (accelerate places towers and layers), vs the CPU."""
    from transformers import AutoModelForCausalLM

    from transformers_qwen3.checkpoint.hub_folder import save_hub_folder

    torch.manual_seed(0)
    model = Qwen3MultimodalForConditionalGeneration(
        Qwen3MultimodalConfig(text_config=TEXT, vision_config=VISION, audio_config=AUDIO_CFG)
    ).eval()
    save_hub_folder(model, qwen3_tokenizer, tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(
        tmp_path / "m", trust_remote_code=True, device_map="auto", dtype=torch.float32
    ).eval()
    assert {p.device.type for p in loaded.parameters()} == {CUDA}
    inputs = build(PROMPTS["one_image"])
    with torch.no_grad():
        gpu = loaded(**on_device(inputs)).logits.cpu()
        cpu = model(**inputs).logits
    diff = (gpu - cpu).abs().max().item()
    print(f"\ndevice_map=auto fp32 {CUDA} vs cpu max |diff| {diff:.3g}")
    assert diff <= 1e-4, diff
    out = loaded.generate(**on_device(inputs), max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 8


def test_lora_trains_with_gradient_checkpointing_on_cuda(pair):
    from transformers_qwen3.training.lora import apply_lora, lora_config

    _, ours = pair
    torch.manual_seed(0)
    model = Qwen3MultimodalForConditionalGeneration(ours.config).to(CUDA, torch.bfloat16)
    model.activation_checkpointing_enable()
    model = apply_lora(model, lora_config(rank=8))
    model.train()
    inputs = on_device(build(PROMPTS["one_image"]), torch.bfloat16)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    print(f"\nLoRA bf16 {CUDA} losses {[round(x, 4) for x in losses]}")
    assert losses[-1] < losses[0]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


# --- the patched llama.cpp's CUDA build vs its CPU run -------------------------------------------------------------
# Limits, GPU vs CPU run of the same file: ggml-cuda quantizes activations to q8_1 for its quantized matmuls (the
# CPU to q8_0 / q8_K) and sums in another order, so logits differ by float rounding and the activation
# quantization, not by the weights: a relative error (Frobenius norm) under 5e-2 with the same top token at the
# end of the prompt. mmproj rows (vision / audio towers on the GPU vs the CPU): under 2e-2.
LOGITS_REL = 5e-2
EMBD_REL = 2e-2
GGUF_TYPES = ("q8_0", "q4_k_m")


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b.astype(np.float64)), 1e-30))


def open_llama(gguf: Path, mmproj: Path, on_gpu: bool):
    """The text GGUF + mmproj in llama.cpp, every layer and the mmproj on the GPU when ``on_gpu`` (and the run is
    not a dry run); on a GPU run, checks that the weights really went to the device."""
    from transformers_qwen3.runtime.llama_cpp import LlamaCppModel, llama_cpp_module

    if not on_gpu or CUDA == "cpu":
        return LlamaCppModel(gguf, mmproj, n_ctx=1024)
    llama_cpp = llama_cpp_module()
    assert llama_cpp.llama_supports_gpu_offload(), (
        "the installed llama-cpp-python has no GPU back end (scripts/gpu_check.sh builds the CUDA one)"
    )
    free_before = torch.cuda.mem_get_info()[0]
    try:
        model = LlamaCppModel(gguf, mmproj, n_ctx=1024, n_gpu_layers=-1)
    except TypeError as e:  # the driver's GPU switch is missing
        pytest.fail(f"runtime/llama_cpp.py's LlamaCppModel takes no n_gpu_layers: {e}")
    used = free_before - torch.cuda.mem_get_info()[0]
    assert used >= 0.5 * gguf.stat().st_size, f"llama.cpp took {used} B of GPU memory for {gguf.name}"
    return model


def media_run(gguf: Path, mmproj: Path, on_gpu: bool) -> dict:
    """mtmd's image and audio rows, then (in a fresh context, as verify's generation check) the logits after an
    image+audio+text prompt and 8 greedy tokens."""
    from transformers_qwen3.runtime.llama_cpp import MEDIA_BLOCKS
    from transformers_qwen3.runtime.verify import synthetic_audio, synthetic_image

    image, audio = synthetic_image(), synthetic_audio(2.5)
    with open_llama(gguf, mmproj, on_gpu) as m:
        out = {"image": m.embed(m.image_bitmap(image)), "audio": m.embed(m.audio_bitmap(audio))}
    text = "What is shown and heard?"
    prompt = (
        f"<|im_start|>user\n{MEDIA_BLOCKS['image']}{MEDIA_BLOCKS['audio']}{text}<|im_end|>\n<|im_start|>assistant\n"
    )
    with open_llama(gguf, mmproj, on_gpu) as m:
        bitmaps = [m.image_bitmap(image), m.audio_bitmap(audio)]
        out["greedy"], _, out["logits"] = m.answer(m.media_prompt(prompt, ["image", "audio"]), bitmaps, 8, False)
    return out


@pytest.fixture(scope="module")
def tiny_mm_ggufs(tmp_path_factory) -> dict:
    """tiny-mm (random weights, vision + audio towers) converted by our converter, per type: (text, mmproj)."""
    from helpers.convert_fixtures import checkpoint
    from transformers_qwen3.convert import convert_checkpoint

    root = tmp_path_factory.mktemp("gpu-ggufs")
    folder = checkpoint(root, "mm")
    files = {}
    for outtype in GGUF_TYPES:
        paths = convert_checkpoint(folder, root / outtype, outtype, force=True, progress=False)
        files[outtype] = tuple(sorted(paths, key=lambda p: p.name.startswith("mmproj-")))
    return files


@pytest.mark.parametrize("outtype", GGUF_TYPES)
def test_llama_cpp_tiny_mm_gpu_matches_cpu(tiny_mm_ggufs, outtype):
    gguf, mmproj = tiny_mm_ggufs[outtype]
    cpu, gpu = media_run(gguf, mmproj, on_gpu=False), media_run(gguf, mmproj, on_gpu=True)
    errs = {k: _rel(gpu[k], cpu[k]) for k in ("image", "audio", "logits")}
    print(f"\ntiny-mm {outtype} llama.cpp {CUDA} vs cpu rel: {errs}; greedy {gpu['greedy']} vs {cpu['greedy']}")
    for k in ("image", "audio"):
        assert gpu[k].shape == cpu[k].shape
        assert errs[k] <= EMBD_REL, (k, errs[k])
    assert errs["logits"] <= LOGITS_REL, errs["logits"]
    assert int(np.argmax(gpu["logits"])) == int(np.argmax(cpu["logits"]))


@pytest.mark.parametrize("outtype", GGUF_TYPES)
def test_llama_cpp_demo_model_answers_the_same_on_gpu(tmp_path, outtype):
    """The demo model (trained; docs/demo.md) answers held-out image and audio questions: the same answers, token for
    token, on the GPU as on the CPU."""
    from transformers_qwen3.checkpoint.tokenizer import build_qwen3_tokenizer
    from transformers_qwen3.demo.model import demo_checkpoint
    from transformers_qwen3.demo.run import gguf_files, llama_cpp_prompt, question_parts, write_questions
    from transformers_qwen3.remote.processing_qwen3_multimodal import Qwen3MultimodalProcessor

    folder = demo_checkpoint()
    (tmp_path / "gguf").mkdir()
    gguf, mmproj = gguf_files(folder, outtype, tmp_path / "gguf")
    _, records = write_questions(tmp_path / "data", n_per_kind=4)
    processor = Qwen3MultimodalProcessor(tokenizer=build_qwen3_tokenizer())
    answers = {}
    for on_gpu in (False, True):
        with open_llama(gguf, mmproj, on_gpu) as m:
            got = []
            for rec in records:
                kind, media, question = question_parts(rec)
                prompt = m.media_prompt(llama_cpp_prompt(processor, question, kind), [kind])
                tokens, _, first = m.answer(prompt, [m.file_bitmap(tmp_path / "data" / media)], 4)
                got.append((tokens, first))
            answers[on_gpu] = got
    texts = [processor.tokenizer.decode(t) for t, _ in answers[True]]
    print(f"\ndemo {outtype} on {CUDA}: {texts}")
    assert {question_parts(r)[0] for r in records} == {"image", "audio"}
    for (g, g_first), (c, c_first) in zip(answers[True], answers[False], strict=True):
        assert g == c
        assert _rel(g_first, c_first) <= LOGITS_REL
