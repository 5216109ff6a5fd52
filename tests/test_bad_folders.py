"""Bad model folders give one clear error, from one validator (`convert.checkpoint.validate_folder`), in every verb.

(a) A table of named corruptions of a valid tiny folder, each run through every verb in-process: exit status 2, one
    stderr line ``transformers-qwen3 VERB: error: …`` naming the damaged file, no traceback, nothing written.
(b) A hypothesis property: however a valid folder is damaged (truncated, header bytes flipped, config keys dropped or
    retyped, index corrupted), `validate_folder` either accepts it or raises `FolderError`, nothing else.
(c) An index whose weight_map points outside the folder is refused, for convert and import.
Then the verb-specific checks: convert's quantizer options before writing, verify's GGUF and dependency errors,
finetune's data (media tags included) checked before training and no empty OUT.checkpoints after a failure.

Valid folders are built once per module (`init --preset tiny` / `tiny-mm`, and native Qwen3 / Qwen3-VL folders made
from them for `import`); each case works on a hard-linked copy whose damaged files are rewritten, never edited.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from transformers_qwen3.cli import main
from transformers_qwen3.errors import FolderError
from transformers_qwen3.formats.folder import validate_folder

INDEX = "model.safetensors.index.json"
WEIGHTS = "model.safetensors"


# --- valid folders -----------------------------------------------------------------------------------------------
def _write_bytes(path: Path, data: bytes) -> None:
    """Replace a file without writing through a hard link to the shared original."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def _write_json(path: Path, value) -> None:
    _write_bytes(path, json.dumps(value, indent=2).encode())


def _reshard(folder: Path, tensors: dict) -> None:
    """Two shards + index instead of model.safetensors (the embedding alone in the first shard)."""
    (folder / WEIGHTS).unlink(missing_ok=True)
    first = {k: v for k, v in tensors.items() if "embed_tokens" in k}
    rest = {k: v for k, v in tensors.items() if k not in first}
    weight_map = {}
    for i, part in enumerate((first, rest)):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file(part, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    _write_json(folder / INDEX, {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))})


def _native_qwen3(ours: Path, dst: Path) -> Path:
    """Our text-only folder as a native Qwen3ForCausalLM one (flat config; our text keys are Qwen3's)."""
    dst.mkdir()
    config = json.loads((ours / "config.json").read_text())
    text = {k: v for k, v in config["text_config"].items() if k != "model_type"}
    text.update(model_type="qwen3", architectures=["Qwen3ForCausalLM"], tie_word_embeddings=True)
    _write_json(dst / "config.json", text)
    os.link(ours / WEIGHTS, dst / WEIGHTS)
    return dst


def _native_qwen3_vl(ours_mm: Path, dst: Path) -> Path:
    """Our tiny-mm folder as a native Qwen3VLForConditionalGeneration one (release-format config, no audio)."""
    dst.mkdir()
    config = json.loads((ours_mm / "config.json").read_text())
    native = {
        "model_type": "qwen3_vl",
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "text_config": {**config["text_config"], "model_type": "qwen3_vl_text"},
        "vision_config": {**config["vision_config"], "model_type": "qwen3_vl"},  # as the release names it
        "tie_word_embeddings": config["tie_word_embeddings"],
        **{k: v for k, v in config.items() if k.endswith("_token_id") and not k.startswith("audio")},
    }
    _write_json(dst / "config.json", native)
    tensors = {}
    for key, value in load_file(ours_mm / WEIGHTS).items():
        if key.startswith("model.audio_tower."):
            continue
        if not key.startswith(("model.visual.", "lm_head.")):
            key = key.replace("model.", "model.language_model.", 1)
        tensors[key] = value
    save_file(tensors, dst / WEIGHTS, metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("valid")
    for preset in ("tiny", "tiny-mm"):
        assert main(["init", str(root / preset), "--preset", preset]) == 0
    found = {"tiny": root / "tiny", "tiny-mm": root / "tiny-mm"}
    found["sharded"] = _clone(found["tiny"], root / "sharded")
    _reshard(found["sharded"], load_file(found["tiny"] / WEIGHTS))
    found["native"] = _native_qwen3(found["tiny"], root / "native")
    found["native-sharded"] = _clone(found["native"], root / "native-sharded")
    _reshard(found["native-sharded"], load_file(found["native"] / WEIGHTS))
    found["native-vl"] = _native_qwen3_vl(found["tiny-mm"], root / "native-vl")
    return found


def _clone(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def test_every_base_folder_is_valid(bases):
    for name, folder in bases.items():
        ckpt = validate_folder(folder)
        assert ckpt.tensors, name


# --- corruptions ---------------------------------------------------------------------------------------------------
def _weights(folder: Path) -> Path:
    return folder / WEIGHTS if (folder / WEIGHTS).exists() else sorted(folder.glob("model-*.safetensors"))[-1]


def _config(folder: Path, change: Callable[[dict], None]) -> str:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    _write_json(folder / "config.json", config)
    return "config.json"


def _text(config: dict) -> dict:
    return config.get("text_config", config)


def _set_text(**values) -> Callable[[Path], str]:
    return lambda f: _config(f, lambda c: _text(c).update(values))


def _drop(section: str | None, key: str) -> Callable[[Path], str]:
    def change(config):
        (_text(config) if section is None else config[section]).pop(key)

    return lambda f: _config(f, change)


def _set(section: str, **values) -> Callable[[Path], str]:
    return lambda f: _config(f, lambda c: c[section].update(values))


def _bytes(change: Callable[[bytes], bytes]) -> Callable[[Path], str]:
    def damage(folder: Path) -> str:
        path = _weights(folder)
        _write_bytes(path, change(path.read_bytes()))
        return path.name

    return damage


def _header(change: Callable[[dict], None]) -> Callable[[Path], str]:
    """Rewrite one safetensors header (the data region is kept)."""

    def damage(folder: Path) -> str:
        path = _weights(folder)
        data = path.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        change(header)
        raw = json.dumps(header).encode()
        _write_bytes(path, struct.pack("<Q", len(raw)) + raw + data[8 + n :])
        return path.name

    return damage


def _first_tensor(header: dict) -> dict:
    return header[min(k for k in header if k != "__metadata__")]


def _last_tensor(header: dict) -> dict:
    return max((v for k, v in header.items() if k != "__metadata__"), key=lambda v: v["data_offsets"][0])


def _index(change: Callable[[dict, Path], None]) -> Callable[[Path], str]:
    def damage(folder: Path) -> str:
        index = json.loads((folder / INDEX).read_text())
        change(index, folder)
        _write_json(folder / INDEX, index)
        return INDEX

    return damage


def _outside_copy(folder: Path) -> Path:
    """A valid shard outside the folder, so that following an escaping path would succeed."""
    shard = _weights(folder)
    target = folder.parent / f"escaped-{folder.name}.safetensors"
    shutil.copyfile(shard, target)
    return target


def _escape_index(kind: str) -> Callable[[Path], str]:
    def change(index: dict, folder: Path) -> None:
        shard = _weights(folder).name
        target = _outside_copy(folder)
        name = f"../{target.name}" if kind == "parent" else str(target)
        index["weight_map"] = {k: (name if v == shard else v) for k, v in index["weight_map"].items()}

    return _index(change)


def _symlink_out(folder: Path) -> str:
    shard = _weights(folder)
    target = _outside_copy(folder)
    shard.unlink()
    shard.symlink_to(target)
    return shard.name


def _missing_shard(folder: Path) -> str:
    shard = _weights(folder)
    shard.unlink()
    return shard.name


def _wrong_shard(index: dict, folder: Path) -> None:
    names = sorted(set(index["weight_map"].values()))
    key = next(k for k, v in index["weight_map"].items() if v == names[-1])
    index["weight_map"][key] = names[0]


def _drop_tensor(folder: Path) -> str:
    tensors = load_file(folder / WEIGHTS)
    del tensors[next(k for k in tensors if k.endswith("mlp.up_proj.weight"))]
    (folder / WEIGHTS).unlink()
    save_file(tensors, folder / WEIGHTS, metadata={"format": "pt"})
    return "config.json"  # "the weights do not match config.json: missing tensors …"


def _weights_folder(folder: Path) -> str:
    (folder / WEIGHTS).unlink()
    (folder / WEIGHTS).mkdir()
    return WEIGHTS


def _no_weights(folder: Path) -> str:
    (folder / WEIGHTS).unlink()
    return WEIGHTS


def _raw_config(text: str) -> Callable[[Path], str]:
    def damage(folder: Path) -> str:
        _write_bytes(folder / "config.json", text.encode())
        return "config.json"

    return damage


def _no_config(folder: Path) -> str:
    (folder / "config.json").unlink()
    return "config.json"


def _header_as_list(data: bytes) -> bytes:
    raw = b"[1]"
    return struct.pack("<Q", len(raw)) + raw + data[8 + struct.unpack("<Q", data[:8])[0] :]


def _kv_heads_three(config: dict) -> None:
    text = _text(config)
    text.pop("head_dim")
    text.update(num_attention_heads=3, num_key_value_heads=3)


# role: which valid folder a case damages. "text" / "sharded" / "mm": ours (tiny, sharded, tiny-mm) and, for `import`,
# the native Qwen3 / Qwen3 sharded / Qwen3-VL folder; "ours" / "audio": only ours (tiny / tiny-mm; not `import`).
CASES: dict[str, tuple[str, Callable[[Path], str]]] = {
    # safetensors files
    "truncated weights": ("text", _bytes(lambda d: d[: len(d) // 2])),
    "0-byte weights": ("text", _bytes(lambda d: b"")),
    "3-byte weights": ("text", _bytes(lambda d: d[:3])),
    "header length 2^62": ("text", _bytes(lambda d: struct.pack("<Q", 2**62) + d[8:])),
    "header length past the end": ("text", _bytes(lambda d: struct.pack("<Q", len(d)) + d[8:])),
    "header not JSON": ("text", _bytes(lambda d: d[:8] + b"\xff" + d[9:])),
    "header a JSON list": ("text", _bytes(_header_as_list)),
    "unknown dtype": ("text", _header(lambda h: _first_tensor(h).update(dtype="Q9"))),
    "integer dtype": ("text", _header(lambda h: _first_tensor(h).update(dtype="I32"))),
    "shape disagrees with data_offsets": ("text", _header(lambda h: _first_tensor(h)["shape"].__setitem__(0, 3))),
    "data_offsets past the end": (
        "text",
        _header(lambda h: _last_tensor(h).update(data_offsets=[o + 64 for o in _last_tensor(h)["data_offsets"]])),
    ),
    "bytes after the last tensor": ("text", _bytes(lambda d: d + b"\0" * 16)),
    "weights file is a folder": ("ours", _weights_folder),
    "no weights": ("text", _no_weights),
    "tensor missing": ("text", _drop_tensor),
    "shapes disagree with config": ("text", _set_text(intermediate_size=96)),
    # the index of a sharded checkpoint
    "index without weight_map": ("sharded", _index(lambda i, f: i.pop("weight_map"))),
    "index weight_map a list": ("sharded", _index(lambda i, f: i.update(weight_map=[]))),
    "index not JSON": ("sharded", lambda f: _write_bytes(f / INDEX, b"{not json") or INDEX),
    "index entry not a string": ("sharded", _index(lambda i, f: i["weight_map"].update({"model.norm.weight": 5}))),
    "index names a missing shard": ("sharded", _missing_shard),
    "index entry ../": ("sharded", _escape_index("parent")),
    "index entry absolute": ("sharded", _escape_index("absolute")),
    "shard a symlink out of the folder": ("sharded", _symlink_out),
    "index puts a tensor in the wrong shard": ("sharded", _index(_wrong_shard)),
    "truncated shard": ("sharded", _bytes(lambda d: d[: len(d) - 100])),
    # tokenizer.json
    "tokenizer.json a JSON list": ("ours", lambda f: _write_bytes(f / "tokenizer.json", b"[1]") or "tokenizer.json"),
    "tokenizer.json without a vocab": (
        "ours",
        lambda f: _write_bytes(f / "tokenizer.json", b'{"model": {"type": "BPE"}}') or "tokenizer.json",
    ),
    "processor_config.json not JSON": (
        "audio",
        lambda f: _write_bytes(f / "processor_config.json", b"{oops") or "processor_config.json",
    ),
    # config.json
    "config.json not JSON": ("text", _raw_config('{"model_type": ')),
    "config.json a JSON list": ("text", _raw_config("[]")),
    "no config.json": ("text", _no_config),
    "unknown model_type": ("text", lambda f: _config(f, lambda c: c.update(model_type="llama"))),
    "missing hidden_size": ("text", _drop(None, "hidden_size")),
    "string size": ("text", _set_text(hidden_size="64")),
    "fractional layer count": ("text", _set_text(num_hidden_layers=2.5)),
    "boolean vocab_size": ("text", _set_text(vocab_size=True)),
    "negative size": ("text", _set_text(intermediate_size=-128)),
    "zero heads": ("text", _set_text(num_attention_heads=0)),
    "heads not a multiple of kv heads": ("text", _set_text(num_key_value_heads=3)),
    "hidden not a multiple of heads": ("text", lambda f: _config(f, _kv_heads_three)),
    "NaN rms_norm_eps": ("text", _set_text(rms_norm_eps=math.nan)),
    "layer_types of the wrong length": ("text", _set_text(layer_types=["full_attention"])),
    "tie_word_embeddings a string": ("text", lambda f: _config(f, lambda c: c.update(tie_word_embeddings="yes"))),
    "text_config a list": ("ours", lambda f: _config(f, lambda c: c.update(text_config=[]))),
    # tower configs
    "vision config without depth": ("mm", _drop("vision_config", "depth")),
    "vision_config a string": ("mm", lambda f: _config(f, lambda c: c.update(vision_config="qwen3_vl"))),
    "vision heads not dividing": ("mm", _set("vision_config", num_heads=3)),
    "vision out_hidden_size differs": ("mm", _set("vision_config", out_hidden_size=32)),
    "deepstack index past the tower": ("mm", _set("vision_config", deepstack_visual_indexes=[5])),
    "vision tower variant": ("mm", _set("vision_config", model_type="qwen2_5_vl_vision")),
    "mrope_section sum": (
        "mm",
        lambda f: _config(f, lambda c: c["text_config"]["rope_parameters"].update(mrope_section=[6, 5, 4])),
    ),
    "audio config without d_model": ("audio", _drop("audio_config", "d_model")),
    "audio heads not dividing": ("audio", _set("audio_config", encoder_attention_heads=3)),
    "audio output_dim differs": ("audio", _set("audio_config", output_dim=32)),
}

OURS = {"text": "tiny", "ours": "tiny", "sharded": "sharded", "mm": "tiny-mm", "audio": "tiny-mm"}
NATIVE = {"text": "native", "sharded": "native-sharded", "mm": "native-vl"}


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "chat.jsonl"
    record = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
    path.write_text(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="module")
def gguf_file(bases, tmp_path_factory) -> Path:
    outdir = tmp_path_factory.mktemp("gguf")
    assert main(["convert", str(bases["tiny"]), str(outdir), "--outtype", "f16", "--no-progress"]) == 0
    return outdir / "tiny-F16.gguf"


def _argv(verb: str, folder: Path, out: Path, chat_data: Path, gguf_file: Path) -> list[str]:
    return {
        "convert": ["convert", str(folder), str(out), "--no-progress"],
        "import": ["import", str(folder), str(out)],
        "generate": ["generate", str(folder), "--prompt", "Hi", "--max-new-tokens", "1"],
        "verify": ["verify", str(folder), str(gguf_file)],
        "finetune": ["finetune", str(folder), str(chat_data), str(out), "--max-steps", "1"],
        "export": ["export", str(folder), str(out)],
    }[verb]


def assert_one_line_error(verb: str, code: int, err: str, *needles: str) -> str:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1, f"exit {code}, stderr:\n{err}"
    assert lines[0].startswith(f"transformers-qwen3 {verb}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in: {lines[0]}"
    return lines[0]


VERB_CASES = [
    pytest.param(verb, case, id=f"{verb}-{case}")
    for verb in ("convert", "verify", "finetune", "generate", "export", "import")
    for case, (role, _) in CASES.items()
    if verb != "import" or role in NATIVE
]


@pytest.mark.parametrize(("verb", "case"), VERB_CASES)
def test_bad_folder_is_one_clear_error(verb, case, bases, chat_data, gguf_file, tmp_path, capsys):
    role, damage = CASES[case]
    base = bases[(NATIVE if verb == "import" else OURS)[role]]
    folder = _clone(base, tmp_path / "model")
    needle = damage(folder)
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(_argv(verb, folder, out, chat_data, gguf_file))
    assert_one_line_error(verb, code, capsys.readouterr().err, needle)
    assert not out.exists(), f"{verb} left {sorted(p.name for p in out.iterdir())}"
    assert not out.with_name("out.checkpoints").exists()


# --- (b) any damage is a FolderError or nothing ------------------------------------------------------------------
def _config_paths(config: dict, prefix=()) -> list[tuple[str, ...]]:
    paths = []
    for key, value in config.items():
        paths.append((*prefix, key))
        if isinstance(value, dict):
            paths.extend(_config_paths(value, (*prefix, key)))
    return paths


def _retyped(value, choice: int):
    options = [
        None,
        "12",
        -1,
        0,
        2.5,
        True,
        [value],
        {"x": value},
        -value if isinstance(value, (int, float)) and not isinstance(value, bool) else -3,
        10**12,
        math.inf,
    ]
    return options[choice % len(options)]


@st.composite
def damages(draw):
    """(base folder, a function damaging a copy of it)."""
    kind = draw(st.sampled_from(["truncate", "flip header", "drop key", "retype value", "index"]))
    if kind == "index":
        how = draw(st.sampled_from(["drop", "retype", "entry", "half the entries"]))
        junk = draw(st.sampled_from(["", "../x.safetensors", "/etc/passwd", "a/b.safetensors", 7, None, [], "x"]))
        key = draw(st.sampled_from(["model.norm.weight", "model.embed_tokens.weight", "not.a.tensor"]))

        def damage(folder: Path) -> None:
            index = json.loads((folder / INDEX).read_text())
            weight_map = index["weight_map"]
            if how == "drop":
                index.pop("weight_map")
            elif how == "retype":
                index["weight_map"] = junk
            elif how == "entry":
                weight_map[key] = junk
            else:
                for k in list(weight_map)[: len(weight_map) // 2]:
                    weight_map[k] = junk
            _write_json(folder / INDEX, index)

        return "sharded", f"index {how} {junk!r} ({key})", damage
    base = draw(st.sampled_from(["tiny", "tiny-mm", "sharded"]))
    if kind == "truncate":
        fraction = draw(st.floats(0, 1, exclude_max=True))

        def damage(folder: Path) -> None:
            path = _weights(folder)
            data = path.read_bytes()
            _write_bytes(path, data[: int(len(data) * fraction)])

        return base, f"truncate at {fraction:.6f}", damage
    if kind == "flip header":
        flips = draw(
            st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4)
        )

        def damage(folder: Path) -> None:
            path = _weights(folder)
            data = bytearray(path.read_bytes())
            header_end = 8 + struct.unpack("<Q", data[:8])[0]
            for where, byte in flips:
                data[int(where * header_end)] = byte
            _write_bytes(path, bytes(data))

        return base, f"flip {flips}", damage
    choice = draw(st.integers(0, 10**6))
    option = draw(st.integers(0, 100))

    def damage(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        paths = _config_paths(config)
        path = paths[choice % len(paths)]
        parent = config
        for key in path[:-1]:
            parent = parent[key]
        if kind == "drop key":
            parent.pop(path[-1])
        else:
            parent[path[-1]] = _retyped(parent[path[-1]], option)
        _write_json(folder / "config.json", config)

    return base, f"{kind} #{choice} option {option}", damage


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=damages())
def test_any_damage_is_a_folder_error_or_nothing(bases, damage):
    base, description, apply = damage
    with tempfile.TemporaryDirectory() as tmp:
        folder = _clone(bases[base], Path(tmp) / "model")
        apply(folder)
        try:
            validate_folder(folder)
        except FolderError:
            pass
        except Exception as e:  # noqa: BLE001 - any other exception is the bug this test looks for
            raise AssertionError(f"{base}, {description}: {type(e).__name__}: {e}") from e


# --- (c) an index may not reach outside its folder -----------------------------------------------------------------
@pytest.mark.parametrize("verb", ["convert", "import"])
@pytest.mark.parametrize("kind", ["parent", "absolute"])
def test_index_cannot_name_files_outside_the_folder(verb, kind, bases, tmp_path, capsys):
    folder = _clone(bases["sharded" if verb == "convert" else "native-sharded"], tmp_path / "model")
    _escape_index(kind)(folder)
    out = tmp_path / "out"
    code = main([verb, str(folder), str(out)])
    line = assert_one_line_error(verb, code, capsys.readouterr().err, INDEX)
    assert "not a file name in the checkpoint folder" in line
    assert not out.exists()


def test_symlinks_inside_the_folder_and_into_a_hub_cache_blobs_folder_are_followed(bases, tmp_path):
    """A Hub cache snapshot (models--ORG--NAME/snapshots/REV/) holds symlinks into the repository's blobs/: those,
    and symlinks within the folder, are the checkpoint's own files."""
    repo = tmp_path / "models--org--tiny"
    snapshot, blobs = repo / "snapshots" / "0123abc", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, path in enumerate(sorted(bases["sharded"].iterdir())):
        os.link(path, blobs / f"blob{i}")
        (snapshot / path.name).symlink_to(Path("../../blobs") / f"blob{i}")
    assert validate_folder(snapshot).tensors
    local = _clone(bases["tiny"], tmp_path / "local")
    (local / WEIGHTS).rename(local / "weights.bin.safetensors")
    (local / WEIGHTS).symlink_to("weights.bin.safetensors")
    assert validate_folder(local).tensors


@pytest.mark.parametrize(
    ("config", "weights", "needle"),
    [
        ("[]", b"", "adapter_config.json"),
        ('{"peft_type": "LORA"}', b"\x10\x00\x00", "adapter_model.safetensors"),
    ],
    ids=["adapter config a list", "truncated adapter weights"],
)
def test_bad_adapter_folder(config, weights, needle, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(config)
    (adapter / "adapter_model.safetensors").write_bytes(weights)
    code = main(["convert", str(adapter), str(tmp_path / "out")])
    assert_one_line_error("convert", code, capsys.readouterr().err, needle)
    assert not (tmp_path / "out").exists()


# --- convert: quantizer options checked before anything is written -------------------------------------------------
def test_k_quant_without_llama_cpp_is_refused_before_writing(bases, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` raises ImportError
    out = tmp_path / "out"
    code = main(["convert", str(bases["tiny"]), str(out), "--outtype", "q4_k_m"])
    assert_one_line_error("convert", code, capsys.readouterr().err, "llama-cpp-python", "make llama-cpp")
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "needle"),
    [("ffn_down=q9_9", "unknown ggml type 'q9_9'"), ("(=q8_0", "not a valid regex")],
)
def test_bad_tensor_type_is_refused_before_writing(option, needle, bases, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["convert", str(bases["tiny"]), str(out), "--outtype", "q4_k_m", "--tensor-type", option])
    assert_one_line_error("convert", code, capsys.readouterr().err, needle)
    assert not out.exists()


# --- verify: the GGUF and llama-cpp-python -------------------------------------------------------------------------
def test_verify_truncated_gguf(bases, gguf_file, tmp_path, capsys):
    data = gguf_file.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) * 3 // 4])  # cut in the tensor data, like an interrupted copy
    code = main(["verify", str(bases["tiny"]), str(truncated)])
    assert_one_line_error("verify", code, capsys.readouterr().err, str(truncated), "truncated or corrupt GGUF")


def test_verify_not_a_gguf(bases, tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    code = main(["verify", str(bases["tiny"]), str(fake)])
    assert_one_line_error("verify", code, capsys.readouterr().err, str(fake), "not a GGUF file")


def test_verify_without_llama_cpp(bases, gguf_file, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    code = main(["verify", str(bases["tiny"]), str(gguf_file)])
    assert_one_line_error("verify", code, capsys.readouterr().err, "llama-cpp-python", "make llama-cpp")


# --- finetune: the data checked before training; nothing left after a failure -------------------------------------
def _media_data(folder: Path, second_text: str, image_name: str = "a.png") -> Path:
    from PIL import Image

    folder.mkdir(exist_ok=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "a.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = {
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "Colour?"}]},
            {"role": "assistant", "content": "Red."},
        ]
    }
    bad = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "image": image_name}, {"type": "text", "text": second_text}],
            },
            {"role": "assistant", "content": "Red."},
        ]
    }
    path = folder / "train.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    return path


@pytest.mark.parametrize(
    ("text", "image", "needle"),
    [
        ("And this? <image>missing.png</image>", "a.png", "<image> 'missing.png'"),
        ("Colour?", "broken.png", "cannot decode image"),
    ],
    ids=["inline tag naming a missing file", "undecodable image"],
)
def test_finetune_checks_media_before_training(text, image, needle, bases, tmp_path, capsys):
    data = _media_data(tmp_path / "data", text, image)
    out = tmp_path / "out"
    code = main(["finetune", str(bases["tiny-mm"]), str(data), str(out), "--max-steps", "1"])
    assert_one_line_error("finetune", code, capsys.readouterr().err, f"{data}:2:", needle)
    assert not out.exists() and not out.with_name("out.checkpoints").exists()


def test_finetune_failure_after_trainer_leaves_no_checkpoint_folder(bases, chat_data, tmp_path, capsys, monkeypatch):
    from transformers import Trainer

    from transformers_qwen3.training.finetune import DataError

    def fail(self, *args, **kwargs):
        raise DataError("simulated failure in the first step")

    monkeypatch.setattr(Trainer, "train", fail)
    out = tmp_path / "out"
    code = main(["finetune", str(bases["tiny"]), str(chat_data), str(out), "--max-steps", "1"])
    err = capsys.readouterr().err  # the model loaded, so its progress lines come first
    assert code == 2 and "Traceback" not in err, err
    assert err.splitlines()[-1] == "transformers-qwen3 finetune: error: simulated failure in the first step"
    assert not out.exists() and not out.with_name("out.checkpoints").exists()
