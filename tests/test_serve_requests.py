"""The serving layer without a model: OpenAI messages → our template's messages + decoded media (against Pillow and
soundfile as oracles), the refusals, the GGUF folder rules and the verb's one-line errors."""

import base64
import io
import subprocess
import sys

import numpy as np
import pytest
import soundfile
from PIL import Image

from transformers_qwen3.errors import FolderError
from transformers_qwen3.serve.messages import BadRequest, read_messages, server_policy
from transformers_qwen3.serve.model_files import gguf_pair, resolve


def png_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def wav_b64(samples: np.ndarray, rate: int = 16000) -> str:
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


def image_part(image):
    return {"type": "image_url", "image_url": {"url": png_url(image)}}


def audio_part(samples, fmt="wav"):
    return {"type": "input_audio", "input_audio": {"data": wav_b64(samples), "format": fmt}}


@pytest.fixture
def media():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    samples = (0.3 * np.sin(np.arange(8000) / 7.0)).astype(np.float32)
    return image, samples


def test_media_decoded_in_the_order_written(media):
    image, samples = media
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [audio_part(samples), {"type": "text", "text": "and"}, image_part(image)]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [image_part(image.rotate(90, expand=True))]},
    ]
    conv = read_messages(messages)
    assert conv.kinds == ["audio", "image", "image"]
    # oracles: Pillow's own decode of the PNG, soundfile's decode of the WAV (16 kHz: no resampling)
    assert np.array_equal(np.asarray(conv.media[1][1]), np.asarray(image))
    assert np.array_equal(np.asarray(conv.media[2][1]), np.asarray(image.rotate(90, expand=True)))
    expected, _ = soundfile.read(io.BytesIO(base64.b64decode(wav_b64(samples))), dtype="float32")
    np.testing.assert_array_equal(conv.media[0][1], expected)
    assert conv.messages[0] == messages[0] and [p["type"] for p in conv.messages[1]["content"]] == [
        "input_audio",
        "text",
        "image_url",
    ]


def test_audio_at_another_rate_is_resampled_to_16k(media):
    _, samples = media
    buf = io.BytesIO()
    soundfile.write(buf, samples, 8000, format="WAV", subtype="FLOAT")
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(buf.getvalue()).decode(), "format": "wav"}}
    ((kind, out),) = read_messages([{"role": "user", "content": [part]}]).media
    assert kind == "audio" and abs(len(out) - 2 * len(samples)) <= 1


def _big_png() -> str:
    return png_url(Image.new("1", (9000, 8000)))


BAD = [
    ([], "non-empty"),
    ([{"content": "no role"}], "role"),
    ([{"role": "user", "content": 3}], "string or a list"),
    ([{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "x"}}]}], "unsupported content part"),
    ([{"role": "user", "content": [{"type": "text"}]}], "text"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}], "data: URL"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}], "data: URL"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}]}], "fetch"),
    (
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!"}}]}],
        "base64",
    ),
    (
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}],
        "cannot decode image",
    ),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _big_png()}}]}], "pixel cap"),
    (
        [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "aGVsbG8=", "format": "wav"}}]}],
        "cannot decode audio",
    ),
    (
        [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "@@", "format": "wav"}}]}],
        "base64",
    ),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "ogg"}}]}], "format"),
]


@pytest.mark.parametrize("messages,words", BAD, ids=[w for _, w in BAD])
def test_bad_messages_are_one_clear_bad_request(messages, words):
    with pytest.raises(BadRequest) as info:
        read_messages(messages)
    assert words.lower() in str(info.value).lower()
    assert info.value.status == 400


def test_the_server_policy_reads_no_local_files():
    assert server_policy().roots() == []


def test_gguf_folder_rules(tmp_path):
    good = tmp_path / "m"
    good.mkdir()
    (good / "m-F16.gguf").write_bytes(b"")
    (good / "mmproj-m-F16.gguf").write_bytes(b"")
    assert gguf_pair(good) == (good / "m-F16.gguf", good / "mmproj-m-F16.gguf")
    (good / "m-Q8_0.gguf").write_bytes(b"")
    with pytest.raises(FolderError, match="one text-model GGUF"):
        gguf_pair(good)
    with pytest.raises(FolderError, match="not a folder"):
        resolve(tmp_path / "missing")


@pytest.mark.parametrize(
    "argv,words",
    [
        (["serve", "/no/such/folder"], "not a folder"),
        (["serve", ".", "--engine", "vllm"], "Hub-layout"),
    ],
)
def test_serve_verb_errors_are_one_line(argv, words, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "transformers_qwen3.cli", *argv], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr
