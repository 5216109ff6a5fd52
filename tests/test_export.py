"""`transformers-qwen3 export`: repository layout, model card, licence, clean-process loading, upload, bad input.

The upload runs against tests/hub_server.py, a small stdlib stand-in for the Hub (see its docstring for exactly
which endpoints it speaks); the real Hub's YAML validator and storage are not exercised offline.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.processes import REPO, run_clean_python
from hub_server import HubServer
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from transformers_qwen3.checkpoint.hub_folder import HUB_FILES, MODEL_AUTO_MAP
from transformers_qwen3.cli import main as cli_main
from transformers_qwen3.export import licensing, provenance
from transformers_qwen3.export import modelcard as mc
from transformers_qwen3.export.errors import ExportError

REPO_ID = "tester/tiny-export"
PROMPT_IDS = [151644, 872, 198, 9707, 11, 1879, 0, 151645, 198, 151644, 77091, 198]


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory, qwen3_tokenizer):
    from transformers_qwen3.checkpoint.build import init_checkpoint

    return init_checkpoint(tmp_path_factory.mktemp("src") / "tiny", "tiny", seed=0, tokenizer=qwen3_tokenizer)


@pytest.fixture(scope="module")
def exported(tiny_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny-export"
    # a small shard size so that even the tiny model is written as several shards with an index
    rc = cli_main(["export", str(tiny_src), str(out), "--max-shard-size", "10MB", "--repo-id", REPO_ID])
    assert rc == 0
    return out


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---- licence ---------------------------------------------------------------------------------------------------


def test_our_licence_has_use_restrictions_that_pass_to_derivatives():
    text = licensing.our_license_text()
    for needle in ("Attachment A", "Weapons and military use", "Fraud and deception", "Surveillance that violates",
                   "Harassment", "Discrimination", "minors", "medical advice", "legal advice", "Derivative"):  # fmt: skip
        assert needle in text, needle
    assert re.search(r"include the use restrictions of Attachment A", text)
    assert "Distribute" in text and "modify" in text  # open use, modification, redistribution


@pytest.mark.parametrize(
    "hub_id",
    ["apache-2.0", "mit", "openrail", "openrail++", "bigscience-openrail-m", "creativeml-openrail-m",
     "bigscience-bloom-rail-1.0", "bigcode-openrail-m", "llama3.1", "gemma", "other"],
)  # fmt: skip
def test_hub_licence_ids_accepted(hub_id):
    assert hub_id in licensing.HUB_LICENSE_IDS


def test_our_licence_is_other_with_name_and_link():
    assert licensing.OUR_LICENSE_NAME not in licensing.HUB_LICENSE_IDS  # the Hub does not know it: it must be `other`
    lic = licensing.our_license()
    assert (lic.hub_id, lic.name, lic.link) == ("other", "qwen3-mm-rail-1.0", "LICENSE")
    assert re.fullmatch(r"[a-z0-9.\-]+", lic.name)  # the Hub's license_name form


def _folder_with_card(tmp_path, meta: dict | None, license_text: str | None = None, record: dict | None = None):
    folder = tmp_path / "src"
    folder.mkdir()
    if meta is not None:
        ModelCard.from_template(ModelCardData(**meta), template_str="---\n{{ card_data }}\n---\n# x\n").save(
            folder / "README.md"
        )
    if license_text is not None:
        (folder / "LICENSE").write_text(license_text)
    if record is not None:
        (folder / provenance.PROVENANCE_FILE).write_text(json.dumps(record))
    return folder


def test_licence_defaults_to_ours_when_source_declares_none(tmp_path):
    lic = licensing.resolve_license(_folder_with_card(tmp_path, None))
    assert lic.name == licensing.OUR_LICENSE_NAME and lic.text == licensing.our_license_text()


def test_derived_export_keeps_the_source_licence(tmp_path):
    lic = licensing.resolve_license(_folder_with_card(tmp_path, {"license": "apache-2.0"}, "APACHE TEXT"))
    assert (lic.hub_id, lic.text) == ("apache-2.0", "APACHE TEXT")
    assert "inherited" in lic.origin


def test_derived_export_keeps_a_custom_other_licence(tmp_path):
    meta = {"license": "other", "license_name": "acme-model-license", "license_link": "LICENSE"}
    lic = licensing.resolve_license(_folder_with_card(tmp_path, meta, "ACME TERMS"))
    assert (lic.hub_id, lic.name, lic.text) == ("other", "acme-model-license", "ACME TERMS")


def test_licence_from_provenance_record(tmp_path):
    prov = {"relation": "imported", "base_model": "Qwen/Qwen3-0.6B", "license": "apache-2.0"}
    lic = licensing.resolve_license(_folder_with_card(tmp_path, None, record=prov))
    assert lic.hub_id == "apache-2.0" and "apache-2.0" in lic.text  # no LICENSE file: a pointer text


def test_license_argument_overrides(tmp_path):
    folder = _folder_with_card(tmp_path, {"license": "apache-2.0"}, "APACHE TEXT")
    assert licensing.resolve_license(folder, "MIT").hub_id == "mit"
    assert licensing.resolve_license(folder, "apache-2.0").text == "APACHE TEXT"  # same id: the source's text is kept
    assert licensing.resolve_license(folder, "qwen3-mm-rail-1.0").name == licensing.OUR_LICENSE_NAME


def test_dropping_a_rail_licence_warns(tmp_path, capsys):
    from transformers_qwen3.export.publish import _warn_if_dropping_restrictions

    folder = _folder_with_card(tmp_path, {"license": "openrail"}, "OPENRAIL TEXT")
    _warn_if_dropping_restrictions(folder, licensing.resolve_license(folder, "mit"))
    assert "use restrictions must be passed on" in capsys.readouterr().err
    _warn_if_dropping_restrictions(folder, licensing.resolve_license(folder, "bigscience-openrail-m"))
    assert capsys.readouterr().err == ""


def test_unknown_licence_lists_the_accepted_ones(tmp_path):
    with pytest.raises(ExportError) as err:
        licensing.resolve_license(_folder_with_card(tmp_path, None), "apache2")
    assert "'apache2'" in str(err.value) and "apache-2.0" in str(err.value) and "qwen3-mm-rail-1.0" in str(err.value)


def test_other_without_a_licence_file_is_refused(tmp_path):
    with pytest.raises(ExportError, match="no LICENSE file"):
        licensing.resolve_license(_folder_with_card(tmp_path, {"license": "other", "license_name": "acme"}))


def test_license_other_needs_a_source_that_declares_one(tmp_path):
    with pytest.raises(ExportError, match="--license other"):
        licensing.resolve_license(_folder_with_card(tmp_path, None), "other")


# ---- card ------------------------------------------------------------------------------------------------------


def _facts(vision=True, audio=True):
    return mc.ModelFacts(
        name="demo", has_vision=vision, has_audio=audio,
        text={"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
              "head_dim": 64, "intermediate_size": 768, "max_position_embeddings": 4096, "vocab_size": 151936},
        params={"text decoder": 40_000_000, "vision tower": 3_000_000, "audio tower": 2_000_000},
        weight_bytes=90_000_000, weight_files=["model.safetensors"], dtype="BF16",
        kv_bytes_per_token=2 * 4 * 2 * 64 * 2,
    )  # fmt: skip


def _gguf(file, kind, ftype, size, top1=None, kl=None):
    g = mc.GGUFFacts(file, kind, ftype, size, 45_000_000, size - 1000, [(ftype.split("_")[0], 0.9), ("F32", 0.1)])
    g.top1_agreement, g.kl_divergence = top1, kl
    return g


def _card_inputs(**overrides):
    inputs = dict(
        facts=_facts(),
        license=licensing.our_license(),
        repo_id="tester/demo",
        provenance=provenance.Provenance("finetune", ("Qwen/Qwen3-0.6B",), ("tester/shapes",)),
        eval_results=[EvalResult(task_type="visual-question-answering", task_name="image questions",
                                 dataset_type="synthetic", dataset_name="synthetic shapes", dataset_split="test",
                                 metric_type="accuracy", metric_name="exact match", metric_value=0.96)],
        ggufs=[_gguf("demo-Q8_0.gguf", "model", "Q8_0", 48_000_000, 0.991, 0.0012),
               _gguf("demo-Q4_K_M.gguf", "model", "Q4_K_M", 28_000_000),
               _gguf("mmproj-demo-Q8_0.gguf", "mmproj", "Q8_0", 6_000_000)],
        gguf_repo_id="tester/demo-GGUF",
        transformers_floor="5.24.0",
    )  # fmt: skip
    inputs.update(overrides)
    return mc.CardInputs(**inputs)


def _round_trip(card: ModelCard, tmp_path: Path) -> ModelCard:
    path = tmp_path / "README.md"
    card.save(path)
    loaded = ModelCard.load(path)
    again = ModelCardData(**loaded.data.to_dict())
    assert again.to_dict() == loaded.data.to_dict(), "card metadata does not survive ModelCardData"
    assert loaded.data.to_dict() == card.data.to_dict(), "card metadata changed on save/load"
    return loaded


def test_multimodal_card_metadata_round_trips(tmp_path):
    card = mc.build_model_card(_card_inputs())
    loaded = _round_trip(card, tmp_path)
    meta = loaded.data.to_dict()
    assert meta["license"] == "other" and meta["license_name"] == "qwen3-mm-rail-1.0"
    assert meta["license_link"] == "LICENSE"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-text-to-text"
    assert {"qwen3", "multimodal", "custom_code"} <= set(meta["tags"]) and "gguf" not in meta["tags"]
    assert meta["base_model"] == ["Qwen/Qwen3-0.6B"] and meta["base_model_relation"] == "finetune"
    assert meta["datasets"] == ["tester/shapes"]
    assert loaded.data.eval_results[0].metric_value == 0.96
    body = loaded.text
    assert "trust_remote_code=True" in body and "from qwen3_multimodal import Pipeline" in body
    assert "llama-mtmd-cli" in body and "from llama_cpp import Llama" in body
    assert "pip install soundfile" in body
    assert "99.1%" in body and "not measured" in body  # measured where recorded, never invented
    assert "Which file fits which memory" in body and "Weapons" not in body and "weapons" in body


def test_gguf_card_is_a_quantization_of_the_transformers_repo(tmp_path):
    loaded = _round_trip(mc.build_gguf_card(_card_inputs()), tmp_path)
    meta = loaded.data.to_dict()
    assert "gguf" in meta["tags"] and meta["base_model"] == ["tester/demo"]
    assert meta["base_model_relation"] == "quantized" and meta["license_name"] == "qwen3-mm-rail-1.0"
    assert "mmproj-demo-Q8_0.gguf" in loaded.text and "from_pretrained" not in loaded.text


def test_card_pipeline_tag_follows_the_towers():
    assert mc.pipeline_tag(_facts(vision=False, audio=False)) == "text-generation"
    assert mc.pipeline_tag(_facts(vision=False, audio=True)) == "audio-text-to-text"
    assert mc.pipeline_tag(_facts(vision=True, audio=False)) == "image-text-to-text"


def test_imported_model_names_its_base_without_a_relation(tmp_path):
    prov = provenance.Provenance("imported", ("Qwen/Qwen3-0.6B",))
    meta = _round_trip(mc.build_model_card(_card_inputs(provenance=prov, eval_results=[])), tmp_path).data.to_dict()
    assert meta["base_model"] == ["Qwen/Qwen3-0.6B"] and "base_model_relation" not in meta  # the Hub has no "imported"


def test_memory_table_is_computed_from_sizes():
    inputs = _card_inputs()
    # Q4_K_M + mmproj (no mmproj of its own type: the first one) + KV for 4096 tokens + 512 MiB
    total = 28_000_000 + 6_000_000 + inputs.facts.kv_bytes_per_token * 4096 + 512 * 2**20
    assert mc.human_bytes(total) in mc.build_model_card(inputs).text
    assert mc.fits_in(total) == "1 GB"


@pytest.mark.parametrize(
    "record, message",
    [({"relation": "forked", "base_model": "a/b"}, "'relation' must be one of"),
     ({"relation": "finetune"}, "'base_model'"),
     ({"relation": "finetune", "base_model": "a/b", "datasets": 3}, "'datasets'")],
)  # fmt: skip
def test_bad_provenance_records(tmp_path, record, message):
    (tmp_path / provenance.PROVENANCE_FILE).write_text(json.dumps(record))
    with pytest.raises(ExportError, match=message):
        provenance.read_provenance(tmp_path)


# ---- the exported folder ---------------------------------------------------------------------------------------


def test_export_layout(exported, tiny_src):
    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "generation_config.json", "LICENSE", "README.md", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja", "model.safetensors.index.json"} <= names  # fmt: skip
    index = json.loads((exported / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and all((exported / s).is_file() for s in shards)
    config = json.loads((exported / "config.json").read_text())
    assert set(MODEL_AUTO_MAP) <= set(config["auto_map"])
    assert json.loads((exported / "tokenizer_config.json").read_text())["auto_map"]["AutoTokenizer"][1]
    for name in HUB_FILES:
        assert (exported / name).read_bytes() == (tiny_src / name).read_bytes()
    assert (exported / "LICENSE").read_text() == licensing.our_license_text()
    assert _leftovers(exported.parent) == []


def test_exported_card_round_trips_and_names_the_repo(exported, tmp_path):
    loaded = _round_trip(ModelCard.load(exported / "README.md"), tmp_path)
    meta = loaded.data.to_dict()
    assert meta["pipeline_tag"] == "text-generation" and meta["license_name"] == "qwen3-mm-rail-1.0"
    assert f'from_pretrained("{REPO_ID}"' in loaded.text


def test_exported_folder_loads_in_a_clean_process_with_the_same_logits(exported, tiny_src, tmp_path):
    """A Hub user's machine: no transformers_qwen3, only the folder. Same logits and token ids as the source, and
    the transformers snippet printed in the card (pointed at the local folder) runs as written."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = torch.tensor([PROMPT_IDS])
    source = AutoModelForCausalLM.from_pretrained(tiny_src, trust_remote_code=True).eval()
    with torch.no_grad():
        expected = source(input_ids=ids).logits[0]
    expected_ids = AutoTokenizer.from_pretrained(tiny_src, trust_remote_code=True)("Hello, 世界! 👋🏽").input_ids

    card = ModelCard.load(exported / "README.md").text
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    snippet = snippet.replace(f'"{REPO_ID}"', repr(str(exported))).replace("max_new_tokens=64", "max_new_tokens=4")
    assert repr(str(exported)) in snippet, "the card's snippet does not load the repo it describes"
    code = f"""
import json, torch
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained({str(exported)!r}, trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained({str(exported)!r}, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    logits = model(input_ids=torch.tensor([{PROMPT_IDS}])).logits[0]
torch.save(logits, {str(tmp_path / "logits.pt")!r})
print(json.dumps(tok("Hello, 世界! 👋🏽").input_ids))
"""
    out = run_clean_python(code + "\n# --- the card's snippet ---\n" + snippet, cwd=tmp_path)
    got = torch.load(tmp_path / "logits.pt")
    diff = (got - expected).abs().max().item()
    assert diff == 0.0, f"exported logits differ from the source: max abs diff {diff:.3g}"
    ids_line = next(line for line in out.splitlines() if line.startswith("["))
    assert json.loads(ids_line) == expected_ids


def test_card_pipeline_snippet_runs_on_the_export(exported):
    """The card's Pipeline API snippet (the product brief's `from qwen3_multimodal import Pipeline`) runs."""
    text = ModelCard.load(exported / "README.md").text
    snippet = re.search(r"### Pipeline API.*?```python\n(.*?)```", text, re.S).group(1)
    snippet = snippet.replace(f'"{REPO_ID}"', repr(str(exported))).replace("max_length=100", "max_length=4")
    exec(compile(snippet, "card snippet", "exec"), {})


def test_example_card_in_docs_is_a_valid_card():
    card = ModelCard.load(REPO / "docs" / "model_card_example.md")
    meta = card.data.to_dict()
    assert meta["license"] in licensing.HUB_LICENSE_IDS and meta["library_name"] == "transformers"
    assert ModelCardData(**meta).to_dict() == meta


def _linked_copy(src: Path, dst: Path) -> Path:
    """A cheap copy of a model folder: big files are hard links, small ones copies (so they can be edited).
    Not symlinks: a weight file that links out of its folder is refused (a cloned repo could point it anywhere)."""
    dst.mkdir()
    for path in src.iterdir():
        if path.stat().st_size > 1_000_000:
            os.link(path, dst / path.name)
        else:
            shutil.copyfile(path, dst / path.name)
    return dst


def test_export_of_a_derived_model_keeps_its_licence_and_provenance(tiny_src, tmp_path):
    src = _linked_copy(tiny_src, tmp_path / "finetuned")
    ModelCard.from_template(
        ModelCardData(license="apache-2.0"), template_str="---\n{{ card_data }}\n---\n# old card\n"
    ).save(src / "README.md")
    (src / "LICENSE").write_text("APACHE LICENSE TEXT\n")
    (src / provenance.PROVENANCE_FILE).write_text(
        json.dumps({"relation": "finetune", "base_model": "Qwen/Qwen3-0.6B"})
    )
    (src / provenance.EVAL_RESULTS_FILE).write_text(json.dumps({"results": [
        {"task_type": "text-generation", "dataset_type": "synthetic", "dataset_name": "toy", "metric_type": "accuracy",
         "metric_value": 0.5}]}))  # fmt: skip
    out = tmp_path / "out"
    assert cli_main(["export", str(src), str(out)]) == 0
    meta = ModelCard.load(out / "README.md").data.to_dict()
    assert meta["license"] == "apache-2.0" and (out / "LICENSE").read_text() == "APACHE LICENSE TEXT\n"
    assert meta["base_model"] == ["Qwen/Qwen3-0.6B"] and meta["base_model_relation"] == "finetune"
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.5
    assert (out / provenance.PROVENANCE_FILE).is_file()  # carried on, so the next export knows it too


# ---- bad input: one clear error, nothing left behind -----------------------------------------------------------


def _fails(argv, capsys, *needles):
    rc = cli_main(["export", *map(str, argv)])
    err = capsys.readouterr().err
    assert rc == 2, err
    for needle in needles:
        assert needle in err, err
    # one error line and no traceback (progress bars may precede it when the failure comes after loading)
    assert "Traceback" not in err and sum("error" in line for line in err.splitlines()) == 1, err
    return err


def test_existing_out_needs_force(tiny_src, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _fails([tiny_src, out], capsys, "already exists", "--force")
    assert (out / "keep.txt").read_text() == "mine" and _leftovers(tmp_path) == []


def test_model_without_tokenizer(tiny_src, tmp_path, capsys):
    src = _linked_copy(tiny_src, tmp_path / "src")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (src / name).unlink()
    _fails([src, tmp_path / "out"], capsys, "no tokenizer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_multimodal_model_without_processor(tiny_src, tmp_path, capsys):
    src = _linked_copy(tiny_src, tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    config["vision_config"] = {"depth": 1}
    (src / "config.json").write_text(json.dumps(config))
    _fails([src, tmp_path / "out"], capsys, "no processor files")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_unknown_licence_id(tiny_src, tmp_path, capsys):
    _fails([tiny_src, tmp_path / "out", "--license", "gpl-4.0"], capsys, "'gpl-4.0'", "apache-2.0", "openrail++")
    assert list(tmp_path.iterdir()) == []


def test_unknown_gguf_type(tiny_src, tmp_path, capsys):
    _fails([tiny_src, tmp_path / "out", "--gguf", "q8_0,q3_xyz"], capsys, "q3_xyz", "q4_k_m")
    assert list(tmp_path.iterdir()) == []


def test_out_inside_model_is_refused(tiny_src, tmp_path, capsys):
    src = _linked_copy(tiny_src, tmp_path / "src")
    _fails([src, src / "export", "--force"], capsys, "must not be the source")
    _fails([src, src, "--force"], capsys, "must not be the source")
    assert (src / "config.json").is_file() and not (src / "export").exists()


def test_not_a_qwen3_multimodal_folder(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    _fails([tmp_path / "src", tmp_path / "out"], capsys, "'llama'", "transformers-qwen3 import")


def test_truncated_weights_fail_before_anything_is_written(tiny_src, tmp_path, capsys):
    src = _linked_copy(tiny_src, tmp_path / "src")
    weights = src / "model.safetensors"
    data = weights.read_bytes()
    weights.unlink()
    weights.write_bytes(data[: len(data) // 2])
    _fails([src, tmp_path / "out"], capsys, "model.safetensors", "truncated")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no OUT, no temporary folder


def test_gguf_without_converter_is_a_clear_error(tiny_src, tmp_path, capsys, monkeypatch):
    # an installation without the converter: the import of transformers_qwen3.convert fails as if it were absent
    import transformers_qwen3

    monkeypatch.setitem(sys.modules, "transformers_qwen3.convert", None)
    monkeypatch.delattr(transformers_qwen3, "convert", raising=False)
    _fails([tiny_src, tmp_path / "out", "--gguf", "q8_0"], capsys, "GGUF converter")
    assert list(tmp_path.iterdir()) == []


def test_push_options_need_push(tiny_src, tmp_path, capsys):
    _fails([tiny_src, tmp_path / "out", "--private"], capsys, "--push")
    _fails([tiny_src, tmp_path / "out", "--push", "no-namespace"], capsys, "NAMESPACE/NAME")


# ---- GGUF ------------------------------------------------------------------------------------------------------


def _fake_converter(calls, fail=False):
    """Stands in for transformers_qwen3.convert.convert_checkpoint: writes a small but real GGUF with gguf-py."""
    import gguf
    import numpy as np

    def convert_checkpoint(src, outdir, outtype, name=None, force=False):
        calls.append((Path(src), Path(outdir), outtype, name, force))
        path = Path(outdir) / f"{name}-{outtype.upper()}.gguf"
        writer = gguf.GGUFWriter(path, "qwen3")
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        writer.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float16))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        if fail:  # the converter's own error type for bad input (a UserError, as the CLI expects)
            from transformers_qwen3.convert.errors import ConversionError

            raise ConversionError("converter failed half-way")
        return [path]

    return convert_checkpoint


def test_gguf_plumbing_with_a_stand_in_converter(tiny_src, tmp_path, monkeypatch):
    """The call export makes, where the files land, and the measured quality reaching the card."""
    from transformers_qwen3.export import publish as export

    calls = []
    monkeypatch.setattr(export, "_converter", lambda: _fake_converter(calls))
    src = _linked_copy(tiny_src, tmp_path / "src")
    quality = {"reference": "transformers fp32, 4 prompts", "files": {"m-F16.gguf": {"top1_agreement": 0.875}}}
    (src / provenance.GGUF_QUALITY_FILE).write_text(json.dumps(quality))
    assert cli_main(["export", str(src), str(tmp_path / "m"), "--gguf", "f16", "--repo-id", REPO_ID]) == 0
    ((called_src, called_out, outtype, name, force),) = calls
    assert (outtype, name, force) == ("f16", "m", True)
    assert called_src.parent == called_out.parent == tmp_path  # temporary folders beside OUT
    assert sorted(p.name for p in (tmp_path / "m-GGUF").iterdir()) == [
        "LICENSE",
        "README.md",
        "gguf_quality.json",
        "m-F16.gguf",
    ]
    gguf_card = (tmp_path / "m-GGUF" / "README.md").read_text()
    assert "| `m-F16.gguf` | model | F16 |" in gguf_card and "87.5%" in gguf_card and "4 prompts" in gguf_card
    assert "16.00" in gguf_card  # bits per weight of an all-F16 file
    assert f"[{REPO_ID}-GGUF](https://huggingface.co/{REPO_ID}-GGUF)" in (tmp_path / "m" / "README.md").read_text()
    assert _leftovers(tmp_path) == []


def test_a_failing_conversion_leaves_nothing(tiny_src, tmp_path, capsys, monkeypatch):
    from transformers_qwen3.export import publish as export

    monkeypatch.setattr(export, "_converter", lambda: _fake_converter([], fail=True))
    _fails([tiny_src, tmp_path / "m", "--gguf", "q8_0"], capsys, "converter failed half-way")
    assert list(tmp_path.iterdir()) == []  # neither OUT, OUT-GGUF nor their temporary folders


def test_gguf_export_has_its_own_card_and_loads_in_llama_cpp(tiny_src, tmp_path):
    if importlib.util.find_spec("transformers_qwen3.convert") is None:
        pytest.skip("transformers_qwen3.convert (the GGUF converter) is not available in this checkout")
    out = tmp_path / "tiny"
    assert cli_main(["export", str(tiny_src), str(out), "--gguf", "q8_0", "--repo-id", REPO_ID]) == 0
    gguf_dir = tmp_path / "tiny-GGUF"
    ggufs = sorted(gguf_dir.glob("*.gguf"))
    assert [g.name for g in ggufs] == ["tiny-Q8_0.gguf"], ggufs
    meta = ModelCard.load(gguf_dir / "README.md").data.to_dict()
    assert "gguf" in meta["tags"] and meta["base_model"] == [REPO_ID] and meta["base_model_relation"] == "quantized"
    assert (gguf_dir / "LICENSE").read_text() == licensing.our_license_text()
    assert not any(out.glob("*.gguf"))  # the transformers repo stays free of GGUF files
    assert "tiny-Q8_0.gguf" in (out / "README.md").read_text()
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp (llama-cpp-python) is not importable here; the GGUF was written but not run")
    from llama_cpp import Llama

    llm = Llama(model_path=str(ggufs[0]), n_ctx=64, n_threads=1, verbose=False)
    assert llm.n_vocab() == 151936
    assert len(llm.tokenize(b"Hello", add_bos=False)) >= 1


# ---- upload ----------------------------------------------------------------------------------------------------


def test_push_uploads_the_folder_byte_for_byte(tiny_src, tmp_path):
    out = tmp_path / "pushed"
    with HubServer() as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(
            HF_ENDPOINT=hub.url,  # read by huggingface_hub at import time: hence the subprocess
            HF_HUB_DISABLE_XET="1",  # the fake Hub speaks the classic LFS protocol only
            HF_TOKEN="hf_test_token",
            HF_HOME=str(tmp_path / "hf_home"),
            PYTHONPATH=str(REPO / "src"),
            OMP_NUM_THREADS="1",
        )
        argv = ["export", str(tiny_src), str(out), "--max-shard-size", "10MB", "--push", REPO_ID, "--private",
                "--revision", "v1.0"]  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "transformers_qwen3.cli", *argv],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
        repo = hub.repos[REPO_ID]
        local = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert repo.private
        assert repo.branches["main"] == {}  # uploaded to the requested branch only
        assert repo.branches["v1.0"] == local
        assert len(repo.commits) == 1
        assert any(p.endswith(".safetensors") for p in repo.commits[0]["paths"])
        assert hub.state.lfs, "weights should have gone through the LFS protocol"
        assert hub.state.auth_headers == {"Bearer hf_test_token"}
        assert ModelCard.load(out / "README.md").data.to_dict()["license_name"] == "qwen3-mm-rail-1.0"


# ---- multimodal ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_mm_src(tmp_path_factory, qwen3_tokenizer):
    from transformers_qwen3.checkpoint import hub_folder as hub
    from transformers_qwen3.checkpoint.build import init_checkpoint
    from transformers_qwen3.checkpoint.presets import PRESETS

    if "tiny-mm" not in PRESETS:
        pytest.skip("no tiny-mm preset in this checkout")
    src = init_checkpoint(tmp_path_factory.mktemp("src-mm") / "tiny-mm", "tiny-mm", seed=0, tokenizer=qwen3_tokenizer)
    if not any((src / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        from transformers_qwen3.remote.configuration_qwen3_multimodal import Qwen3MultimodalConfig

        # `init` of this checkout writes no processor yet: add the default one, as save_hub_folder does
        processor = hub.default_processor(Qwen3MultimodalConfig.from_pretrained(src), qwen3_tokenizer)
        hub.save_processor(processor, src)
    return src


@pytest.mark.slow
def test_multimodal_export_loads_in_a_clean_process_with_the_same_logits(tiny_mm_src, tmp_path, monkeypatch):
    """Image + audio through the card's own snippet in a clean process; its inputs then give the same logits in the
    source model loaded here."""
    import numpy as np
    import soundfile
    from PIL import Image
    from transformers import AutoModelForCausalLM

    out = tmp_path / "tiny-mm"
    argv = ["export", str(tiny_mm_src), str(out), "--repo-id", REPO_ID]
    converter = importlib.util.find_spec("transformers_qwen3.convert") is not None
    assert cli_main(argv + (["--gguf", "q8_0"] if converter else [])) == 0
    meta = ModelCard.load(out / "README.md").data.to_dict()
    assert meta["pipeline_tag"] == "image-text-to-text" and "multimodal" in meta["tags"]
    assert (out / "processor_config.json").read_bytes() == (tiny_mm_src / "processor_config.json").read_bytes()
    if converter:
        assert sorted(p.name for p in (tmp_path / "tiny-mm-GGUF").glob("*.gguf")) == [
            "mmproj-tiny-mm-Q8_0.gguf",
            "tiny-mm-Q8_0.gguf",
        ]
        assert "--mmproj mmproj-tiny-mm-Q8_0.gguf" in (tmp_path / "tiny-mm-GGUF" / "README.md").read_text()

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    soundfile.write(tmp_path / "clip.wav", (0.1 * rng.standard_normal(24000)).astype("float32"), 16000)
    card = ModelCard.load(out / "README.md").text
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    snippet = snippet.replace(f'"{REPO_ID}"', repr(str(out))).replace("max_new_tokens=64", "max_new_tokens=2")
    snippet = snippet.replace("dtype=torch.bfloat16", "dtype=torch.float32")  # to compare logits exactly
    probe = f"""
with torch.no_grad():
    logits = model(**inputs).logits[0]
torch.save({{"inputs": dict(inputs), "logits": logits}}, {str(tmp_path / "mm.pt")!r})
"""
    run_clean_python("import torch; torch.set_num_threads(1)\n" + snippet + probe, cwd=tmp_path)
    saved = torch.load(tmp_path / "mm.pt")
    assert (saved["inputs"]["input_ids"] == 151655).any() and (saved["inputs"]["input_ids"] == 151675).any()
    # the card's Pipeline snippet, here (it needs the package), with the same media in the working directory
    pipeline_snippet = re.search(r"### Pipeline API.*?```python\n(.*?)```", card, re.S).group(1)
    pipeline_snippet = pipeline_snippet.replace(f'"{REPO_ID}"', repr(str(out))).replace(
        "max_length=100", "max_length=2"
    )
    monkeypatch.chdir(tmp_path)
    exec(compile(pipeline_snippet, "card snippet", "exec"), {})

    source = AutoModelForCausalLM.from_pretrained(tiny_mm_src, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = source(**saved["inputs"]).logits[0]
    diff = (saved["logits"] - expected).abs().max().item()
    assert diff == 0.0, f"exported multimodal logits differ from the source: max abs diff {diff:.3g}"
