"""Tests of ggml_patches/: the patched llama-cpp-python build and what its patches do.

- The series applies cleanly to a fresh extraction of the sdist's vendor/llama.cpp, and apply.sh
  fails loudly (non-zero, naming the patch, writing nothing of it) on a conflicting or corrupted one.
- The installed llama_cpp is the patched build (the key build_wheel.sh computes) and has mtmd_cpp.
- Patch behaviour, through llama_cpp.mtmd_cpp on tiny GGUF files written here with gguf-py:
  0002: the qwen3a audio token count equals transformers' `_get_feat_extract_output_lengths` for many
        lengths, and the embeddings equal transformers' Qwen3OmniMoeAudioEncoder's (oracle) for clips
        shorter than one chunk, with a partial chunk, and with a partial 800-frame window.
  0001: a deepstack text model (qwen3vl, n_embd_inp = 4 x n_embd) accepts a non-deepstack audio
        projector; its rows are the audio embedding followed by zeros.
The tiny GGUFs are written from the tensor names llama.cpp's clip loader reads (tools/mtmd/clip-impl.h
TN_* / KEY_*); the full text+image+audio parity lives with the converter's tests.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PATCH_DIR = ROOT / "ggml_patches"
PATCHES = sorted(PATCH_DIR.glob("[0-9][0-9][0-9][0-9]-*.patch"))


def _upstream() -> dict[str, str]:
    values = {}
    for line in (PATCH_DIR / "UPSTREAM").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "transformers-qwen3"


def _patched_paths() -> set[str]:
    paths = set()
    for patch in PATCHES:
        paths.update(re.findall(r"^diff --git a/(\S+) b/", patch.read_text(), re.M))
    return paths


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True)


# --------------------------------------------------------------------------------------------------
# the series and apply.sh
# --------------------------------------------------------------------------------------------------


def test_series_is_a_numbered_format_patch_series():
    assert PATCHES, "no patches in ggml_patches/"
    numbers = [int(p.name[:4]) for p in PATCHES]
    assert numbers == list(range(1, len(PATCHES) + 1)), [p.name for p in PATCHES]
    for patch in PATCHES:
        text = patch.read_text()
        assert re.match(r"^\d{4}-[a-z0-9-]+\.patch$", patch.name), patch.name
        assert text.startswith("From "), f"{patch.name} is not a git format-patch file"
        assert re.search(r"^Subject: \[PATCH \d+/\d+\] ", text, re.M), patch.name
        assert re.search(r"^diff --git a/", text, re.M), patch.name
    upstream = _upstream()
    assert upstream["LLAMA_CPP_PYTHON_VERSION"] == "0.3.36"
    assert re.fullmatch(r"[0-9a-f]{40}", upstream["LLAMA_CPP_COMMIT"])
    assert upstream["LLAMA_CPP_COMMIT"].startswith("0c1e57098")
    assert re.fullmatch(r"[0-9a-f]{64}", upstream["LLAMA_CPP_PYTHON_SDIST_SHA256"])


@pytest.fixture(scope="module")
def pristine_tree(tmp_path_factory) -> Path:
    """The files the series touches, extracted from the cached sdist (build_wheel.sh downloads it)."""
    upstream = _upstream()
    sdist = _cache_root() / "sdist" / upstream["LLAMA_CPP_PYTHON_SDIST"]
    if not sdist.is_file():
        pytest.skip(f"{sdist} is not there yet: run `make llama-cpp` (ggml_patches/build_wheel.sh) first")
    top = upstream["LLAMA_CPP_PYTHON_SDIST"].removesuffix(".tar.gz")
    wanted = {f"{top}/vendor/llama.cpp/{p}" for p in _patched_paths()}
    wanted.add(f"{top}/vendor/llama.cpp/tools/mtmd/mtmd.cpp")
    out = tmp_path_factory.mktemp("pristine")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar if m.name in wanted]
        tar.extractall(out, members=members, filter="data")
    tree = out / top / "vendor" / "llama.cpp"
    assert {str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file()} >= _patched_paths()
    return tree


@pytest.fixture
def fresh_tree(pristine_tree, tmp_path) -> Path:
    tree = tmp_path / "llama.cpp"
    shutil.copytree(pristine_tree, tree)
    return tree


def _snapshot(tree: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tree)): p.read_bytes() for p in sorted(tree.rglob("*")) if p.is_file()}


def test_apply_applies_cleanly_in_order_and_is_idempotent(fresh_tree):
    result = _run("bash", PATCH_DIR / "apply.sh", fresh_tree)
    assert result.returncode == 0, result.stdout + result.stderr
    applied = re.findall(r"applied (\S+\.patch)", result.stdout)
    assert applied == [p.name for p in PATCHES]
    mtmd = (fresh_tree / "tools/mtmd/mtmd.cpp").read_text()
    assert "mtmd_clip_encode_padded" in mtmd  # 0001
    assert "clip_qwen3a_n_tokens" in (fresh_tree / "tools/mtmd/clip-impl.h").read_text()  # 0002
    assert not list(fresh_tree.rglob("*.rej")) and not list(fresh_tree.rglob("*.orig"))

    before = _snapshot(fresh_tree)
    again = _run("bash", PATCH_DIR / "apply.sh", fresh_tree)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already applied" in again.stdout
    assert _snapshot(fresh_tree) == before


def _series_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "series"
    copy.mkdir()
    for path in [PATCH_DIR / "apply.sh", *PATCHES]:
        shutil.copy(path, copy / path.name)
    return copy


def test_apply_fails_loudly_on_a_conflicting_patch(fresh_tree, tmp_path):
    series = _series_copy(tmp_path)
    # a patch made against a different llama.cpp: its context line does not exist in ours
    n = len(PATCHES) + 1
    (series / f"{n:04d}-conflict.patch").write_text(
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
        "Subject: [PATCH] conflict\n\n---\n"
        "diff --git a/tools/mtmd/mtmd.cpp b/tools/mtmd/mtmd.cpp\n"
        "--- a/tools/mtmd/mtmd.cpp\n+++ b/tools/mtmd/mtmd.cpp\n"
        "@@ -1,3 +1,3 @@\n"
        " this line is not in mtmd.cpp\n-nor this one\n+changed\n and not this one\n"
    )
    result = _run("bash", series / "apply.sh", fresh_tree)
    assert result.returncode != 0
    assert f"{n:04d}-conflict.patch" in result.stderr
    assert "does not apply cleanly" in result.stderr
    assert not (fresh_tree / ".ggml_patches_applied").exists()
    assert not list(fresh_tree.rglob("*.rej")) and not list(fresh_tree.rglob("*.orig"))
    # the real series before it is applied, nothing of the conflicting patch is
    assert "changed" not in (fresh_tree / "tools/mtmd/mtmd.cpp").read_text().splitlines()


def test_apply_fails_loudly_on_a_corrupted_patch_and_writes_nothing_of_it(fresh_tree, tmp_path):
    series = _series_copy(tmp_path)
    if len(PATCHES) < 2:
        pytest.skip("needs two patches")
    second = series / PATCHES[1].name
    text = second.read_text()
    # break one context line (lines starting with a space inside a hunk) of the second patch
    lines = text.splitlines(keepends=True)
    in_hunk = False
    for i, line in enumerate(lines):
        if line.startswith("@@"):
            in_hunk = True
        elif in_hunk and line.startswith(" ") and line.strip():
            lines[i] = " CORRUPTED" + line[1:]
            break
    second.write_text("".join(lines))
    before = _snapshot(fresh_tree)

    result = _run("bash", series / "apply.sh", fresh_tree)
    assert result.returncode != 0
    assert PATCHES[1].name in result.stderr
    assert PATCHES[0].name in result.stdout  # applied before it
    for later in PATCHES[2:]:
        assert later.name not in result.stdout
    # files the broken patch touches but the first one does not are unchanged
    first_paths = set(re.findall(r"^diff --git a/(\S+) b/", PATCHES[0].read_text(), re.M))
    second_paths = set(re.findall(r"^diff --git a/(\S+) b/", text, re.M))
    after = _snapshot(fresh_tree)
    for path in second_paths - first_paths:
        assert after[path] == before[path], path


def test_apply_refuses_a_folder_that_is_not_llama_cpp(tmp_path):
    result = _run("bash", PATCH_DIR / "apply.sh", tmp_path)
    assert result.returncode != 0
    assert "does not look like a llama.cpp tree" in result.stderr


# --------------------------------------------------------------------------------------------------
# the installed build
# --------------------------------------------------------------------------------------------------


def _llama_cpp():
    try:
        import llama_cpp
        import llama_cpp.mtmd_cpp  # noqa: F401
    except ImportError as error:
        pytest.fail(f"llama_cpp is not importable ({error}); run `make llama-cpp` to build and install it")
    return llama_cpp


def test_installed_llama_cpp_is_the_patched_build():
    llama_cpp = _llama_cpp()
    try:
        from llama_cpp import _ggml_patches
    except ImportError:
        pytest.fail(
            "the installed llama_cpp is not our patched build (no llama_cpp._ggml_patches); run `make llama-cpp`"
        )
    env = dict(os.environ, CMAKE_ARGS=_ggml_patches.CMAKE_ARGS)
    expected = subprocess.run(
        ["bash", str(PATCH_DIR / "build_wheel.sh"), "--print-key"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert _ggml_patches.KEY == expected, "installed build is stale: run `make llama-cpp`"
    assert _ggml_patches.PATCHES == tuple(p.name for p in PATCHES)
    assert _ggml_patches.LLAMA_CPP_COMMIT == _upstream()["LLAMA_CPP_COMMIT"]
    assert llama_cpp.__version__ == f"{_upstream()['LLAMA_CPP_PYTHON_VERSION']}+transformersqwen3.{expected[:12]}"
    assert hasattr(llama_cpp.mtmd_cpp, "mtmd_init_from_file")


# --------------------------------------------------------------------------------------------------
# tiny GGUF files for the behaviour tests
# --------------------------------------------------------------------------------------------------

N_EMBD_TEXT = 64  # the text model's n_embd = the audio projector's output width
AUDIO_SPECIALS = ["<|audio_start|>", "<|audio_end|>", "<|vision_start|>", "<|vision_end|>", "<|endoftext|>"]


def _byte_tokens() -> list[str]:
    # GPT-2's byte-to-unicode table: the byte-level BPE vocabulary llama.cpp's gpt2 tokenizer expects
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_text_gguf(path: Path, n_deepstack: int = 0, seed: int = 0) -> None:
    """A one-layer qwen3 (n_deepstack=0) or qwen3vl text model with a byte-level vocabulary."""
    import gguf

    rng = np.random.default_rng(seed)
    arch = "qwen3vl" if n_deepstack else "qwen3"
    n_embd, n_head, head_dim, n_ff = N_EMBD_TEXT, 2, 32, 128
    tokens = _byte_tokens() + ["ab"] + AUDIO_SPECIALS
    types = [gguf.TokenType.NORMAL] * (len(tokens) - len(AUDIO_SPECIALS)) + [gguf.TokenType.CONTROL] * len(
        AUDIO_SPECIALS
    )
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(4096)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(1)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(1e6)
    writer.add_layer_norm_rms_eps(1e-6)
    if n_deepstack:
        writer.add_rope_dimension_sections([8, 4, 4, 0])
        writer.add_uint32(f"{arch}.n_deepstack_layers", n_deepstack)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["a b"])
    writer.add_eos_token_id(tokens.index("<|endoftext|>"))
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))

    def add(name, *shape):
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    add("token_embd.weight", len(tokens), n_embd)
    writer.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, np.float32))
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, np.float32))
    writer.add_tensor("blk.0.attn_q_norm.weight", np.ones(head_dim, np.float32))
    writer.add_tensor("blk.0.attn_k_norm.weight", np.ones(head_dim, np.float32))
    add("blk.0.attn_q.weight", n_head * head_dim, n_embd)
    add("blk.0.attn_k.weight", n_head * head_dim, n_embd)
    add("blk.0.attn_v.weight", n_head * head_dim, n_embd)
    add("blk.0.attn_output.weight", n_embd, n_head * head_dim)
    add("blk.0.ffn_gate.weight", n_ff, n_embd)
    add("blk.0.ffn_up.weight", n_ff, n_embd)
    add("blk.0.ffn_down.weight", n_embd, n_ff)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def tiny_audio_encoder(seed: int = 0):
    """A random transformers Qwen3OmniMoeAudioEncoder (the oracle) with the released n_window settings."""
    import torch
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

    torch.manual_seed(seed)
    config = Qwen3OmniMoeAudioEncoderConfig(
        num_mel_bins=128,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=128,
        d_model=64,
        output_dim=N_EMBD_TEXT,
        downsample_hidden_size=32,
        n_window=50,
        n_window_infer=800,
    )
    model = Qwen3OmniMoeAudioEncoder(config).eval()
    with torch.no_grad():
        for param in model.parameters():  # larger than the default init, so differences show
            param.normal_(0.0, 0.1)
    return model


# HF name in Qwen3OmniMoeAudioEncoder -> GGUF name read by llama.cpp's clip loader (clip-impl.h)
AUDIO_TENSOR_NAMES = {
    "conv2d{i}.weight": "a.conv2d.{i}.weight",  # TN_CONV2D
    "conv2d{i}.bias": "a.conv2d.{i}.bias",
    "conv_out.weight": "a.conv_out.weight",  # TN_CONV_OUT
    "layers.{i}.self_attn.q_proj.{w}": "a.blk.{i}.attn_q.{w}",  # TN_ATTN_Q
    "layers.{i}.self_attn.k_proj.{w}": "a.blk.{i}.attn_k.{w}",
    "layers.{i}.self_attn.v_proj.{w}": "a.blk.{i}.attn_v.{w}",
    "layers.{i}.self_attn.out_proj.{w}": "a.blk.{i}.attn_out.{w}",  # TN_ATTN_OUTPUT
    "layers.{i}.self_attn_layer_norm.{w}": "a.blk.{i}.ln1.{w}",  # TN_LN_1
    "layers.{i}.final_layer_norm.{w}": "a.blk.{i}.ln2.{w}",  # TN_LN_2
    "layers.{i}.fc1.{w}": "a.blk.{i}.ffn_up.{w}",  # TN_FFN_UP
    "layers.{i}.fc2.{w}": "a.blk.{i}.ffn_down.{w}",  # TN_FFN_DOWN
    "ln_post.{w}": "a.post_ln.{w}",  # TN_LN_POST
    "proj{i}.{w}": "mm.a.mlp.{i}.{w}",  # TN_MM_AUDIO_MLP
}


def _gguf_name(hf_name: str) -> str:
    for pattern, target in AUDIO_TENSOR_NAMES.items():
        regex = (
            "^" + re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{w\}", r"(?P<w>weight|bias)") + "$"
        )
        if m := re.match(regex, hf_name):
            return target.format(**m.groupdict())
    raise KeyError(hf_name)


def write_qwen3a_mmproj(path: Path, encoder) -> None:
    import gguf

    cfg = encoder.config
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_bool("clip.has_audio_encoder", True)
    writer.add_string("clip.audio.projector_type", "qwen3a")
    writer.add_uint32("clip.audio.embedding_length", cfg.d_model)
    writer.add_uint32("clip.audio.feed_forward_length", cfg.encoder_ffn_dim)
    writer.add_uint32("clip.audio.block_count", cfg.encoder_layers)
    writer.add_uint32("clip.audio.attention.head_count", cfg.encoder_attention_heads)
    writer.add_uint32("clip.audio.projection_dim", cfg.output_dim)
    writer.add_uint32("clip.audio.num_mel_bins", cfg.num_mel_bins)
    writer.add_float32("clip.audio.attention.layer_norm_epsilon", 1e-5)
    for name, tensor in encoder.state_dict().items():
        if name.startswith("positional_embedding"):
            continue
        data = tensor.detach().float().numpy()
        if re.fullmatch(r"conv2d\d\.bias", name):
            data = data.reshape(-1, 1, 1)  # llama.cpp adds it as a [1, 1, C] tensor
        writer.add_tensor(_gguf_name(name), np.ascontiguousarray(data))
    # SinusoidsPositionEmbedding is a non-persistent buffer: written as a tensor, as upstream does
    pos = encoder.positional_embedding.positional_embedding.float().numpy()
    writer.add_tensor("a.position_embd.weight", np.ascontiguousarray(pos))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


class Mtmd:
    """A text model + mmproj opened through llama_cpp.mtmd_cpp."""

    def __init__(self, text_gguf: Path, mmproj: Path):
        llama_cpp = _llama_cpp()
        mtmd_cpp = llama_cpp.mtmd_cpp
        self.llama_cpp, self.mtmd_cpp = llama_cpp, mtmd_cpp
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        self.model = llama_cpp.llama_model_load_from_file(str(text_gguf).encode(), params)
        assert self.model, f"llama.cpp could not load {text_gguf}"
        self.n_embd_inp = llama_cpp.llama_model_n_embd_inp(self.model)
        ctx_params = mtmd_cpp.mtmd_context_params_default()
        ctx_params.use_gpu = False
        ctx_params.n_threads = 1
        ctx_params.print_timings = False
        ctx_params.warmup = False
        self.ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode(), self.model, ctx_params)

    def close(self):
        if self.ctx:
            self.mtmd_cpp.mtmd_free(self.ctx)
        self.llama_cpp.llama_model_free(self.model)

    def audio_chunks(self, samples: np.ndarray, encode: bool = False) -> list:
        """Token counts (and embeddings when encode) of the audio chunks of `<marker>` + samples."""
        mtmd_cpp = self.mtmd_cpp
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        bitmap = mtmd_cpp.mtmd_bitmap_init_from_audio(
            samples.size, samples.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        )
        chunks = mtmd_cpp.mtmd_input_chunks_init()
        marker = mtmd_cpp.mtmd_default_marker()
        text = mtmd_cpp.mtmd_input_text(text=marker, text_len=len(marker), add_special=False, parse_special=True)
        try:
            bitmaps = (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap)
            assert mtmd_cpp.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), bitmaps, 1) == 0
            out = []
            for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
                chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
                if mtmd_cpp.mtmd_input_chunk_get_type(chunk) != mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_AUDIO:
                    continue
                n = mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk)
                if not encode:
                    out.append(n)
                    continue
                assert mtmd_cpp.mtmd_encode_chunk(self.ctx, chunk) == 0
                embd = mtmd_cpp.mtmd_get_output_embd(self.ctx)
                out.append(
                    np.ctypeslib.as_array(embd, shape=(n * self.n_embd_inp,)).reshape(n, self.n_embd_inp).copy()
                )
            return out
        finally:
            mtmd_cpp.mtmd_input_chunks_free(chunks)
            mtmd_cpp.mtmd_bitmap_free(bitmap)


@pytest.fixture(scope="module")
def audio_setup(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("qwen3a")
    encoder = tiny_audio_encoder()
    write_qwen3a_mmproj(out / "mmproj.gguf", encoder)
    write_text_gguf(out / "text.gguf")
    write_text_gguf(out / "text-deepstack.gguf", n_deepstack=3)
    mtmd = Mtmd(out / "text.gguf", out / "mmproj.gguf")
    assert mtmd.ctx, "mtmd_init_from_file failed on the qwen3a mmproj"
    yield out, encoder, mtmd
    mtmd.close()


def _transformers_n_tokens(n_samples: int) -> int:
    import torch
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    # WhisperFeatureExtractor (hop 160) gives n_samples // 160 frames for one unpadded clip
    return int(_get_feat_extract_output_lengths(torch.tensor(n_samples // 160)))


def _sound(n_samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n_samples)).astype(np.float32)


def _loud_last_hop(n_samples: int = 16080) -> np.ndarray:
    """A tone with a loud click in its last 40 samples, which only the last STFT frame sees: the frame
    WhisperFeatureExtractor drops, so it must not set the (max - 8) clamp floor (patch 0003)."""
    samples = _sound(n_samples)
    samples[-40:] = 50.0
    return samples


# the lead's measurements (1 s, 2.5 s, 7 s), the parity clips (2.5 s, 9.5 s), edges of a chunk,
# of a hop, of an 800-frame window, a window tail shorter than one chunk, 30 s
TOKEN_COUNT_SAMPLES = sorted(
    {160, 161, 319, 320, 1599, 1600, 15999, 16000, 16001, 16159, 16160, 17600, 40000, 112000, 152000,
     128000, 128160, 129600, 132800, 144000, 160000, 480000}
    | {frames * 160 + offset for frames in range(1, 1701, 29) for offset in (0, 159)}
)  # fmt: skip


def test_qwen3a_token_count_equals_transformers(audio_setup):
    """Patch 0002: mtmd's count is transformers' `_get_feat_extract_output_lengths` (n_samples // 160)."""
    _, _, mtmd = audio_setup
    wrong = {}
    for n in TOKEN_COUNT_SAMPLES:
        got = sum(mtmd.audio_chunks(np.zeros(n, np.float32) + 0.01))
        if got != _transformers_n_tokens(n):
            wrong[n] = (got, _transformers_n_tokens(n))
    assert not wrong, f"n_samples: (mtmd, transformers) {dict(list(wrong.items())[:10])} ({len(wrong)} wrong)"
    assert [_transformers_n_tokens(n) for n in (16000, 40000, 112000)] == [13, 33, 91]


@pytest.mark.parametrize("seconds", [0.5, 1.0, 2.5, 8.3, 9.5, "click"])
def test_qwen3a_embeddings_equal_transformers(audio_setup, seconds):
    """Patch 0002 (+0003): the real tokens, with padding tokens dropped before attention, as transformers.

    0.5 s is shorter than one chunk (not padded), 2.5 s and 9.5 s end in a partial chunk, 8.3 s ends in an
    800-frame window holding only a partial chunk; "click" is loudest in the frame transformers drops.
    Tolerance: 5e-4 of the output's max |x| (f32 weights; measured ~1e-4); padding a short clip to a whole
    chunk, as stock mtmd does, is off by ~2e-2. Near-silent clips are avoided: where mel power nears the
    1e-10 floor, float32 FFT rounding (mtmd's FFT vs torch.stft) shows up as ~2e-2 differences.
    """
    import torch
    from transformers import WhisperFeatureExtractor

    _, encoder, mtmd = audio_setup
    samples = _loud_last_hop() if seconds == "click" else _sound(int(seconds * 16000))
    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, n_fft=400)
    feats = extractor(samples, sampling_rate=16000, padding=True, truncation=False, return_attention_mask=True,
                      return_tensors="pt")  # fmt: skip
    n_frames = int(feats["attention_mask"].sum())
    with torch.no_grad():
        expected = encoder(feats["input_features"][0, :, :n_frames], feature_lens=torch.tensor([n_frames]))
    expected = expected.last_hidden_state.numpy()

    got = np.concatenate(mtmd.audio_chunks(samples, encode=True))
    assert got.shape == expected.shape, f"mtmd {got.shape} vs transformers {expected.shape}"
    diff = np.abs(got - expected).max()
    scale = np.abs(expected).max()
    assert diff <= 5e-4 * scale, f"max |mtmd - transformers| = {diff:.3g} (max |x| = {scale:.3g})"


def test_deepstack_text_model_takes_audio_zero_padded(audio_setup):
    """Patch 0001: a qwen3vl text model with 3 deepstack layers reads 4 x n_embd per row; the audio
    projector outputs n_embd. Stock mtmd refuses the pair; patched, the row is the audio embedding then zeros.
    """
    out, _, plain = audio_setup
    deep = Mtmd(out / "text-deepstack.gguf", out / "mmproj.gguf")
    try:
        assert deep.ctx, "mtmd_init_from_file refused a non-deepstack audio mmproj for a deepstack text model"
        assert deep.n_embd_inp == 4 * N_EMBD_TEXT
        samples = _sound(40000)
        (rows,) = deep.audio_chunks(samples, encode=True)
        (reference,) = plain.audio_chunks(samples, encode=True)
        assert rows.shape == (reference.shape[0], 4 * N_EMBD_TEXT)
        np.testing.assert_array_equal(rows[:, :N_EMBD_TEXT], reference)
        assert not rows[:, N_EMBD_TEXT:].any(), "deepstack blocks of audio rows must be zero"
    finally:
        deep.close()
