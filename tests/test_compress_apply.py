"""One plan, two runtimes (issue 11, item 4): the structure applier (compress/apply.py over formats/compression.py)
and ``convert --plan``.

Oracles: transformers' native Qwen3ForCausalLM with the same weights permuted and sliced by plain indexing here
(per-layer widths: each native layer's MLP cut to its width, the skipped layer removed); for deepstack, our model
with the skipped layer turned into the identity by a forward hook; llama.cpp itself through ``verify`` (F32 against
the compressed checkpoint, quantized files against their dequantized weights) and llama.cpp's own quantizer kernel
(``ggml_quantize_chunk``) for the imatrix.
"""

import json
import re
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch
from helpers.tiny_models import max_diff, text_pair
from transformers_qwen3.convert import convert_checkpoint

from transformers_qwen3 import Qwen3MultimodalConfig, Qwen3MultimodalForConditionalGeneration
from transformers_qwen3.checkpoint.hub_folder import save_hub_folder
from transformers_qwen3.checkpoint.presets import text_config, tiny_multimodal_config
from transformers_qwen3.compress import calibrate as C
from transformers_qwen3.compress.apply import apply_structure, compress_folder
from transformers_qwen3.compress.importance import slice_mlp
from transformers_qwen3.compress.quants import quantize
from transformers_qwen3.formats.compression import SCHEMA, PlanError, check_plan, checkpoint_sha256
from transformers_qwen3.formats.folder import open_checkpoint
from transformers_qwen3.runtime.verify import verify

IDS = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(3))


def make_plan(full, widths, skip, sha="0" * 64, seed=0, types=None):
    """A plan as `transformers-qwen3 plan` writes it (schema v1), with random neuron orders."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i, width in enumerate(widths):
        layers.append(
            {
                "index": i,
                "skip": i in skip,
                "new_index": None,
                "ffn_width": width,
                "ffn_full": full,
                "ffn_order": torch.randperm(full, generator=g).tolist(),
                "kl": 0.0,
            }
        )
    return {"schema": SCHEMA, "version": 1, "model_sha256": sha, "layers": layers, "tensors": types or {}}


def native_oracle(native, plan):
    """The native model permuted, sliced and shortened by hand: the structure the plan describes."""
    layers = native.model.layers
    kept = []
    with torch.no_grad():
        for entry, layer in zip(plan["layers"], layers, strict=True):
            if entry["skip"]:
                continue
            order = torch.tensor(entry["ffn_order"])
            mlp = layer.mlp
            mlp.gate_proj.weight.copy_(mlp.gate_proj.weight[order])
            mlp.up_proj.weight.copy_(mlp.up_proj.weight[order])
            mlp.down_proj.weight.copy_(mlp.down_proj.weight[:, order])
            slice_mlp(mlp, entry["ffn_width"])
            kept.append(layer)
    for i, layer in enumerate(kept):
        layer.self_attn.layer_idx = i
    native.model.layers = torch.nn.ModuleList(kept)
    native.config.num_hidden_layers = len(kept)
    native.config.layer_types = native.config.layer_types[: len(kept)]
    return native


def test_applied_structure_is_the_native_model_sliced():
    """(a) per-layer widths [64, 32, skip, 48]: our compressed model computes what the native Qwen3ForCausalLM
    computes with the same neurons kept (logits and greedy decoding with the KV cache, whose slots are renumbered)."""
    native, ours = text_pair(num_hidden_layers=4)
    plan = make_plan(64, [64, 32, 64, 48], skip={2})
    compressed = apply_structure(ours, plan)
    oracle = native_oracle(native, plan)
    text = compressed.config.text_config
    assert (text.intermediate_size, text.skipped_layers, text.num_hidden_layers) == ([64, 32, 48], [2], 3)
    with torch.no_grad():
        assert max_diff(compressed(input_ids=IDS).logits, oracle(input_ids=IDS).logits) < 1e-6
        a = compressed.generate(IDS[:1], max_new_tokens=6, do_sample=False)
        b = oracle.generate(IDS[:1], max_new_tokens=6, do_sample=False)
    assert a.tolist() == b.tolist()


def test_native_class_takes_one_width_and_refuses_per_layer_widths():
    native, ours = text_pair(num_hidden_layers=3, seed=1)
    plan = make_plan(64, [32, 32, 32], skip={1})
    oracle = native_oracle(text_pair(num_hidden_layers=3, seed=1)[0], plan)
    compressed = apply_structure(native, plan)  # transformers' own class: one width, fewer layers
    with torch.no_grad():
        assert max_diff(compressed(input_ids=IDS).logits, oracle(input_ids=IDS).logits) < 1e-6
    with pytest.raises(PlanError, match="different FFN widths"):
        apply_structure(text_pair(num_hidden_layers=3)[0], make_plan(64, [64, 32, 64], skip=set()))


# --- folders and GGUF -----------------------------------------------------------------------------------------------
HIDDEN, FULL = 64, 512
WIDTHS, SKIP = [512, 256, 512, 256], {2}


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """Ours, text-only: 4 layers, FFN 512 (so a 256-wide ffn_down takes K-quants), the real tokenizer, tied."""
    from transformers_qwen3.checkpoint.tokenizer import build_qwen3_tokenizer

    root = tmp_path_factory.mktemp("apply")
    torch.manual_seed(0)
    text = {**text_config("tiny"), "num_hidden_layers": 4, "intermediate_size": FULL, "head_dim": 16}
    model = Qwen3MultimodalForConditionalGeneration(Qwen3MultimodalConfig(text_config=text)).eval()
    with torch.no_grad():  # weights of a trained model's scale: logits far from flat, so top-1 means something
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    src = save_hub_folder(model, build_qwen3_tokenizer(), root / "src")
    sha = checkpoint_sha256(open_checkpoint(src))
    types = {}
    for name, p in model.named_parameters():
        if p.dim() == 2:
            types[name] = "F16" if "self_attn" in name else "Q8_0"
    types["model.layers.1.mlp.down_proj.weight"] = "Q4_K"  # 256 columns after the cut: whole K-quant blocks
    plan = make_plan(FULL, WIDTHS, SKIP, sha=sha, types={n: {"type": t} for n, t in types.items()})
    (root / "plan.json").write_text(json.dumps(plan))
    out = compress_folder(src, root / "plan.json", root / "compressed")
    return root, src, root / "plan.json", out


def test_compressed_folder_reloads_as_the_in_memory_model(text_model):
    from transformers import AutoModelForCausalLM

    root, src, plan_path, out = text_model
    saved = json.loads((out / "config.json").read_text())["text_config"]
    assert saved["intermediate_size"] == [512, 256, 256] and saved["skipped_layers"] == [2]
    assert saved["num_hidden_layers"] == 3 and len(saved["layer_types"]) == 3
    reloaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    in_memory = apply_structure(
        Qwen3MultimodalForConditionalGeneration.from_pretrained(src).eval(), json.loads(plan_path.read_text())
    )
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=IDS).logits, in_memory(input_ids=IDS).logits)


def _gguf_params(path):
    return sum(int(np.prod(t.shape)) for t in gguf.GGUFReader(path).tensors)


def _text_params(model):
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("model.visual", "model.audio")))


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_planned_gguf_matches_the_compressed_model(text_model, tmp_path, outtype):
    """(b) + (c): llama.cpp runs the planned GGUF (per-layer feed_forward_length, one layer dropped) and `verify`
    passes against the compressed transformers checkpoint; both hold the same number of parameters."""
    from transformers import AutoModelForCausalLM

    root, src, plan_path, out = text_model
    (path,) = convert_checkpoint(src, tmp_path, outtype, plan=plan_path, progress=False)
    reader = gguf.GGUFReader(path)
    assert list(reader.get_field("qwen3.feed_forward_length").contents()) == [512, 256, 256]
    assert reader.get_field("qwen3.block_count").contents() == 3
    results = verify(out, path, checks=["tokenizer", "text_logits"])
    assert all(r.passed for r in results), [r.summary for r in results]
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert _gguf_params(path) == _text_params(model)


def _write_imatrix(path, hf_imatrix):
    calib = C.Calibration("", {}, hf_imatrix, 64, {}, [], [], [], 64, True)
    C.write_llama_imatrix(calib, path)


def test_plan_types_and_imatrix_through_llama_quantizer(text_model, tmp_path):
    """`convert --plan` (CLI): every weight gets the plan's type; the Q4_K ffn_down of the cut layer is exactly
    ggml's quantization of the permuted, cut weight with the permuted, cut importance matrix; verify passes."""
    root, src, plan_path, out = text_model
    plan = json.loads(plan_path.read_text())
    g = torch.Generator().manual_seed(5)
    im = {f"model.layers.{i}.mlp.down_proj.weight": torch.rand(FULL, generator=g) + 0.01 for i in range(4)}
    im_path = tmp_path / "imatrix.gguf"
    _write_imatrix(im_path, im)
    cli = [sys.executable, "-m", "transformers_qwen3.cli", "convert", str(src), str(tmp_path / "q")]
    proc = subprocess.run(
        [*cli, "--plan", str(plan_path), "--imatrix", str(im_path), "--no-progress"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    (path,) = sorted((tmp_path / "q").glob("*.gguf"))
    assert path.name == "src-PLAN.gguf"
    written = {t.name: t for t in gguf.GGUFReader(path).tensors}
    assert written["blk.1.ffn_down.weight"].tensor_type.name == "Q4_K"
    assert written["blk.0.attn_q.weight"].tensor_type.name == "F16"
    assert written["blk.2.ffn_up.weight"].tensor_type.name == "Q8_0"  # original layer 3, renumbered
    assert "blk.3.ffn_up.weight" not in written

    order = torch.tensor(plan["layers"][1]["ffn_order"])[:256]
    weight = open_checkpoint(src).load("model.layers.1.mlp.down_proj.weight")[:, order]
    expected = quantize(weight.numpy(), "Q4_K", im["model.layers.1.mlp.down_proj.weight"][order].numpy())
    got = np.asarray(written["blk.1.ffn_down.weight"].data).reshape(expected.shape)
    assert np.array_equal(got, expected)
    assert not np.array_equal(got, quantize(weight.numpy(), "Q4_K", None))  # the imatrix changed the rounding

    results = verify(out, path, checks=["text_logits"])
    assert all(r.passed for r in results), [r.summary for r in results]


# --- Qwen3-VL deepstack ---------------------------------------------------------------------------------------------
def _vision_model(n_layers=3):
    config = tiny_multimodal_config()
    config["text_config"] = {**config["text_config"], "num_hidden_layers": n_layers}
    config["audio_config"] = None
    torch.manual_seed(0)
    return Qwen3MultimodalForConditionalGeneration(Qwen3MultimodalConfig(**config)).eval()


def _image_inputs(model):
    from transformers_qwen3.remote.tokens_qwen3_multimodal import IMAGE_TOKEN_ID, VISION_END_ID, VISION_START_ID

    grid = torch.tensor([[1, 4, 4]])  # 16 patches → 4 tokens after the 2x2 merge
    pixels = torch.randn(16, 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(1))
    ids = [[100, 200, VISION_START_ID, *[IMAGE_TOKEN_ID] * 4, VISION_END_ID, 300, 400]]
    return dict(input_ids=torch.tensor(ids), pixel_values=pixels, image_grid_thw=grid)


def test_deepstack_layers_cannot_be_skipped():
    model = _vision_model()
    deepstack = len(model.config.vision_config.deepstack_visual_indexes)
    assert deepstack == 1
    with pytest.raises(PlanError, match="deepstack"):
        apply_structure(model, make_plan(128, [128, 128, 128], skip={0}))


def test_image_through_a_skip_after_the_deepstack_layers():
    """Skipping layer 2 of 3 (after the deepstack layer): the image prompt's logits equal the uncompressed model's
    with layer 2 made the identity, so the vision features still land after layer 0."""
    model = _vision_model()
    inputs = _image_inputs(model)
    plan = make_plan(128, [128, 128, 128], skip={2})
    for entry in plan["layers"]:
        entry["ffn_order"] = list(range(128))  # identity order: the hook oracle keeps the stored neurons
    with torch.no_grad():
        handle = model.model.layers[2].register_forward_hook(C._skip_layer, with_kwargs=True)
        expected = model(**inputs).logits
        handle.remove()
        full = model(**inputs).logits
        got = apply_structure(model, plan)(**inputs).logits
    assert torch.equal(got, expected) and not torch.equal(got, full)


def test_convert_refuses_a_deepstack_skip(tmp_path):
    """The GGUF side reads the same rule: tiny-mm (deepstack after layer 0) with layer 0 skipped, nothing written."""
    from helpers.convert_fixtures import checkpoint

    src = checkpoint(tmp_path, "mm")
    plan = make_plan(128, [128, 128], skip={0}, sha=checkpoint_sha256(open_checkpoint(src)))
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(PlanError, match="deepstack"):
        convert_checkpoint(src, tmp_path / "out", "f32", plan=tmp_path / "plan.json", progress=False)
    assert not (tmp_path / "out").exists()


# --- bad plans -------------------------------------------------------------------------------------------------------
def _cli_convert(src, out, plan):
    cli = [sys.executable, "-m", "transformers_qwen3.cli", "convert", str(src), str(out), "--plan", str(plan)]
    return subprocess.run([*cli, "--outtype", "f32", "--no-progress"], capture_output=True, text=True)


@pytest.mark.parametrize(
    "change,reason",
    [
        (lambda p: p.update(model_sha256="f" * 64), "made for another model"),
        (lambda p: p.update(version=2), "newer than this version reads"),
        (lambda p: p["layers"][1].update(ffn_width=600), "ffn_width"),
        (lambda p: p["layers"][1].update(ffn_order=[0] * 512), "not a permutation"),
        (lambda p: p["layers"].pop(), "3 decoder layers, the model 4"),
        (lambda p: p["layers"][1].pop("ffn_order"), "no ffn_order"),
        (lambda p: p["tensors"].update({"x": {"type": "Q9_Z"}}), "unknown ggml type"),
        (lambda p: [e.update(skip=True) for e in p["layers"]], "every layer is skipped"),
    ],
)
def test_bad_plans_are_refused_and_nothing_is_written(text_model, tmp_path, change, reason):
    """(d) one line, exit code 2, no traceback, OUTDIR left without a file."""
    root, src, plan_path, _ = text_model
    plan = json.loads(plan_path.read_text())
    change(plan)
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps(plan))
    proc = _cli_convert(src, tmp_path / "out", bad)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(reason, proc.stderr), proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_plan_shape_mismatch_is_refused(text_model):
    root, src, plan_path, _ = text_model
    plan = json.loads(plan_path.read_text())
    for entry in plan["layers"]:
        entry["ffn_full"] = 1024
        entry["ffn_order"] = list(range(1024))
    with pytest.raises(PlanError, match="512 FFN neurons in this model, 1024 in the plan"):
        apply_structure(Qwen3MultimodalForConditionalGeneration.from_pretrained(src), check_plan(plan))
