"""Calibration and planning on a tiny native Qwen3 (hidden 256, FFN 512, 3 layers: every row fits the K-quants).

Oracles: gguf-py's own Q8_0 / Q4_0 quantizer (bit-identical to llama.cpp's, as gguf-py's tests check) for our round
trip through llama.cpp; the importance matrix recomputed by hand from the layer inputs; llama.cpp's imatrix GGUF
layout read back with gguf-py's reader; the planner's byte count recomputed from gguf-py's block sizes."""

import json
import os
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch
from helpers.convert_fixtures import build_qwen3

from transformers_qwen3.compress import calibrate as C
from transformers_qwen3.compress import plan as P
from transformers_qwen3.compress.quants import round_trip, tensor_bytes

CLI = [sys.executable, "-m", "transformers_qwen3.cli"]


def cli(*args, check=True):
    # one thread: on a busy 2-core machine two threads made small matmuls far slower (tests/conftest.py)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    model = build_qwen3(
        root / "model",
        root,
        hidden_size=256,
        intermediate_size=512,
        head_dim=64,
        num_hidden_layers=3,
        tie_word_embeddings=True,
    )
    data = root / "data.jsonl"
    data.write_text(
        '{"text": "The cat sat on the mat and looked at the rain."}\n{"messages": [{"role": "user", '
        '"content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]}\n'
    )
    calib = root / "calib.safetensors"
    cli(
        "calibrate",
        model,
        "--data",
        data,
        "--max-tokens",
        16,
        "--types",
        "F16,Q8_0,Q4_K,Q2_K",
        "-o",
        calib,
        "--imatrix",
        root / "imatrix.gguf",
    )
    return root, model, calib


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_0"])
def test_round_trip_matches_gguf_py(type_name):
    w = torch.randn(8, 512, generator=torch.Generator().manual_seed(0))
    qtype = gguf.GGMLQuantizationType[type_name]
    expected = gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), qtype), qtype)
    assert torch.equal(round_trip(w, type_name), torch.from_numpy(expected))


def test_k_quant_round_trip_uses_the_imatrix():
    # llama.cpp's K-quant search weights its error by the importance matrix: the weighted error must drop
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(1))
    importance = torch.ones(256)
    importance[:32] = 1000.0
    plain, weighted = round_trip(w, "Q3_K"), round_trip(w, "Q3_K", importance)
    err = lambda q: float(((q - w) ** 2 * importance).sum())  # noqa: E731
    assert err(weighted) < err(plain)


def test_mean_kl_is_the_metrics_kl():
    # calibration's fast KL is runtime.metrics' (the one home of the definition), on two different tiny models
    from helpers.tiny_models import text_pair

    from transformers_qwen3.runtime.metrics import kl_divergence

    _, a = text_pair(seed=0)
    _, b = text_pair(seed=1)
    batches = [
        {"input_ids": torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(i))} for i in (0, 1)
    ]
    with torch.no_grad():
        ref = [a(**x).logits[0].numpy() for x in batches]
        got = [b(**x).logits[0].numpy() for x in batches]
    expected = float(np.mean(np.concatenate([kl_divergence(r, g) for r, g in zip(ref, got, strict=True)])))
    assert C._mean_kl(C._log_probs(a, batches), b, batches) == pytest.approx(expected, rel=1e-9)


def test_top_k_kl_without_a_tail_is_the_exact_kl():
    # k >= vocabulary: no tail, the estimator is the exact KL (same two tiny models as above); a model against
    # itself is exactly 0
    from helpers.tiny_models import text_pair

    _, a = text_pair(seed=0)
    _, b = text_pair(seed=1)
    batches = [
        {"input_ids": torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(i))} for i in (0, 1)
    ]
    exact = C._mean_kl(C._log_probs(a, batches), b, batches)
    reference = C.TopKReference(a, batches, k=10**6)
    assert reference.mean_kl(b) == pytest.approx(exact, rel=1e-6)
    assert reference.mean_kl(a) == 0.0


def test_top_k_kl_estimate_with_a_sampled_tail():
    # a flat (random) model is the estimator's worst case: most of the mass in the sampled tail. Measured with
    # seed 0: -11 % at k=8 + 64 samples, +3 % at 32 + 256 (the exact KL 0.324); a small change (one down_proj
    # scaled by 1.05, KL 9.1e-5): -7 % / +3 %
    from helpers.tiny_models import text_pair

    _, a = text_pair(seed=0)
    _, b = text_pair(seed=1)
    batches = [
        {"input_ids": torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(i))} for i in (0, 1)
    ]
    exact = C._mean_kl(C._log_probs(a, batches), b, batches)
    assert C.TopKReference(a, batches, k=32, samples=256).mean_kl(b) == pytest.approx(exact, rel=0.1)
    assert C.TopKReference(a, batches, k=8, samples=64).mean_kl(b) == pytest.approx(exact, rel=0.2)
    # the estimate is seeded: the same reference gives the same number every time
    assert C.TopKReference(a, batches, k=8).mean_kl(b) == C.TopKReference(a, batches, k=8).mean_kl(b)


def test_calibration_file(calibrated):
    root, model, calib_path = calibrated
    calib = C.load(calib_path, C.model_sha256(model))
    assert set(calib.tensor_kl) == {
        f"model.layers.{i}.{m}.weight"
        for i in range(3)
        for m in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    } | {"model.embed_tokens.weight"}
    for name, kls in calib.tensor_kl.items():
        assert set(kls) == {"F16", "Q8_0", "Q4_K", "Q2_K"}, name
        # narrower types lose more (a measured property of a random model: margins are orders of magnitude)
        assert kls["F16"] < kls["Q8_0"] < kls["Q4_K"] < kls["Q2_K"], (name, kls)
    assert len(calib.layer_kl) == 3 and all(k > 0 for k in calib.layer_kl)
    assert all(set(w) == {256} for w in calib.width_kl)  # 512 * (0.25, 0.5, 0.75) rounded down to 256s
    assert [s.shape[0] for s in calib.neuron_scores] == [512] * 3


def test_imatrix_is_the_mean_squared_input(calibrated):
    """Recompute down_proj's importance vector from hooked inputs on the same prompts: the oracle for (a)."""
    root, model, calib_path = calibrated
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calib = C.load(calib_path)
    tok = AutoTokenizer.from_pretrained(model)
    net = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    seen = []
    handle = net.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0][0]))
    texts = C.read_texts(root / "data.jsonl")
    with torch.no_grad():
        for t in texts:
            net(**tok(t, return_tensors="pt", truncation=True, max_length=16))
    handle.remove()
    x = torch.cat(seen).double()
    expected = x.pow(2).mean(0).float()
    torch.testing.assert_close(calib.imatrix["model.layers.1.mlp.down_proj.weight"], expected, rtol=1e-5, atol=0)
    assert calib.imatrix_tokens == x.shape[0]


def test_llama_imatrix_gguf(calibrated):
    """The layout llama.cpp's common_imatrix_load reads (vendored common/imatrix-loader.cpp): general.type,
    imatrix.datasets / chunk_count / chunk_size, and F32 '<name>.in_sum2' + '<name>.counts' pairs under GGUF names."""
    root, _, calib_path = calibrated
    calib = C.load(calib_path)
    reader = gguf.GGUFReader(root / "imatrix.gguf")
    fields = {f.name: f for f in reader.fields.values()}
    assert bytes(fields["general.type"].parts[-1]).decode() == "imatrix"
    assert {"imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"} <= set(fields)
    tensors = {t.name: t for t in reader.tensors}
    sums = tensors["blk.1.ffn_down.weight.in_sum2"]
    counts = tensors["blk.1.ffn_down.weight.counts"]
    assert sums.tensor_type == counts.tensor_type == gguf.GGMLQuantizationType.F32
    # llama-quantize divides in_sum2 by counts: that must give back our means
    np.testing.assert_allclose(
        np.asarray(sums.data).ravel() / float(np.asarray(counts.data).ravel()[0]),
        calib.imatrix["model.layers.1.mlp.down_proj.weight"].numpy(),
        rtol=1e-6,
    )
    assert len(tensors) == 2 * 21  # 7 linears x 3 layers; the tied embedding is read by get_rows, no imatrix


def test_plan(calibrated, tmp_path):
    root, model, calib_path = calibrated
    calib = C.load(calib_path)
    text = json.loads((model / "config.json").read_text())
    widest = P.make_plan(calib, text, 10**12, max_skip=1)
    assert all(t["type"] == "F16" for t in widest["tensors"].values()) and widest["predicted_kl"] < 1e-3
    floor = P.minimum_bytes(calib, P.Shape.from_text_config(text), "gguf", 0, 1)
    budget = (widest["bytes"] + floor) // 2
    out = tmp_path / "plan.json"
    proc = cli("plan", model, "--calib", calib_path, "--budget", budget, "--max-skip", 1, "-o", out)
    assert "tensor group" in proc.stdout and "FFN widths per layer" in proc.stdout
    plan = P.load_plan(out, C.model_sha256(model))
    assert plan["bytes"] <= budget
    # bytes recomputed from gguf-py's block table
    recomputed = (
        sum(tensor_bytes(t["type"], _planned_shape(calib, plan, name)) for name, t in plan["tensors"].items())
        + P.Shape.from_text_config(text).fixed_bytes
    )
    assert recomputed == plan["weight_bytes"]
    # the predicted loss is the sum of the calibrated pieces it chose
    assert plan["predicted_kl"] == pytest.approx(
        sum(t["kl"] for t in plan["tensors"].values()) + sum(e["kl"] for e in plan["layers"])
    )
    # a larger budget never predicts a larger loss
    bigger = P.make_plan(calib, text, budget * 3 // 2, max_skip=1)
    assert bigger["predicted_kl"] <= plan["predicted_kl"]


def _planned_shape(calib, plan, name):
    shape = list(calib.shapes[name])
    if ".mlp." in name:
        width = plan["layers"][int(name.split(".")[2])]["ffn_width"]
        shape[1 if name.endswith("down_proj.weight") else 0] = width
    return tuple(shape)


def test_budget_below_the_minimum(calibrated, tmp_path):
    root, model, calib_path = calibrated
    out = tmp_path / "plan.json"
    proc = cli("plan", model, "--calib", calib_path, "--budget", "1MB", "-o", out, check=False)
    assert proc.returncode == 2 and "below the smallest model this plan can make" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


@pytest.mark.parametrize(
    "content,reason",
    [
        ("{not json", "not a plan file"),
        ('{"schema": "other"}', "not a plan file"),
        ('{"schema": "transformers-qwen3/plan", "version": 99}', "newer than this version reads"),
        ('{"schema": "transformers-qwen3/plan", "version": 1, "model_sha256": "0"}', "another model"),
        (
            '{"schema": "transformers-qwen3/plan", "version": 1, "layers": [{"index": "x"}], "tensors": {}}',
            "malformed",
        ),
    ],
)
def test_bad_plans_are_refused(tmp_path, content, reason):
    path = tmp_path / "plan.json"
    path.write_text(content)
    with pytest.raises(P.PlanError, match=reason):
        P.load_plan(path, "f" * 64 if "another" in reason else None)


def test_calibration_of_another_model_is_refused(calibrated, tmp_path):
    root, model, calib_path = calibrated
    other = build_qwen3(tmp_path / "other", root, hidden_size=256, intermediate_size=512, head_dim=64)
    out = tmp_path / "plan.json"
    proc = cli("plan", other, "--calib", calib_path, "--budget", "1GB", "-o", out, check=False)
    assert proc.returncode == 2 and "made for another model" in proc.stderr and not out.exists()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    proc = cli("plan", model, "--calib", broken, "--budget", "1GB", "-o", out, check=False)
    assert proc.returncode == 2 and "not a calibration file" in proc.stderr and not out.exists()


# --- media prompts -----------------------------------------------------------------------------------------------------
def _media_data(folder):
    """A JSONL with one picture question and one clip question, the files beside it."""
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "pic.png")
    sf.write(folder / "clip.wav", (0.3 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440)).astype(np.float32), 16000)
    ask = lambda kind, name: {  # noqa: E731
        "messages": [{"role": "user", "content": [{"type": kind, kind: name}, {"type": "text", "text": "What?"}]}]
    }
    data = folder / "media.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in (ask("image", "pic.png"), ask("audio", "clip.wav"))) + "\n")
    return data


def test_media_prompts_reach_the_decoder(tmp_path):
    """--data with a picture and a clip: the importance matrix equals the mean squared input of down_proj over
    every position of the processor's inputs (media positions included), recomputed here with a hook."""
    from helpers.convert_fixtures import checkpoint
    from transformers import AutoProcessor

    from transformers_qwen3.remote.media_qwen3_multimodal import MediaPolicy
    from transformers_qwen3.remote.modeling_qwen3_multimodal import Qwen3MultimodalForConditionalGeneration
    from transformers_qwen3.remote.tokens_qwen3_multimodal import AUDIO_TOKEN_ID, IMAGE_TOKEN_ID

    model = checkpoint(tmp_path, "mm")
    data = _media_data(tmp_path)
    out = tmp_path / "calib.safetensors"
    printed = cli("calibrate", model, "--data", data, "--types", "Q8_0", "-o", out).stdout
    assert "2 prompts, 2 with media" in printed
    calib = C.load(out)
    processor = AutoProcessor.from_pretrained(model)
    net = Qwen3MultimodalForConditionalGeneration.from_pretrained(model, dtype=torch.float32).eval()
    seen = []
    handle = net.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0][0]))
    policy = MediaPolicy(allowed_roots=(str(tmp_path),), allow_network=False)
    n_media_tokens = 0
    with torch.no_grad():
        for record in map(json.loads, data.read_text().splitlines()):
            for part in record["messages"][0]["content"]:
                if part["type"] != "text":
                    part[part["type"]] = str(tmp_path / part[part["type"]])
            inputs = processor.apply_chat_template(
                record["messages"], tokenize=True, return_dict=True, return_tensors="pt", media_policy=policy
            )
            n_media_tokens += int(
                torch.isin(inputs["input_ids"], torch.tensor([IMAGE_TOKEN_ID, AUDIO_TOKEN_ID])).sum()
            )
            net(**inputs)
    handle.remove()
    x = torch.cat(seen).double()
    assert n_media_tokens > 0 and calib.imatrix_tokens == x.shape[0]
    name = next(n for n in calib.imatrix if n.endswith("layers.1.mlp.down_proj.weight"))
    torch.testing.assert_close(calib.imatrix[name], x.pow(2).mean(0).float(), rtol=1e-5, atol=0)


def test_media_outside_the_data_folder_is_refused(tmp_path):
    from helpers.convert_fixtures import checkpoint

    model = checkpoint(tmp_path, "mm")
    (tmp_path / "data").mkdir()
    data = _media_data(tmp_path)  # the files sit in tmp_path; the JSONL names them from data/ as ../pic.png
    (tmp_path / "data" / "media.jsonl").write_text(data.read_text().replace('"pic.png"', '"../pic.png"'))
    out = tmp_path / "calib.safetensors"
    proc = cli("calibrate", model, "--data", tmp_path / "data" / "media.jsonl", "-o", out, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "pic.png" in proc.stderr and not out.exists()
