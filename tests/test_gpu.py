"""CUDA checks: the parity suites' oracles on a GPU, bf16 as users run it, device_map loading, LoRA training.

CI has no GPU, so these skip there (`pytest -m gpu tests/test_gpu.py` on a CUDA machine runs them). They pass on
CPU with the device swapped for "cpu"; they have not run on a GPU yet (no device was lent when they were written).
The same random weights go to our model and transformers' native class on the device, as in the CPU parity tests.
"""

import pytest
import torch
from helpers.vl_prompts import AUDIO_CFG, PROMPTS, TEXT, VISION, build, mm_types
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from transformers_qwen3 import Qwen3MultimodalConfig, Qwen3MultimodalForConditionalGeneration
from transformers_qwen3.formats.keys import renamed

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = "cuda"


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    native = Qwen3VLForConditionalGeneration(Qwen3VLConfig(text_config=TEXT, vision_config=VISION)).eval()
    ours = Qwen3MultimodalForConditionalGeneration(
        Qwen3MultimodalConfig(text_config=TEXT, vision_config=VISION, audio_config=AUDIO_CFG)
    ).eval()
    state = {renamed(k): v for k, v in native.state_dict().items()}
    ours.load_state_dict(state, strict=False)
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
    print(f"\n{name}: fp32 cuda max |diff| {diff:.3g}")
    assert diff <= 1e-4, diff


def test_bf16_logits_and_generation_match_native_on_cuda(pair):
    native, ours = (m.to(torch.bfloat16) for m in pair)
    try:
        inputs = on_device(build(PROMPTS["two_odd_images"]), torch.bfloat16)
        types = mm_types(inputs["input_ids"])
        with torch.no_grad():
            expected = native(**inputs, mm_token_type_ids=types).logits.float()
            got = ours(**inputs).logits.float()
        diff = (got - expected).abs().max().item()
        print(f"\nbf16 cuda max |diff| {diff:.3g} (logit scale {expected.abs().max().item():.3g})")
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
    assert {p.device.type for p in loaded.parameters()} == {"cuda"}
    inputs = build(PROMPTS["one_image"])
    with torch.no_grad():
        gpu = loaded(**on_device(inputs)).logits.cpu()
        cpu = model(**inputs).logits
    diff = (gpu - cpu).abs().max().item()
    print(f"\ndevice_map=auto fp32 cuda vs cpu max |diff| {diff:.3g}")
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
    print(f"\nLoRA bf16 cuda losses {[round(x, 4) for x in losses]}")
    assert losses[-1] < losses[0]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
