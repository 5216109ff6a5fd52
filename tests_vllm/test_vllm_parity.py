"""vLLM with our plugin against transformers with our model, in the same venv: the same prompt token ids (placeholders
expanded to the same counts) and the same greedy tokens, for text, image, audio and image + audio prompts, on the
tiny multimodal model (random weights) and on the demo model (trained; its own synthetic questions).

The oracle is our transformers model (``AutoModelForCausalLM``; its own parity with transformers' Qwen3 / Qwen3-VL /
Qwen3-Omni classes is the main suite's business). Both run in float32 on the CPU.
"""

import importlib.metadata

import numpy as np
import pytest
import torch
from PIL import Image

MAX_TOKENS = 8
SAMPLE_RATE = 16000
KINDS = ("text", "image", "audio", "image+audio")


# --------------------------------------------------------------------------------------------------------------------
# Models, engines, oracles: one of each per model for the session
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    from transformers_qwen3 import Qwen3MultimodalConfig, Qwen3MultimodalForConditionalGeneration
    from transformers_qwen3.checkpoint.hub_folder import save_hub_folder
    from transformers_qwen3.checkpoint.presets import PRESETS
    from transformers_qwen3.checkpoint.tokenizer import build_qwen3_tokenizer

    torch.manual_seed(0)
    model = Qwen3MultimodalForConditionalGeneration(Qwen3MultimodalConfig(**PRESETS["tiny-mm"]))
    dst = tmp_path_factory.mktemp("hub") / "tiny-mm"
    save_hub_folder(model, build_qwen3_tokenizer(), dst)
    return dst


@pytest.fixture(scope="session")
def demo_folder():
    from transformers_qwen3.demo.model import demo_checkpoint

    return demo_checkpoint()


def media(seed: int):
    """A picture and a 1.5 s clip at 16 kHz, random but fixed."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    clip = (rng.standard_normal(24000) * 0.1).astype(np.float32)
    return image, clip


def demo_media():
    """The demo model's own held-out task: a rendered picture and a beep clip (it answers them in one word)."""
    from transformers_qwen3.demo.synthetic import make_sample

    image = make_sample(0, "test", 0, kinds=("image",)).media
    clip = make_sample(0, "test", 1, kinds=("audio",)).media
    return image, np.asarray(clip, dtype=np.float32)


QUESTIONS = {
    "text": "Say something about the weather.",
    "image": "What colour is the shape?",
    "audio": "How many beeps are there?",
    "image+audio": "Describe the picture and the sound.",
}


def messages(kind: str) -> list[dict]:
    parts = [{"type": "image"}] if "image" in kind else []
    parts += [{"type": "audio"}] if "audio" in kind else []
    return [{"role": "user", "content": [*parts, {"type": "text", "text": QUESTIONS[kind]}]}]


class Oracle:
    """Our transformers model and processor on a folder: prompt ids and greedy tokens."""

    def __init__(self, folder):
        from transformers import AutoModelForCausalLM, AutoProcessor

        # our Auto registrations are keyed on the config class: import it before AutoProcessor resolves the folder
        # (otherwise it asks for trust_remote_code when no earlier fixture happened to import it)
        from transformers_qwen3 import Qwen3MultimodalConfig  # noqa: F401

        self.processor = AutoProcessor.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def prompt(self, kind: str) -> str:
        # enable_thinking=False: the empty think block the demo model was trained after (demo/run.py)
        return self.processor.tokenizer.apply_chat_template(
            messages(kind), add_generation_prompt=True, enable_thinking=False, tokenize=False
        )

    def generate(self, kind: str, image, clip) -> tuple[list[int], list[int]]:
        inputs = self.processor(
            text=self.prompt(kind),
            images=[image] if "image" in kind else None,
            audio=[clip] if "audio" in kind else None,
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
        )
        with torch.no_grad():
            out = self.model.generate(**inputs, do_sample=False, max_new_tokens=MAX_TOKENS)
        prompt_ids = inputs["input_ids"][0].tolist()
        return prompt_ids, out[0, len(prompt_ids) :].tolist()


def engine(folder):
    from vllm import LLM

    # enforce_eager: no torch.compile of the decoder (minutes on 2 cores); skip_mm_profiling: no 4096-token dummy
    # image through the vision tower at start-up
    return LLM(
        model=str(folder),
        dtype="float32",
        max_model_len=2048,
        enforce_eager=True,
        limit_mm_per_prompt={"image": 1, "audio": 1},
        skip_mm_profiling=True,
        seed=0,
    )


@pytest.fixture(scope="session")
def tiny(tiny_folder):
    return Oracle(tiny_folder), engine(tiny_folder)


@pytest.fixture(scope="session")
def demo(demo_folder):
    return Oracle(demo_folder), engine(demo_folder)


def vllm_generate(llm, prompt: str, kind: str, image, clip) -> tuple[list[int], list[int]]:
    from vllm import SamplingParams

    data = {}
    if "image" in kind:
        data["image"] = image
    if "audio" in kind:
        data["audio"] = (clip, SAMPLE_RATE)
    request = {"prompt": prompt, "multi_modal_data": data} if data else {"prompt": prompt}
    (out,) = llm.generate(request, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)
    return list(out.prompt_token_ids), list(out.outputs[0].token_ids)


def check(pair, kind, image, clip):
    oracle, llm = pair
    want_prompt, want = oracle.generate(kind, image, clip)
    got_prompt, got = vllm_generate(llm, oracle.prompt(kind), kind, image, clip)
    assert got_prompt == want_prompt
    assert len(want) > 0 and got == want, (kind, got, want)
    return got


# --------------------------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------------------------


def test_the_plugin_is_an_installed_vllm_entry_point():
    found = [e.value for e in importlib.metadata.entry_points(group="vllm.general_plugins")]
    assert "transformers_qwen3.vllm_plugin:register" in found


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_model_greedy_tokens_equal_transformers(tiny, kind):
    check(tiny, kind, *media(0))


@pytest.mark.parametrize("kind", KINDS)
def test_demo_model_greedy_tokens_equal_transformers(demo, kind):
    check(demo, kind, *demo_media())


def test_demo_model_answers_its_task_through_vllm(demo):
    """The trained model through vLLM reads the media: its one-word answers are the synthetic set's answers."""
    from transformers_qwen3.demo.synthetic import make_sample

    oracle, llm = demo
    for index, kind in ((0, "image"), (1, "audio")):
        sample = make_sample(0, "test", index, kinds=(kind,))
        chat = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": sample.question}]}]
        prompt = oracle.processor.tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, enable_thinking=False, tokenize=False
        )
        image, clip = (sample.media, None) if kind == "image" else (None, np.asarray(sample.media, np.float32))
        _, tokens = vllm_generate(llm, prompt, kind, image, clip)
        answer = oracle.processor.tokenizer.decode(tokens, skip_special_tokens=True)
        assert sample.answer.lower() in answer.lower(), (sample.question, sample.answer, answer)


def test_a_batch_of_mixed_prompts_equals_one_by_one(tiny):
    """Continuous batching: the four kinds in one generate call give what each gives alone."""
    from vllm import SamplingParams

    oracle, llm = tiny
    image, clip = media(1)
    alone = [vllm_generate(llm, oracle.prompt(kind), kind, image, clip)[1] for kind in KINDS]
    requests = []
    for kind in KINDS:
        data = {k: v for k, v in (("image", image), ("audio", (clip, SAMPLE_RATE))) if k in kind}
        requests.append(
            {"prompt": oracle.prompt(kind), "multi_modal_data": data} if data else {"prompt": oracle.prompt(kind)}
        )
    batch = llm.generate(requests, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)
    assert [list(out.outputs[0].token_ids) for out in batch] == alone


def test_inline_media_tags_in_a_prompt_stay_text(tiny, tmp_path, monkeypatch):
    """vLLM takes media only as multi_modal_data: a tag a client typed is text, never a file read on the server."""
    oracle, llm = tiny
    media(2)[0].save(tmp_path / "photo.png")
    monkeypatch.setenv("QWEN3_MM_ALLOWED_ROOTS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    text = "<|im_start|>user\nWhat is in <image>photo.png</image>?<|im_end|>\n<|im_start|>assistant\n"
    tokenizer = oracle.processor.tokenizer
    plain = tokenizer(text, media_tags=False)["input_ids"]
    assert len(tokenizer(text)["input_ids"]) > len(plain)  # our tokenizer alone reads the picture: the tag is live
    got_prompt, _ = vllm_generate(llm, text, "text", None, None)
    assert got_prompt == plain
