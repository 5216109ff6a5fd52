"""The brief's Pipeline API and the brief's tokenizer snippet on a saved tiny-mm folder.

In-process: ``Pipeline.from_pretrained`` (single prompt, batch with different media, streaming equal to the plain
call). In a clean interpreter where transformers_qwen3 cannot be imported (a Hub user's machine): AutoTokenizer +
the brief's ``tok("...<image>photo.jpg</image>", return_tensors="pt")`` + ``model.generate(**inputs)``, and
transformers' own ``pipeline("image-text-to-text", model=folder, trust_remote_code=True)``, which loads our
processor through AutoProcessor.
"""

import json

import numpy as np
import pytest
import soundfile
import torch
from helpers.processes import run_clean_python
from PIL import Image

from transformers_qwen3 import Qwen3MultimodalConfig, Qwen3MultimodalForConditionalGeneration
from transformers_qwen3.checkpoint.hub_folder import save_hub_folder
from transformers_qwen3.checkpoint.presets import PRESETS


@pytest.fixture(scope="module")
def folder(tmp_path_factory, qwen3_tokenizer):
    torch.manual_seed(0)
    model = Qwen3MultimodalForConditionalGeneration(Qwen3MultimodalConfig(**PRESETS["tiny-mm"]))
    dst = tmp_path_factory.mktemp("hub") / "tiny-mm"
    save_hub_folder(model, qwen3_tokenizer, dst)  # a multimodal model gets the default processor
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)).save(dst.parent / "photo.jpg")
    soundfile.write(dst.parent / "clip.wav", (rng.standard_normal(24000) * 0.1).astype("float32"), 16000)
    return dst


@pytest.fixture(scope="module")
def pipe(folder):
    from qwen3_multimodal import Pipeline

    return Pipeline.from_pretrained(folder, allowed_roots=[str(folder.parent)])


def test_saved_folder_has_the_processor_with_its_auto_map(folder):
    config = json.loads((folder / "processor_config.json").read_text())
    assert config["auto_map"] == {"AutoProcessor": "processing_qwen3_multimodal.Qwen3MultimodalProcessor"}
    assert config["image_processor"]["patch_size"] == 16 and config["feature_extractor"]["feature_size"] == 128
    assert (folder / "processing_qwen3_multimodal.py").is_file()


def test_alias_module_exports_the_pipeline():
    import qwen3_multimodal
    import transformers_qwen3

    assert qwen3_multimodal.Pipeline is transformers_qwen3.Pipeline


def test_pipeline_single_batch_and_stream(pipe, folder):
    photo, clip = str(folder.parent / "photo.jpg"), str(folder.parent / "clip.wav")
    one = pipe(images=photo, text="描述图片中的异常情况", max_length=6, do_sample=False)
    assert isinstance(one, str)
    batch = pipe(
        images=[photo, None, photo], audio=[None, clip, clip], text=["a", "b", "c"], max_length=4, do_sample=False
    )
    assert isinstance(batch, list) and len(batch) == 3
    again = pipe(
        images=[photo, None, photo], audio=[None, clip, clip], text=["a", "b", "c"], max_length=4, do_sample=False
    )
    assert batch == again
    # streaming yields the same text as the plain call, in pieces
    pieces = list(pipe.stream(images=photo, text="描述图片中的异常情况", max_length=6, do_sample=False))
    assert "".join(pieces).strip() == one
    with pytest.raises(ValueError, match="one entry per prompt"):
        pipe(images=[photo], text=["a", "b"])


def test_pipeline_refuses_media_outside_its_roots(pipe):
    from transformers_qwen3 import MediaError

    with pytest.raises(MediaError, match="outside the allowed folders"):
        pipe(images="/etc/hostname", text="x", max_length=2)


CLEAN = """
import torch
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
folder = {folder!r}

# the product brief's snippet (a local image instead of a URL: network is off by default)
tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
inputs = tok("解释这张图片中的科学原理:<image>photo.jpg</image>", return_tensors="pt")
print("KEYS", sorted(inputs))
outputs = model.generate(**inputs, max_new_tokens=3, do_sample=False)
print("GENERATED", outputs.shape[1] - inputs["input_ids"].shape[1], type(tok.decode(outputs[0])).__name__)

# transformers' own pipeline: AutoProcessor + AutoModelForImageTextToText from the folder's auto_map
pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
print("PROCESSOR", type(pipe.processor).__name__)
messages = [{{"role": "user", "content": [{{"type": "image", "path": "photo.jpg"}},
                                         {{"type": "text", "text": "What is this?"}}]}}]
out = pipe(text=messages, max_new_tokens=3, do_sample=False)
print("PIPELINE", out[0]["generated_text"][-1]["role"])
"""


def test_brief_snippet_and_transformers_pipeline_in_a_clean_process(folder):
    out = run_clean_python(CLEAN.format(folder=str(folder)), cwd=folder.parent)
    assert "KEYS ['attention_mask', 'image_grid_thw', 'input_ids', 'pixel_values']" in out, out
    assert "GENERATED 3 str" in out, out
    assert "PROCESSOR Qwen3MultimodalProcessor" in out, out
    assert "PIPELINE assistant" in out, out
