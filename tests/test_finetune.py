"""`transformers-qwen3 finetune`: assistant-only labels, training on a tiny model (loss goes down), resuming,
merged/full outputs in our Hub layout, multimodal records, bad input, and `accelerate launch` with 2 CPU processes."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from helpers.processes import REPO
from safetensors.torch import load_file

from transformers_qwen3.checkpoint.build import init_checkpoint
from transformers_qwen3.cli import main
from transformers_qwen3.training.data import (
    IGNORE_INDEX,
    ChatCollator,
    ChatEncoder,
    DataError,
    parse_record,
    read_chat_jsonl,
)

COLOURS = ("red", "green", "blue", "yellow")
THINGS = ("apple", "car", "ball", "house")


def text_records():
    records = []
    for i in range(8):
        thing, colour = THINGS[i % 4], COLOURS[(i // 2) % 4]
        messages = [
            {"role": "user", "content": f"What colour is the {thing}?"},
            {"role": "assistant", "content": [{"type": "text", "text": f"The {thing} is {colour}."}]},
        ]
        records.append({"messages": messages, "meta": {"i": i}})  # "meta" is ignored
    # a system turn and two assistant turns: both answers carry labels
    records.append(
        {
            "messages": [
                {"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": "Colour of the sky?"},
                {"role": "assistant", "content": "blue"},
                {"role": "user", "content": "And grass?"},
                {"role": "assistant", "content": "green"},
            ]
        }
    )
    return records


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, qwen3_tokenizer):
    return init_checkpoint(tmp_path_factory.mktemp("model") / "tiny", "tiny", seed=0, tokenizer=qwen3_tokenizer)


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "chat.jsonl", text_records())


def finetune(*args):
    return main(["finetune", *map(str, args)])


# ---- labels --------------------------------------------------------------------------------------------------------


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
# multi-turn chats beyond text_records(): reasoning (both spellings), tool calls and their results
MORE_CHATS = [
    {
        "messages": [
            {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "<think>\nadd\n</think>\n\n2"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "add again"},
        ],
    },
    {
        "tools": [WEATHER],
        "messages": [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL]},
            {"role": "tool", "content": "18C"},
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "18C and sunny.", "reasoning_content": "read the results"},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": "", "tool_calls": [CALL, CALL]},
        ],
    },
]


def test_labels_are_exactly_the_assistant_spans_of_the_chat_template(qwen3_tokenizer, tmp_path):
    """Oracle: the character spans the template renders for assistant turns (after ``<|im_start|>assistant\\n``
    through ``<|im_end|>``), mapped to tokens by their offsets."""
    tok = qwen3_tokenizer
    encoder = ChatEncoder(tok)
    for n, raw in enumerate(text_records() + MORE_CHATS):
        record = parse_record(raw, tmp_path, f"record {n}")
        example = encoder(record)
        messages = raw["messages"]
        text = tok.apply_chat_template(messages, tools=raw.get("tools"), tokenize=False)
        assert ("<tools>" in text) == ("tools" in raw)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True, media_tags=False)
        assert example["input_ids"].tolist() == enc["input_ids"]
        spans = [m.span(1) for m in re.finditer(r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)", text, re.S)]
        assert len(spans) == sum(m["role"] == "assistant" for m in messages)
        expected = [any(s <= a and b <= e for s, e in spans) for a, b in enc["offset_mapping"]]
        got = (example["labels"] != IGNORE_INDEX).tolist()
        assert got == expected, f"record {n}: label mask differs from the template's assistant spans"
        labelled = tok.decode(example["input_ids"][example["labels"] != IGNORE_INDEX])
        assert labelled == "".join(text[s:e] for s, e in spans)
        if n == len(text_records()) - 1:
            # the final turn includes Qwen3's empty think block; earlier assistant turns do not
            assert labelled == "blue<|im_end|><think>\n\n</think>\n\ngreen<|im_end|>"


def test_assistant_turns_cannot_hold_media(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    raw = {
        "messages": [
            {"role": "user", "content": "draw"},
            {"role": "assistant", "content": [{"type": "image", "image": "a.png"}]},
        ]
    }
    with pytest.raises(DataError, match="assistant turns hold text only"):
        parse_record(raw, tmp_path, "x:1")


def test_collator_pads_right_with_ignored_labels():
    examples = [
        {"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([-100, 2, 3])},
        {"input_ids": torch.tensor([4]), "labels": torch.tensor([4])},
    ]
    batch = ChatCollator(pad_id=0)(examples)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    left = ChatCollator(pad_id=0, padding_side="left")(examples)
    assert left["input_ids"].tolist() == [[1, 2, 3], [0, 0, 4]]
    assert left["labels"].tolist() == [[-100, 2, 3], [-100, -100, 4]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


# ---- training ------------------------------------------------------------------------------------------------------

COMMON = ("--batch-size", 3, "--logging-steps", 1, "--lr", "1e-2", "--lr-scheduler", "constant", "--save-steps", 2)


def losses(summary):
    return [h["loss"] for h in summary["log_history"] if "loss" in h]


def test_lora_loss_decreases_resume_continues_and_merge_matches(tiny_model, text_data, tmp_path):
    from transformers_qwen3.remote.modeling_qwen3_multimodal import Qwen3MultimodalForConditionalGeneration
    from transformers_qwen3.training.lora import load_lora

    out = tmp_path / "adapter"
    assert finetune(tiny_model, text_data, out, "--max-steps", 4, "--merge", *COMMON) == 0
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["global_step"] == 4 and summary["trainable_parameters"] == 2 * 8 * ((64 + 128) + (64 + 64))
    first, last = losses(summary)[0], losses(summary)[-1]
    assert last < first - 0.1, f"loss did not go down: {losses(summary)}"
    assert (out / "adapter_config.json").is_file() and (tmp_path / "adapter.checkpoints" / "checkpoint-2").is_dir()

    # resume: from step 2 of the same run to step 4 gives the same adapter as the uninterrupted run
    resumed = tmp_path / "resumed"
    checkpoint = tmp_path / "adapter.checkpoints" / "checkpoint-2"
    assert finetune(tiny_model, text_data, resumed, "--max-steps", 4, "--resume", checkpoint, *COMMON) == 0
    again = json.loads((resumed / "finetune.json").read_text())
    assert (again["start_step"], again["global_step"]) == (2, 4)
    new_steps = [h["step"] for h in again["log_history"] if "loss" in h]
    assert new_steps[-2:] == [3, 4]
    a, b = load_file(out / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-6, f"resumed adapter differs from the uninterrupted run by {worst:.3g}"

    # --merge: a Hub folder whose logits are the adapted model's
    merged_dir = tmp_path / "adapter-merged"
    assert (merged_dir / "modeling_qwen3_multimodal.py").is_file() and (merged_dir / "tokenizer.json").is_file()
    ids = torch.tensor([[151644, 872, 198, 3838, 1894, 374, 279, 1803, 30, 151645]])
    with torch.no_grad():
        merged = Qwen3MultimodalForConditionalGeneration.from_pretrained(merged_dir).eval()(ids).logits
        base = Qwen3MultimodalForConditionalGeneration.from_pretrained(tiny_model)
        adapted = load_lora(base, out).eval()(ids).logits
    diff = (merged - adapted).abs().max().item()
    assert diff < 1e-5, f"merged folder vs base + adapter: max abs diff {diff:.3g} (tolerance 1e-5)"


def test_full_finetune_writes_a_hub_folder(tiny_model, text_data, tmp_path):
    out = tmp_path / "full"
    assert finetune(tiny_model, text_data, out, "--full", "--max-steps", 1, "--gradient-checkpointing", *COMMON) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].endswith("Qwen3MultimodalForConditionalGeneration")
    assert config.get("use_cache", True) is not False
    for name in ("modeling_qwen3_multimodal.py", "tokenizer.json", "finetune.json", "model.safetensors"):
        assert (out / name).is_file(), name
    before, after = load_file(tiny_model / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert json.loads((out / "finetune.json").read_text())["trainable_fraction"] == 1.0


# ---- multimodal records --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    from transformers_qwen3.demo.synthetic import make_dataset

    # two records: one image question, one audio question
    return make_dataset(tmp_path_factory.mktemp("synthetic") / "data", n_train=2, n_val=0, n_test=0, seed=0)


def test_multimodal_records_get_assistant_only_labels(synthetic_data, qwen3_tokenizer):
    from transformers_qwen3.checkpoint.hub_folder import default_processor
    from transformers_qwen3.checkpoint.presets import preset_config
    from transformers_qwen3.remote.configuration_qwen3_multimodal import Qwen3MultimodalConfig
    from transformers_qwen3.training.data import media_policy_for

    records = read_chat_jsonl(synthetic_data / "train.jsonl")
    assert [r.media for r in records] == [("image",), ("audio",)]
    processor = default_processor(Qwen3MultimodalConfig(**preset_config("tiny-mm")), qwen3_tokenizer)
    encoder = ChatEncoder(qwen3_tokenizer, processor, media_policy=media_policy_for(records))
    examples = [encoder(r) for r in records]
    for record, example in zip(records, examples, strict=True):
        labelled = qwen3_tokenizer.decode(example["input_ids"][example["labels"] != IGNORE_INDEX])
        answer = record.messages[-1]["content"][0]["text"]
        assert labelled == f"<think>\n\n</think>\n\n{answer}<|im_end|>"
        media_ids = torch.isin(example["input_ids"], torch.tensor([151655, 151675]))  # image / audio placeholders
        assert media_ids.any() and (example["labels"][media_ids] == IGNORE_INDEX).all()
    batch = ChatCollator()(examples)
    assert {"pixel_values", "image_grid_thw", "input_features", "feature_attention_mask"} <= batch.keys()
    assert batch["input_ids"].shape[0] == 2 and batch["input_features"].shape[0] == 1

    # media between assistant turns: every turn's labels survive the expansion of the placeholders around them.
    # Oracle: the assistant spans of the chat as the template renders it (the spans hold no media).
    image_turn, audio_turn = records[0].messages[0], records[1].messages[0]
    messages = [
        image_turn,
        {"role": "assistant", "content": "first"},
        audio_turn,
        {"role": "assistant", "content": "x"},
    ]
    example = encoder(parse_record({"messages": messages}, synthetic_data, "chat"))
    text = qwen3_tokenizer.apply_chat_template(messages, tokenize=False)
    spans = re.findall(r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)", text, re.S)
    labelled = qwen3_tokenizer.decode(example["input_ids"][example["labels"] != IGNORE_INDEX])
    assert labelled == "".join(spans) == "first<|im_end|><think>\n\n</think>\n\nx<|im_end|>"
    assert (example["input_ids"] == 151655).sum() > 1 and (example["input_ids"] == 151675).sum() > 1  # expanded


@pytest.mark.slow
def test_multimodal_lora_training_step(synthetic_data, qwen3_tokenizer, tmp_path):
    """tiny-mm, LoRA on the decoder and both towers, one step over an image and an audio record (~20 s)."""
    model = init_checkpoint(tmp_path / "tiny-mm", "tiny-mm", seed=0, tokenizer=qwen3_tokenizer)
    out = tmp_path / "mm-adapter"
    args = ("--max-steps", 1, "--batch-size", 2, "--lora-vision", "--lora-audio", "--logging-steps", 1)
    assert finetune(model, synthetic_data / "train.jsonl", out, *args) == 0
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["global_step"] == 1 and losses(summary)
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert "visual" in targets and "audio_tower" in targets


# ---- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
        ('{"messages": [{"role": "robot", "content": "hi"}]}', "needs a 'role'"),
        ('{"text": "hi"}', 'non-empty "messages" list'),
        (
            '{"tools": "get_weather", "messages": [{"role": "user", "content": "hi"}, '
            '{"role": "assistant", "content": "x"}]}',
            '"tools" must be a list',
        ),
        (
            '{"messages": [{"role": "user", "content": [{"type": "image", "image": "missing.png"}]}, '
            '{"role": "assistant", "content": "x"}]}',
            "media file 'missing.png' not found",
        ),
    ],
)
def test_bad_records_name_the_line(tmp_path, tiny_model, capsys, line, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(text_records()[0]) + "\n" + line + "\n")
    assert finetune(tiny_model, data, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"{data}:2:" in err and message in err, err
    assert not (tmp_path / "out").exists()


def test_existing_output_and_missing_checkpoint_are_refused(tmp_path, tiny_model, text_data, capsys):
    (tmp_path / "out").mkdir()
    assert finetune(tiny_model, text_data, tmp_path / "out") == 2
    assert "already exists" in capsys.readouterr().err
    assert finetune(tiny_model, text_data, tmp_path / "new", "--resume") == 2
    assert "no checkpoint-N folder" in capsys.readouterr().err


# ---- accelerate launch ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_accelerate_launch_with_two_cpu_processes(tiny_model, text_data, tmp_path):
    """The unchanged command under `accelerate launch` (2 processes, gloo DDP on CPU); ~60-70 s on 2 cores."""
    out = tmp_path / "ddp"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "transformers_qwen3.cli",
        "finetune",
        str(tiny_model),
        str(text_data),
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--logging-steps",
        "1",
        "--lr",
        "1e-2",
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "finetune.json").read_text())
    # 9 records shared by 2 processes (5 each, the sampler pads evenly), 2 per process per step: 3 steps per epoch
    assert summary["world_size"] == 2 and summary["global_step"] == 2
    assert summary["epochs"] == pytest.approx(2 / 3)
