"""Hostile input on the media path: what one prompt may cost, bad samples, odd shapes, tag-like and placeholder-like
text, what error messages may echo, and one MediaError class across remote-code copies.

Each case goes through the entry points a user reaches (tokenizer, processor, chat template, Pipeline). The Pipeline
runs on a stand-in model that records its inputs: these tests are about the inputs, not the generation.
"""

import base64
import copy
import importlib.util
import io
import json
import shutil
import sys
import time

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

import transformers_qwen3
from transformers_qwen3.inference.pipeline import Pipeline
from transformers_qwen3.remote import media_qwen3_multimodal as hub
from transformers_qwen3.remote.media_qwen3_multimodal import MediaError, MediaPolicy, load_audio, load_image
from transformers_qwen3.remote.processing_qwen3_multimodal import MediaEncoder, Qwen3MultimodalProcessor
from transformers_qwen3.remote.tokenization_qwen3_multimodal import Qwen3MultimodalTokenizer

IMAGE, AUDIO = 151655, 151675
SPECIALS = [
    "<|image_pad|>",
    "<|video_pad|>",
    "<|audio_pad|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|audio_start|>",
    "<|audio_end|>",
]


def one_bit_png(width, height) -> bytes:
    """A 1-bit PNG: a few KB on disk however large its header says it is (8000x8000 is 8 KB)."""
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def float_wav(samples, rate=16000, subtype="FLOAT") -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, np.asarray(samples), rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def tone(seconds=0.5, rate=16000):
    return (np.sin(np.arange(int(seconds * rate)) / 7.0) * 0.3).astype(np.float32)


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QWEN3_MM_ALLOW_NETWORK", raising=False)
    monkeypatch.delenv("QWEN3_MM_ALLOWED_ROOTS", raising=False)
    Image.new("RGB", (40, 30), (200, 30, 10)).save(tmp_path / "ok.png")
    (tmp_path / "a.wav").write_bytes(float_wav(tone(1.0)))
    return tmp_path


@pytest.fixture
def decoded(monkeypatch):
    """Records every decode (image pixels, video frames, audio samples) the loader performs."""
    seen = []
    for name in ("_to_rgb", "_decode_frames", "_decode_audio"):
        original = getattr(hub, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            seen.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(hub, name, spy)
    return seen


@pytest.fixture(scope="module")
def processor(qwen3_tokenizer):
    return Qwen3MultimodalProcessor(tokenizer=qwen3_tokenizer)


class RecordingModel:
    """Stands in for the model in a Pipeline: records what it is given and 'generates' one end-of-text token."""

    device = torch.device("cpu")

    def __init__(self):
        self.calls = []

    def eval(self):
        return self

    def generate(self, input_ids, **kwargs):
        self.calls.append({"input_ids": input_ids, **kwargs})
        return torch.cat([input_ids, torch.full((input_ids.shape[0], 1), 151643)], dim=1)


@pytest.fixture
def pipe(processor):
    return Pipeline(RecordingModel(), processor)


# ---- 1. what the media of one prompt may cost in all ----------------------------------------------------------------


def test_total_pixels_of_a_prompt_are_checked_from_headers_before_decoding(root, qwen3_tokenizer, decoded):
    tag = "<img>" + data_uri(one_bit_png(2000, 2000)) + "</img>"  # 4 Mpixel each, under the per-image cap
    policy = MediaPolicy(max_total_pixels=10_000_000)
    with pytest.raises(MediaError, match="max_total_pixels") as e:
        qwen3_tokenizer(f"a {tag} b {tag} c {tag}", media_policy=policy)
    assert e.value.tag == "<img>" and "10000000" in str(e.value)
    assert decoded == []  # the third header was over budget: not even the first two were decoded
    qwen3_tokenizer(f"a {tag} b {tag}", media_policy=policy)  # two fit
    assert decoded == ["_to_rgb", "_to_rgb"]


def test_the_reported_prompt_is_refused_without_decoding(root, qwen3_tokenizer, decoded):
    # six 8 KB tags of an 8000x8000 1-bit PNG took 4.3 GB and 26 s; the default total refuses them from the headers
    tag = "<img>" + data_uri(one_bit_png(8000, 8000)) + "</img>"
    start = time.perf_counter()
    with pytest.raises(MediaError, match="max_total_pixels"):
        qwen3_tokenizer(" ".join([tag] * 6))
    assert decoded == [] and time.perf_counter() - start < 10


def test_total_audio_seconds_bytes_and_items(root, processor, decoded):
    with pytest.raises(MediaError, match="max_total_audio_seconds"):
        processor(text="<audio>a.wav</audio>" * 3, media_policy=MediaPolicy(max_total_audio_seconds=2.5))
    assert decoded == []
    size = (root / "ok.png").stat().st_size
    with pytest.raises(MediaError, match="max_total_bytes"):
        processor(text="<image>ok.png</image>" * 3, media_policy=MediaPolicy(max_total_bytes=int(size * 2.5)))
    assert decoded == []
    # the item count is checked before anything is read: missing files are not even looked at
    with pytest.raises(MediaError, match="max_items"):
        processor(
            text="<image>nope1.png</image><image>nope2.png</image><image>nope3.png</image>",
            media_policy=MediaPolicy(max_items=2),
        )


def test_totals_are_per_prompt_not_per_batch(root, processor):
    policy = MediaPolicy(max_items=2)
    out = processor(text=["<image>ok.png</image>" * 2, "<image>ok.png</image>" * 2], media_policy=policy)
    assert len(out["image_grid_thw"]) == 4


def test_video_frames_count_towards_the_pixel_total(root, decoded):
    frames = [Image.new("RGB", (100, 100), (i * 40, 0, 0)) for i in range(4)]
    frames[0].save(root / "clip.gif", save_all=True, append_images=frames[1:], duration=500, loop=0)
    encoder = MediaEncoder()
    with pytest.raises(MediaError, match="max_total_pixels"):
        encoder.expand(["<video>clip.gif</video>"], policy=MediaPolicy(max_total_pixels=30_000))
    assert decoded == []
    texts, _ = encoder.expand(["<video>clip.gif</video>"], policy=MediaPolicy(max_total_pixels=40_000))
    assert decoded == ["_decode_frames"]


# ---- 2. audio samples that are not audio ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_wav_is_refused(root, bad):
    samples = tone(0.5)
    samples[100] = bad
    (root / "bad.wav").write_bytes(float_wav(samples))
    with pytest.raises(MediaError, match="NaN or infinite"):
        load_audio("bad.wav")


@pytest.mark.parametrize("value,subtype", [(1e30, "FLOAT"), (32767.0, "FLOAT"), (1e300, "DOUBLE")])
def test_absurd_float_wav_magnitudes_are_refused(root, value, subtype):
    samples = tone(0.5).astype(np.float64)
    samples[100] = value
    (root / "loud.wav").write_bytes(float_wav(samples, subtype=subtype))
    with pytest.raises(MediaError, match=r"NaN or infinite|outside \[-1, 1\]") as e:
        load_audio("loud.wav")
    assert e.value.tag == "<audio>"


def test_hot_but_plausible_float_wav_is_kept_as_is(root):
    samples = tone(0.5) * 5  # peaks at 1.5 (+3.5 dBFS): a hot master, not garbage
    (root / "hot.wav").write_bytes(float_wav(samples))
    assert torch.equal(load_audio("hot.wav"), torch.from_numpy(samples))


def test_bad_samples_fail_every_entry_point(root, processor, pipe):
    samples = tone(0.5)
    samples[10] = np.nan
    (root / "nan.wav").write_bytes(float_wav(samples))
    with pytest.raises(MediaError, match="NaN"):
        processor.tokenizer("<audio>nan.wav</audio>")
    with pytest.raises(MediaError, match=r"outside \[-1, 1\]"):
        processor(text="<|audio_pad|>", audio=[tone(0.5) * 32767])  # int16 scale passed as float
    with pytest.raises(MediaError, match="NaN"):
        pipe(audio="nan.wav", text="what is said?")
    assert pipe.model.calls == []


# ---- 3. extreme aspect ratios --------------------------------------------------------------------------------------------


def test_extreme_aspect_ratio_is_a_media_error_naming_the_tag(root, processor):
    Image.new("RGB", (1, 5000)).save(root / "thin.png")
    with pytest.raises(MediaError, match="aspect ratio") as e:
        processor.tokenizer("look <img>thin.png</img>")
    assert e.value.tag == "<img>" and "thin.png" in str(e.value)
    with pytest.raises(MediaError, match="aspect ratio"):
        processor(text="<|image_pad|>", images=[Image.new("RGB", (5000, 1))])
    frames = [Image.new("RGB", (3000, 10))] * 2
    with pytest.raises(MediaError, match="aspect ratio"):
        processor(text="<|video_pad|>", videos=[frames])
    Image.new("RGB", (20, 4000)).save(root / "tall.png")  # 200:1 is the image processor's own limit: allowed
    assert processor.tokenizer("<img>tall.png</img>", return_tensors="pt")["pixel_values"].shape[0] > 0


# ---- 4. tag-like text kept as text -----------------------------------------------------------------------------------------

HTML = "What does <img>logo.png</img> do in this HTML?"


def test_media_tags_off_on_the_tokenizer_call_and_attribute(root, qwen3_tokenizer, tmp_path):
    plain = qwen3_tokenizer(HTML, media_tags=False)
    assert "pixel_values" not in plain and qwen3_tokenizer.decode(plain["input_ids"]) == HTML
    with pytest.raises(MediaError, match="file not found"):
        qwen3_tokenizer(HTML)
    tok = copy.deepcopy(qwen3_tokenizer)  # the builder's tokenizer is shared: never mutate it
    tok.media_tags = False
    assert tok(HTML)["input_ids"] == plain["input_ids"]
    tok.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())["media_tags"] is False
    reloaded = Qwen3MultimodalTokenizer.from_pretrained(tmp_path / "saved")
    assert reloaded.media_tags is False and reloaded(HTML)["input_ids"] == plain["input_ids"]
    assert reloaded("<img>ok.png</img>", media_tags=True)["pixel_values"].shape[0] > 0  # per call wins


def test_media_tags_off_on_the_processor(root, processor, qwen3_tokenizer):
    expected = qwen3_tokenizer(HTML, media_tags=False)["input_ids"]
    assert processor(text=HTML, media_tags=False)["input_ids"] == expected
    messages = [{"role": "user", "content": HTML}]
    out = processor.apply_chat_template(messages, tokenize=True, return_dict=True, media_tags=False)
    assert "pixel_values" not in out and HTML in qwen3_tokenizer.decode(out["input_ids"])
    tok = copy.deepcopy(qwen3_tokenizer)
    tok.media_tags = False  # the processor follows its tokenizer's setting
    assert Qwen3MultimodalProcessor(tokenizer=tok)(text=HTML)["input_ids"] == expected


def test_media_tags_off_on_the_pipeline(root, processor):
    for pipe, kwargs in (
        (Pipeline(RecordingModel(), processor, media_tags=False), {}),
        (Pipeline(RecordingModel(), processor), {"media_tags": False}),
    ):
        pipe(text=HTML, max_length=1, **kwargs)
        call = pipe.model.calls[-1]
        assert "pixel_values" not in call and "media_tags" not in call
        assert HTML in processor.tokenizer.decode(call["input_ids"][0])
    with pytest.raises(MediaError, match="file not found"):
        Pipeline(RecordingModel(), processor)(text=HTML)


def test_media_tags_off_on_the_command_line(root, capsys):
    from transformers_qwen3.cli import main

    model = root / "tiny"
    assert main(["init", str(model), "--preset", "tiny-mm"]) == 0
    assert main(["generate", str(model), "--prompt", HTML, "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert "file not found" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["generate", str(model), "--prompt", HTML, "--max-new-tokens", "1", "--no-media-tags"]) == 0


# ---- 5. placeholder tokens typed into text -----------------------------------------------------------------------------


@pytest.mark.parametrize("special", SPECIALS)
def test_placeholders_in_chat_text_are_refused(root, processor, special):
    messages = [{"role": "user", "content": [{"type": "text", "text": f"what is {special}?"}]}]
    for call in (
        lambda: processor.tokenizer.apply_chat_template(messages, tokenize=False),
        lambda: processor.tokenizer.apply_chat_template(messages, tokenize=True),
        lambda: processor.apply_chat_template(messages, tokenize=True, return_dict=True),
        lambda: processor.apply_chat_template([{"role": "system", "content": special}], tokenize=False),
    ):
        with pytest.raises(MediaError, match="content part") as e:
            call()
        assert e.value.tag == special


def test_sanitized_chat_encodes_placeholders_as_text(processor):
    messages = [{"role": "user", "content": "what is <|image_pad|>?"}]
    ids = processor.tokenizer.apply_chat_template(messages, sanitize_control_tokens=True)["input_ids"]
    assert IMAGE not in ids and "<|image_pad|>" in processor.tokenizer.decode(ids)


@pytest.mark.parametrize("special", ["<|image_pad|>", "<|audio_pad|>", "<|vision_start|>", "<|audio_end|>"])
def test_placeholders_beside_inline_tags_are_refused_by_the_tokenizer(root, qwen3_tokenizer, special):
    with pytest.raises(MediaError, match="content part") as e:
        qwen3_tokenizer(f"<image>ok.png</image> and what is {special}?")
    assert e.value.tag == special


def test_placeholder_count_mismatch_is_a_media_error(processor):
    with pytest.raises(MediaError, match="2 <\\|image_pad\\|> placeholder") as e:
        processor(text="<|image_pad|> and <|image_pad|>", images=[Image.new("RGB", (32, 32))])
    assert e.value.tag == "<|image_pad|>"


def test_placeholders_in_pipeline_text_are_refused(root, pipe):
    with pytest.raises(MediaError, match="content part"):
        pipe(text="what is <|image_pad|>?")
    with pytest.raises(MediaError, match="content part"):
        pipe(text="hi", system="<|vision_end|> rules")
    with pytest.raises(MediaError, match="content part"):
        pipe(images="ok.png", text="and <|audio_pad|>")
    assert pipe.model.calls == []


# ---- 6. error messages never echo file contents -------------------------------------------------------------------------

SECRET = "hunter2-TOPSECRET"


def test_a_text_file_as_media_does_not_leak_into_the_message(root, processor):
    (root / "notes.txt").write_text(f"password={SECRET}\nsecond line {SECRET}\n")
    for text in ("<image>notes.txt</image>", "<video>notes.txt</video>", "<audio>notes.txt</audio>"):
        with pytest.raises(MediaError) as e:
            processor.tokenizer(text)
        assert SECRET not in str(e.value) and "notes.txt" in str(e.value), str(e.value)


@pytest.mark.parametrize("uri", [f"data:text/plain,password={SECRET}", data_uri(SECRET.encode() * 3, "text/plain")])
def test_data_uri_contents_are_not_echoed(root, processor, uri):
    with pytest.raises(MediaError) as e:
        processor.tokenizer(f"<image>{uri}</image>")
    message = str(e.value)
    assert SECRET not in message and base64.b64encode(SECRET.encode()).decode()[:12] not in message, message
    assert "data:text/plain" in message and "cannot decode image" in message


def test_decoder_messages_lose_quoted_file_bytes(root, monkeypatch):
    # Pillow's PNG reader quotes the chunk id it chokes on ("broken PNG file (chunk b'....')"): 4 bytes of the file
    def broken(*args, **kwargs):
        raise SyntaxError(f"broken PNG file (chunk b'{SECRET}') near '{SECRET}'")

    monkeypatch.setattr(Image, "open", broken)
    with pytest.raises(MediaError, match="broken PNG file") as e:
        load_image("ok.png")
    assert SECRET not in str(e.value)


# ---- 7. one MediaError class for every copy of the Hub file ---------------------------------------------------------------


def load_copy(tmp_path, name):
    path = tmp_path / f"{name}.py"
    shutil.copy(hub.__file__, path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_a_copy_of_the_hub_file_raises_the_same_media_error(root, tmp_path):
    other = load_copy(tmp_path, "copied_media_qwen3_multimodal")
    try:
        assert other.MediaError is not None and other is not hub
        try:
            other.load_image("missing.png")
        except transformers_qwen3.MediaError as e:  # the copy's error, caught by our name
            assert "file not found" in str(e)
        try:
            load_image("missing.png")
        except other.MediaError as e:  # and ours by the copy's name
            assert isinstance(e, other.MediaError)
        assert issubclass(other.MediaError, ValueError) and issubclass(transformers_qwen3.MediaError, other.MediaError)
    finally:
        sys.modules.pop("copied_media_qwen3_multimodal", None)


def test_remote_code_tokenizer_errors_are_caught_by_our_name(root, qwen3_tokenizer, tmp_path):
    # what AutoTokenizer.from_pretrained(folder, trust_remote_code=True) does where our package is not registered
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    qwen3_tokenizer.save_pretrained(tmp_path / "folder")
    remote = get_class_from_dynamic_module(
        "tokenization_qwen3_multimodal.Qwen3MultimodalTokenizer", tmp_path / "folder"
    )
    assert remote.__module__.startswith("transformers_modules.") and remote is not Qwen3MultimodalTokenizer
    tok = remote.from_pretrained(tmp_path / "folder")
    with pytest.raises(transformers_qwen3.MediaError, match="file not found"):
        tok("<image>missing.png</image>")
    with pytest.raises(transformers_qwen3.MediaError, match="content part"):
        tok.apply_chat_template([{"role": "user", "content": "<|image_pad|>"}], tokenize=False)
