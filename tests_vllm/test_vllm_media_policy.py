"""The plugin's processor applies the media policy's caps (MediaPolicy: the caps of our own loader and of the llama.cpp
server) to the media vLLM decoded, before anything is resized: no engine needed, vLLM's own parser makes the items.
The 400 a client gets for it is checked end to end by the client suite (tests/serving, 'image over the pixel cap')."""

import numpy as np
import pytest
from PIL import Image

SR = 16000


def items(images=(), clips=()):
    from vllm.multimodal.parse import MultiModalDataParser

    parser = MultiModalDataParser(target_sr=SR, target_channels=1, audio_resample_method="soxr")
    data = {}
    if images:
        data["image"] = list(images)
    if clips:
        data["audio"] = [(c, SR) for c in clips]
    return parser.parse_mm_data(data)


def test_media_within_the_caps_pass():
    from transformers_qwen3.remote.media_qwen3_multimodal import MediaPolicy
    from transformers_qwen3.vllm_plugin.model import check_media

    policy = MediaPolicy(max_image_pixels=100, max_total_pixels=200, max_audio_seconds=1.0, max_items=3)
    check_media(items([Image.new("RGB", (10, 10))] * 2, [np.zeros(SR, np.float32)]), SR, policy)


@pytest.mark.parametrize(
    "images, clips, cap, message",
    [
        ([(11, 10)], [], {"max_image_pixels": 100}, "image is 11x10, over the 100-pixel cap"),
        ([(10, 10)] * 3, [], {"max_image_pixels": 100, "max_total_pixels": 250}, "250-pixel cap for one request"),
        ([], [1.5], {"max_audio_seconds": 1.0}, "audio is 1.5 s, over the 1 s cap"),
        ([], [0.5] * 3, {"max_total_audio_seconds": 1.0}, "1 s cap for one request"),
        ([(2, 2)] * 2, [0.1] * 2, {"max_items": 3}, "4 media items, over the 3-item cap"),
    ],
)
def test_media_over_a_cap_are_refused_naming_it(images, clips, cap, message):
    from transformers_qwen3.remote.media_qwen3_multimodal import MediaError, MediaPolicy
    from transformers_qwen3.vllm_plugin.model import check_media

    mm = items([Image.new("RGB", size) for size in images], [np.zeros(int(s * SR), np.float32) for s in clips])
    with pytest.raises(MediaError, match=message):
        check_media(mm, SR, MediaPolicy(**cap))
    assert issubclass(MediaError, ValueError)  # what vLLM's server answers with a 400
