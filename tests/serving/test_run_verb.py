"""``transformers-qwen3 run``: one answer from llama.cpp, the same as the in-process runtime's greedy answer (the
serving suite's oracle), and ``--budget``: the largest GGUF variant whose weights + mmproj + KV cache fit, with the
sizes recomputed here from the files and the demo's config, not from the code under test."""

import json
import subprocess
import sys

import pytest
from serving_helpers import LlamaCppOracle, Turn

CTX = 512


def _run(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "transformers_qwen3.cli", "run", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def variants(demo_files, tmp_path_factory):
    """A folder with the demo's F16 and Q8_0 text GGUFs and its mmproj (links to the demo's cached files)."""
    from transformers_qwen3.demo.model import cache_root
    from transformers_qwen3.demo.run import gguf_files

    folder, text, mmproj, _ = demo_files
    q8, _ = gguf_files(folder, "q8_0", cache_root() / "demo" / "gguf")
    out = tmp_path_factory.mktemp("variants")
    for p in (text, q8, mmproj):
        (out / p.name).symlink_to(p)
    return out, text, q8, mmproj


def _need(demo_folder, gguf, mmproj) -> int:
    """Weights + mmproj file bytes + an f16 K and V cache for CTX tokens, from the checkpoint's own config."""
    text = json.loads((demo_folder / "config.json").read_text())["text_config"]
    kv = 2 * text["num_hidden_layers"] * text["num_key_value_heads"] * text["head_dim"] * CTX * 2
    return gguf.stat().st_size + mmproj.stat().st_size + kv


def test_run_answers_as_the_runtime_does(demo_files, questions):
    folder, text, mmproj, served = demo_files
    oracle = LlamaCppOracle(text, mmproj)
    try:
        for kind, media, question in [questions[0], questions[2]]:  # an image and a clip
            expected, _ = oracle.answer([Turn("user", [(kind, media), ("text", question)])])
            got = _run(served, "--prompt", question, f"--{kind}", media, "--max-new-tokens", 8, "--ctx-size", CTX)
            assert got.returncode == 0, got.stderr[-2000:]
            assert got.stdout.strip() == expected.strip(), (kind, got.stdout, expected)
    finally:
        oracle.model.close()


def test_budget_runs_the_largest_variant_that_fits(demo_files, variants):
    folder = demo_files[0]
    out, f16, q8, mmproj = variants
    need_f16, need_q8 = _need(folder, f16, mmproj), _need(folder, q8, mmproj)
    assert need_q8 < need_f16
    for budget, chosen in ((need_f16, f16), (need_f16 - 1, q8), (need_q8, q8)):
        got = _run(out, "--prompt", "hello", "--budget", budget, "--ctx-size", CTX, "--max-new-tokens", 1)
        assert got.returncode == 0, got.stderr[-2000:]
        assert f"-> {chosen.name}: " in got.stderr and f"running {chosen.name} + {mmproj.name}" in got.stderr


def test_budget_too_small_and_no_budget_with_variants(demo_files, variants):
    folder = demo_files[0]
    out, _, q8, mmproj = variants
    need = _need(folder, q8, mmproj)
    got = _run(out, "--prompt", "hello", "--budget", need - 1, "--ctx-size", CTX)
    assert got.returncode == 2 and got.stderr.count("\n") == 1, got.stderr
    assert f"the smallest, {q8.name}, needs {need / 1e6:.2f} MB" in got.stderr and "Traceback" not in got.stderr
    got = _run(out, "--prompt", "hello", "--ctx-size", CTX)
    assert got.returncode == 2 and "holds 2 text-model GGUFs" in got.stderr and "--budget" in got.stderr


def test_media_for_a_text_only_folder_and_unreadable_media(demo_files, tmp_path):
    _, text, _, _ = demo_files
    (tmp_path / "text-only").mkdir()
    (tmp_path / "text-only" / text.name).symlink_to(text)
    picture = tmp_path / "not-a-picture.png"
    picture.write_bytes(b"no image here")
    got = _run(tmp_path / "text-only", "--prompt", "what is this?", "--image", picture)
    assert got.returncode == 2 and got.stderr.count("\n") == 1 and "--image" in got.stderr, got.stderr


def test_serve_budget_is_for_the_llama_cpp_engine_only(demo_files):
    folder = demo_files[0]
    cmd = [sys.executable, "-m", "transformers_qwen3.cli", "serve", str(folder), "--engine", "vllm", "--budget", "1GB"]
    got = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert got.returncode == 2 and "llama.cpp engine only" in got.stderr, got.stderr
