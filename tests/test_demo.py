"""The demo model: shape rules, deterministic rebuild, and an honest check of the committed trained weights.

Full demo training never runs here (``transformers-qwen3 demo retrain`` does, docs/demo.md); these tests rebuild the
checkpoint from the committed part (seconds) and ask it held-out questions, and run the recorded recipe for a few
steps.
"""

import argparse
import dataclasses
import hashlib
import json

import pytest
import torch

from transformers_qwen3.demo import data as demo_data
from transformers_qwen3.demo import model as demo_model
from transformers_qwen3.demo import run as demo
from transformers_qwen3.demo.evaluate import evaluate
from transformers_qwen3.demo.model import (
    AUDIO_CONFIG,
    RECORD_FILE,
    TRAINED_FILE,
    build_model,
    demo_config,
    frozen_embedding,
    k_quant_problems,
    load_trained,
    sha256_tensor,
)
from transformers_qwen3.demo.recipe import RECIPE, comparison, reproduce


@pytest.fixture(scope="module")
def trained_model():
    return build_model(load_trained())


@pytest.fixture(scope="module")
def processor(qwen3_tokenizer):
    from transformers_qwen3.remote.processing_qwen3_multimodal import Qwen3MultimodalProcessor

    return Qwen3MultimodalProcessor(tokenizer=qwen3_tokenizer)


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_config_widths_make_k_quants_real():
    config = demo_config()
    assert k_quant_problems(config) == [], k_quant_problems(config)
    text = config.text_config
    assert text.vocab_size == 151936 and text.hidden_size >= 256 and config.tie_word_embeddings
    assert config.vision_config is not None and config.audio_config is not None
    assert AUDIO_CONFIG["downsample_hidden_size"] <= 64, "the audio convolutions should stay narrow"
    # llama.cpp's patched qwen3a hard-codes the released chunking (ggml_patches/README.md)
    assert (config.audio_config.n_window, config.audio_config.n_window_infer) == (50, 800)


def test_k_quant_rule_flags_narrow_widths():
    config = demo_config()
    config.text_config.intermediate_size = 700
    assert k_quant_problems(config) == ["intermediate_size = 700"]


def test_frozen_embedding_is_the_recorded_one():
    """The seeded table is computed with exact arithmetic: the same bytes on every machine and numpy release."""
    record = json.loads(RECORD_FILE.read_text())
    table = frozen_embedding()
    assert table.dtype == torch.bfloat16 and tuple(table.shape) == (151936, 256)
    assert sha256_tensor(table) == record["embedding_sha256"]
    assert abs(float(table.float().std()) - demo_model.EMBED_STD) < 1e-3


def test_committed_weights_are_the_recorded_ones():
    record = json.loads(RECORD_FILE.read_text())
    assert hashlib.sha256(TRAINED_FILE.read_bytes()).hexdigest() == record["trained_sha256"]
    trained = load_trained()
    assert demo_model.EMBED_KEY not in trained and "lm_head.weight" not in trained
    assert all(t.dtype == torch.bfloat16 for t in trained.values())
    assert TRAINED_FILE.stat().st_size < 16 * 2**20, "the committed part should stay a few MB"


@pytest.fixture(scope="module")
def cached_folder(tmp_path_factory):
    """The demo checkpoint rebuilt into an empty cache (what a newcomer's first `make demo` does)."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFORMERS_QWEN3_CACHE", str(cache))
        folder = demo_model.demo_checkpoint()
        yield folder


def test_demo_checkpoint_is_cached(cached_folder):
    assert cached_folder.parent.name == "demo" and cached_folder.name.startswith(demo_model.NAME)
    stamp = (cached_folder / "model.safetensors").stat().st_mtime_ns
    assert demo_model.demo_checkpoint() == cached_folder
    assert (cached_folder / "model.safetensors").stat().st_mtime_ns == stamp, "the cached folder must be reused"


def test_rebuild_is_byte_identical(cached_folder, tmp_path, qwen3_tokenizer):
    again = demo_model.write_checkpoint(tmp_path / "again", tokenizer=qwen3_tokenizer)
    da, db = _digest(cached_folder), _digest(again)
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= set(da)
    assert da == db, {k: (da.get(k), db.get(k)) for k in set(da) | set(db) if da.get(k) != db.get(k)}


def test_answer_position_logits_equal_full_logits(trained_model, processor):
    """The training shortcut (logits_to_keep as a tensor of the two labelled columns) is exact."""
    from transformers_qwen3.demo.synthetic import SyntheticSplit

    items = [demo_data.encode(processor, s) for s in SyntheticSplit(demo_data.DATA_SEED, "validation", 4)]
    batch, _ = demo_data.collate(items)
    with torch.no_grad():
        few = demo_data.answer_logits(trained_model, batch)
        full = trained_model(**batch, use_cache=False).logits[:, -3:-1]
    diff = float((few - full).abs().max())
    assert diff < 1e-4, f"max |diff| {diff}"


def test_trained_model_answers_held_out_questions(trained_model, processor):
    """An honest check of the artifact: fresh test-split questions, exact match on the greedy answer."""
    items = demo_data.encode_split(processor, "test", 40)
    acc = evaluate(trained_model, items)
    assert acc["n_image"] == 20 and acc["n_audio"] == 20
    # trained to >= 90 % on 400 test questions (training.json); a few borderline answers may flip elsewhere
    assert acc["image"] >= 0.85 and acc["audio"] >= 0.85, acc


def test_hub_folder_answers_in_clean_process(cached_folder, tmp_path):
    """Through AutoModelForCausalLM / AutoProcessor with trust_remote_code, our package not importable."""
    folder = cached_folder
    questions, records = demo.write_questions(tmp_path / "q", n_per_kind=2)
    result = demo.run_transformers(folder, questions.parent, questions, threads=1)
    assert result["class"] == "Qwen3MultimodalForConditionalGeneration"
    assert result["module"].startswith("transformers_modules."), "must load from the folder's remote code"
    assert len(result["answers"]) == 4
    acc = demo.accuracy(records, result["answers"])
    assert acc["image"] >= 0.5 and acc["audio"] >= 0.5, (result["answers"], [demo.truth(r) for r in records])


def test_report_and_unavailable_llama_cpp(capsys):
    records = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": "images/a.png"},
                        {"type": "text", "text": "What shape is it?"},
                    ],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "circle"}]},
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "audio", "audio": "audio/b.wav"},
                        {"type": "text", "text": "How many beeps are there?"},
                    ],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "two"}]},
            ]
        },
    ]
    results = [
        {
            "label": "transformers fp32",
            "answers": ["circle", "three"],
            "seconds": [0.1, 0.2],
            "load_s": 1.0,
            "threads": 1,
        }
    ]
    assert demo.accuracy(records, results[0]["answers"]) == {"image": 1.0, "audio": 0.0}
    demo.print_report(records, results)
    out = capsys.readouterr().out
    assert "circle ✓" in out and "three ✗" in out and "100%" in out


def test_llama_cpp_answers_like_transformers(cached_folder, tmp_path):
    """The demo's llama.cpp half on the trained model: Q8_0 GGUF + mmproj through mtmd give transformers' answers."""
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (make llama-cpp)")
    assert demo.llama_cpp_status() is None, demo.llama_cpp_status()
    questions, records = demo.write_questions(tmp_path / "q", n_per_kind=3)
    ours = demo.run_transformers(cached_folder, questions.parent, questions, threads=1)
    gguf, mmproj = demo.gguf_files(cached_folder, "q8_0", tmp_path / "gguf")
    assert (gguf.name, mmproj.name) == (f"{cached_folder.name}-Q8_0.gguf", f"mmproj-{cached_folder.name}-Q8_0.gguf")
    llama = demo.run_llama_cpp_one(gguf, mmproj, questions.parent, records, threads=1)
    assert llama["answers"] == ours["answers"], (llama["answers"], ours["answers"], [demo.truth(r) for r in records])


def test_recipe_is_the_recorded_one():
    """The recipe in the package is what training.json says made the committed weights: stage 1, then stage 2
    continued from it (the record's top level is the last stage, ``continued_from`` the first)."""
    record = json.loads(RECORD_FILE.read_text())
    stages = [record["continued_from"], record]
    assert len(RECIPE) == len(stages) and "continued_from" not in stages[0]
    for stage, recorded in zip(RECIPE, stages, strict=True):
        assert dataclasses.asdict(stage.settings) == recorded["settings"], stage.name
        assert stage.measure == (recorded["step_speed"] is not None), stage.name
        assert (stage.init_from is not None) == ("--init-from" in recorded["command"]), stage.name
    assert RECIPE[1].init_from == RECIPE[0].name


def test_recipe_runs_both_stages_and_records_them(tmp_path, qwen3_tokenizer):
    """The two-stage chain on a few steps: each stage writes weights + record, the second starts from the first."""
    tiny = dict(steps=2, batch_size=2, warmup=1, n_train=8, n_val=4, n_test=4, eval_every=1)
    out = tmp_path / "out"
    record = reproduce(out, overrides=tiny, tokenizer=qwen3_tokenizer)
    first = out / RECIPE[0].name / TRAINED_FILE.name
    last = out / TRAINED_FILE.name
    assert json.loads((out / RECORD_FILE.name).read_text()) == record
    assert record["trained_sha256"] == hashlib.sha256(last.read_bytes()).hexdigest()
    earlier = record["continued_from"]
    assert earlier["trained_sha256"] == hashlib.sha256(first.read_bytes()).hexdigest() != record["trained_sha256"]
    assert f"--init-from {first}" in record["command"] and "--init-from" not in earlier["command"]
    assert earlier["step_speed"] is not None and record["step_speed"] is None  # as recorded: stage 1 timed steps
    assert [h["step"] for h in record["history"]] == [1, 2]
    assert record["settings"] == {**dataclasses.asdict(RECIPE[1].settings), **tiny}
    assert record["embedding_sha256"] == json.loads(RECORD_FILE.read_text())["embedding_sha256"]
    lines = comparison(record, json.loads(RECORD_FILE.read_text()))
    assert lines[-1].startswith("weights differ from the committed file"), lines


def test_demo_steps_are_wired_to_their_modules():
    """`transformers-qwen3 demo STEP`: each step parses its own options and runs its own module's `run`."""
    from transformers_qwen3.demo import cli as demo_cli
    from transformers_qwen3.demo import recipe, synthetic
    from transformers_qwen3.demo.train import Train

    parser = argparse.ArgumentParser()
    demo_cli.add_arguments(parser)
    cases = {
        ("run", "--questions", "2", "--no-llama-cpp"): (demo.run, {"questions": 2, "no_llama_cpp": True}),
        ("train", "--steps", "3", "--no-measure"): (Train.run, {"steps": 3, "no_measure": True}),
        ("retrain", "out"): (recipe.Retrain.run, {}),
        ("build",): (demo_model.Build.run, {"dst": None}),
        ("synthetic", "out", "--n-train", "5"): (synthetic.run, {"n_train": 5}),
    }
    for argv, (run, values) in cases.items():
        args = parser.parse_args(list(argv))
        assert args.demo_run == run, argv
        assert {k: getattr(args, k) for k in values} == values, argv
    with pytest.raises(SystemExit):
        parser.parse_args([])  # a step is required
