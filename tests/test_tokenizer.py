"""The rebuilt Qwen3 tokenizer against tiktoken (the oracle), its special tokens, chat template and Hub round trip.

Oracle: a `tiktoken.Encoding` over the same `qwen.tiktoken` ranks with Qwen's regex and the 33 added tokens, fed
NFC-normalised text (our tokenizer normalises to NFC itself). Ids must be equal, not close.
"""

import json
import random
import re
import shutil
import unicodedata
from pathlib import Path

import jinja2
import pytest
import tiktoken
from helpers.processes import run_clean_python
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transformers_qwen3.checkpoint import tokenizer as builder
from transformers_qwen3.checkpoint.hub_folder import REMOTE_DIR
from transformers_qwen3.checkpoint.tokenizer import build_qwen3_tokenizer, load_qwen_ranks

QWEN_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# Written out from Qwen3's tokenizer_config.json (added_tokens_decoder) and Qwen3-Omni's (151669-151675), not
# imported from the builder, so a slip there is caught here.
QWEN3_ADDED = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
    "<|audio_start|>", "<|audio_end|>", "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>", "<tts_text_bos_single>",
    "<|audio_pad|>",
]  # fmt: skip
EXPECTED_ADDED = {151643 + i: token for i, token in enumerate(QWEN3_ADDED)}
NOT_SPECIAL = set(range(151657, 151669))  # tool / FIM / repo / think markers: special=False in Qwen3

CORPUS = [
    "",
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's, they're, I'VE, we'll, she'd, I'm, DON'T.",
    "Transformers don’t “smart-quote” well — or do they?",
    "机器学习是人工智能的一个分支。我们今天去北京，天气很好！",
    "繁體中文與简体中文混合：臺灣、台湾",
    "日本語のテキスト：カタカナ、ひらがな、漢字。ｶﾀｶﾅ（半角）ー〜",
    "한국어 문장입니다. 안녕하세요!",
    "مرحبا بالعالم! هذا نص عربي مع أرقام ١٢٣٤٥ و 12345.",
    "שלום עולם",
    "Привет, мир! Ёжик в тумане.",
    "नमस्ते दुनिया, यह हिन्दी है।",
    "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "Ελληνικά: αβγδε ΑΒΓΔΕ",
    "👍👍🏻👍🏼👍🏽👍🏾👍🏿 👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 🇨🇳🇯🇵🇺🇸 ❤️‍🔥 🧑🏽‍🚀",
    "😀😃😄😁😆😅🤣😂🙂🙃😉😊😇",
    'def f(x: int) -> str:\n    return f"{x=}"\n\n\nclass A:\n\tpass\n',
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // C++\r\n",
    '{"key": [1, 2.5, -3e10, null, true], "nested": {"a": "b"}}',
    '<html><body><div class="x">&nbsp;&amp;</div></body></html>',
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
    "    indented\n        more\n\t\ttabs\n  \n",
    " " * 1,
    " " * 2,
    " " * 17,
    " " * 100,
    "\n" * 7,
    "\t\t\t\t",
    "a  b   c    d     e",
    "trailing spaces   ",
    "   leading spaces",
    "line1\r\nline2\r\n\r\nline4\rline5\n",
    " \r\n \r\n\t\r\n",
    "\u00a0non-breaking\u00a0space\u3000ideographic space\u2009thin",
    "0 1 12 123 1234 12345 123456 3.14159 -2.5e-10 1,000,000 0x1F 1e9",
    "٠١٢٣٤٥٦٧٨٩ ①②③ Ⅻ ½ ¾ ²³",
    "mixed 中文 English 日本語 123 😀 عربى\n\tend",
    "café naïve résumé coöperate",
    "cafe\u0301 e\u0301 a\u0308 n\u0303 \u1e9b\u0323",  # decomposed: NFC composes
    "Å Ω ﬁ ℌ ①",  # compatibility characters NFC keeps
    "=" * 64 + "\n" + "-" * 33 + "\n" + "#" * 80,
    "!!!???...,,,;;;:::",
    "http://example.com/path?q=1&x=y#frag user@example.org",
    "\x00\x01\x02\x1b[31mred\x1b[0m\x7f",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\nhmm\n</think>\n\nok<|im_end|>",
    "<|endoftext|><|endoftext|>text<|vision_start|><|image_pad|><|vision_end|><|audio_start|><|audio_pad|><|audio_end|>",
    '<tool_call>\n{"name": "f"}\n</tool_call><tts_pad><tts_text_bos_single>',
    "<|im_start|",
    "<think",
    "< think>",
    "<|unknown|>",
]


@pytest.fixture(scope="module")
def tok():
    return build_qwen3_tokenizer()


@pytest.fixture(scope="module")
def oracle():
    return tiktoken.Encoding(
        "qwen3-oracle",
        pat_str=QWEN_REGEX,
        mergeable_ranks=load_qwen_ranks(),
        special_tokens={token: token_id for token_id, token in EXPECTED_ADDED.items()},
    )


def assert_same_ids(tok, oracle, text):
    nfc = unicodedata.normalize("NFC", text)
    ours = tok.encode(text, add_special_tokens=False)
    ref = oracle.encode(nfc, allowed_special="all")
    if ours != ref:
        first = next((i for i, (a, b) in enumerate(zip(ours, ref, strict=False)) if a != b), min(len(ours), len(ref)))
        pytest.fail(
            f"ids differ for {text!r} at position {first}: ours {ours[first : first + 8]} "
            f"({len(ours)} ids), tiktoken {ref[first : first + 8]} ({len(ref)} ids)"
        )


def assert_round_trip(tok, text):
    decoded = tok.decode(tok.encode(text, add_special_tokens=False))
    assert decoded == unicodedata.normalize("NFC", text), f"decode(encode({text!r})) = {decoded!r}"


# ---- ids equal tiktoken's ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", CORPUS, ids=range(len(CORPUS)))
def test_corpus_ids_equal_tiktoken(tok, oracle, text):
    assert_same_ids(tok, oracle, text)
    assert_round_trip(tok, text)


def test_digits_split_one_by_one(tok):
    ids = tok.encode("2024", add_special_tokens=False)
    assert [tok.decode([i]) for i in ids] == ["2", "0", "2", "4"]


def test_vocab_concatenations_equal_tiktoken(tok, oracle):
    # Strings glued from random vocabulary entries (and repeats of one entry) stress the merge order derived from
    # the ranks: every pair boundary of a real token shows up somewhere.
    rng = random.Random(1234)
    pieces = [b.decode("utf-8") for b in load_qwen_ranks() if _is_utf8(b)]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))) for _ in range(1500)]
    texts += [rng.choice(pieces) * rng.randint(2, 9) for _ in range(500)]
    texts += [ch * n for ch in " \t\n=-*#/~_.0a中😀" for n in (3, 31, 129)]
    ours = tok(texts, add_special_tokens=False)["input_ids"]
    bad = [
        t
        for t, ids in zip(texts, ours, strict=True)
        if ids != oracle.encode(unicodedata.normalize("NFC", t), allowed_special="all")
    ]
    assert not bad, f"{len(bad)}/{len(texts)} strings differ from tiktoken, e.g. {bad[:3]!r}"


def _is_utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


HYPOTHESIS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SNIPPETS = st.sampled_from(
    QWEN3_ADDED + [" ", "  ", "\n", "\r\n", "\t", "'s", "'LL", "1", "42", "a", "Ab", "中", "ー", "é", "e\u0301",
                   "\u0301", "😀", "🏽", "\u200d", "\u00a0", "!", "<", "|>", "<|", ">"]
)  # fmt: skip


@settings(HYPOTHESIS, max_examples=600)
@given(st.text(max_size=300))
def test_hypothesis_unicode_equals_tiktoken(tok, oracle, text):
    assert_same_ids(tok, oracle, text)
    assert_round_trip(tok, text)


@HYPOTHESIS
@given(st.lists(SNIPPETS, max_size=40).map("".join))
def test_hypothesis_snippets_equal_tiktoken(tok, oracle, text):
    # Boundary-heavy text: special tokens, contractions, whitespace runs, combining marks, ZWJ sequences.
    assert_same_ids(tok, oracle, text)
    assert_round_trip(tok, text)


# ---- special tokens ---------------------------------------------------------------------------------------------


def test_sizes(tok):
    assert tok.vocab_size == 151643  # BPE tokens
    assert len(tok) == 151676  # + 33 added; the model's 151936 rows beyond that are unused padding


@pytest.mark.parametrize("token_id", sorted(EXPECTED_ADDED))
def test_added_token_ids_and_flags(tok, token_id):
    added = tok.added_tokens_decoder[token_id]
    assert added.content == EXPECTED_ADDED[token_id]
    assert added.special == (token_id not in NOT_SPECIAL)
    assert (added.normalized, added.lstrip, added.rstrip, added.single_word) == (False, False, False, False)
    assert tok.convert_tokens_to_ids(added.content) == token_id
    assert tok.encode(added.content, add_special_tokens=False) == [token_id]


def test_named_special_tokens(tok):
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 151645)
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 151643)
    assert tok.bos_token is None and tok.unk_token is None
    assert tok.model_max_length == 131072
    assert tok.encode("hi") == tok.encode("hi", add_special_tokens=False)  # no BOS/EOS added


def test_skip_special_tokens_keeps_think_and_tool_markers(tok):
    ids = tok.encode("<|im_start|>assistant\n<think>x</think><tool_call>y</tool_call><|audio_pad|><|im_end|>")
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\n<think>x</think><tool_call>y</tool_call>"


def test_backend_pipeline_is_qwens(tok):
    backend = tok.backend_tokenizer  # components one by one: serialising the whole 18 MB tokenizer is slow
    assert json.loads(backend.normalizer.__getstate__()) == {"type": "NFC"}
    split, byte_level = json.loads(backend.pre_tokenizer.__getstate__())["pretokenizers"]
    assert split["pattern"] == {"Regex": QWEN_REGEX}
    assert (split["behavior"], split["invert"]) == ("Isolated", False)
    assert byte_level["type"] == "ByteLevel" and not byte_level["add_prefix_space"] and not byte_level["use_regex"]
    assert json.loads(backend.decoder.__getstate__())["type"] == "ByteLevel"
    assert type(backend.model).__name__ == "BPE" and backend.model.ignore_merges


def test_bad_rank_file_is_rejected(tmp_path):
    bad = tmp_path / "qwen.tiktoken"
    bad.write_bytes(Path(builder.qwen_tiktoken_path()).read_bytes()[:-20])
    with pytest.raises(ValueError, match="is not the Qwen3 BPE rank file"):
        load_qwen_ranks(bad)


# ---- chat template ----------------------------------------------------------------------------------------------


def render(tok, messages, **kwargs):
    return tok.apply_chat_template(messages, tokenize=False, **kwargs)


SYS_USER = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
SYS_USER_TEXT = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"


def test_template_string_content(tok):
    assert render(tok, SYS_USER) == SYS_USER_TEXT
    assert render(tok, SYS_USER[1:]) == "<|im_start|>user\nHi!<|im_end|>\n"


@pytest.mark.parametrize(
    ("kwargs", "suffix"),
    [
        ({}, ""),  # thinking is on by default: the model opens <think> itself
        ({"enable_thinking": True}, ""),
        ({"enable_thinking": False}, "<think>\n\n</think>\n\n"),
    ],
)
def test_template_generation_prompt_and_thinking(tok, kwargs, suffix):
    text = render(tok, SYS_USER, add_generation_prompt=True, **kwargs)
    assert text == SYS_USER_TEXT + "<|im_start|>assistant\n" + suffix


def test_template_list_content_with_media(tok):
    parts = [
        {"type": "text", "text": "Compare "},
        {"type": "image"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "video", "video": "clip.mp4"},
        {"type": "audio", "audio": "a.wav"},
        {"type": "input_audio", "input_audio": {"data": "...", "format": "wav"}},
        {"type": "text", "text": " please."},
    ]
    messages = [{"role": "system", "content": [{"type": "text", "text": "Sys"}]}, {"role": "user", "content": parts}]
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    audio = "<|audio_start|><|audio_pad|><|audio_end|>"
    expected = (
        "<|im_start|>system\nSys<|im_end|>\n<|im_start|>user\nCompare "
        + image * 2
        + "<|vision_start|><|video_pad|><|vision_end|>"
        + audio * 2
        + " please.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(tok, messages, add_generation_prompt=True) == expected
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assert ids == tok.encode(expected, add_special_tokens=False)
    assert ids.count(151655) == 2 and ids.count(151656) == 1 and ids.count(151675) == 2


def test_template_rejects_unknown_part(tok):
    with pytest.raises(jinja2.TemplateError, match="Unsupported content part type: hologram"):
        render(tok, [{"role": "user", "content": [{"type": "hologram"}]}])


def test_template_history_drops_old_reasoning(tok):
    messages = [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "<think>\nadd\n</think>\n\n2"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "add again"},
    ]
    assert render(tok, messages) == (
        "<|im_start|>user\n1+1?<|im_end|>\n"
        "<|im_start|>assistant\n2<|im_end|>\n"  # before the last query: answer only
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nadd again\n</think>\n\n4<|im_end|>\n"
    )


def test_template_tools(tok):
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
            ],
        },
        {"role": "tool", "content": "18C"},
        {"role": "tool", "content": "21C"},
    ]
    text = render(tok, messages, tools=[tool], add_generation_prompt=True)
    system, rest = text.split("<|im_end|>\n", 1)
    assert system.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert "<tools>\n" + json.dumps(tool, ensure_ascii=False) + "\n</tools>" in system
    assert rest == (
        "<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n"
        # After the last query, but neither last nor with reasoning: no think block (as Qwen3).
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n18C\n</tool_response>\n<tool_response>\n21C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # No system message: the tool list still gets a system turn of its own.
    assert render(tok, messages[1:2], tools=[tool]).startswith("<|im_start|>system\n# Tools\n")


GENERATION_CHATS = [
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image"}, {"type": "audio"}]},
        {"role": "assistant", "content": "<think>\nlook\n</think>\n\nA cat."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes.", "reasoning_content": "it meows"},
    ],
    [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "18C"},
        {"role": "assistant", "content": "18C."},
    ],
]


def test_generation_blocks_mark_what_each_assistant_turn_says(tok):
    """The {% generation %} blocks give transformers' assistant mask: each assistant turn after its header, through
    <|im_end|>. Oracle: the character spans of those turns in the rendered text."""
    for messages in GENERATION_CHATS:
        out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        text = render(tok, messages)
        spans = [m.span(1) for m in re.finditer(r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)", text, re.S)]
        assert len(spans) == 2
        marked = tok.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m])
        assert marked == "".join(text[s:e] for s, e in spans)


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_llama_cpp_python_renders_the_template_as_transformers(tok, add_generation_prompt):
    """The GGUF carries this template unchanged: llama-cpp-python's Jinja2ChatFormatter ignores the {% generation %}
    tag (its IgnoreGenerationTags extension), as llama.cpp's own engine does (common/jinja/parser.cpp: a no-op)."""
    formats = pytest.importorskip("llama_cpp.llama_chat_format", reason="needs llama-cpp-python (make llama-cpp)")
    formatter = formats.Jinja2ChatFormatter(
        tok.chat_template, eos_token=tok.eos_token, bos_token="", add_generation_prompt=add_generation_prompt
    )
    for messages in GENERATION_CHATS:
        expected = render(tok, messages, add_generation_prompt=add_generation_prompt)
        assert formatter(messages=messages).prompt == expected


# ---- Hub file and round trip ------------------------------------------------------------------------------------


RELOAD_CODE = """
import json
from transformers import AutoTokenizer

texts, messages, folders = json.loads(PAYLOAD)
out = {}
for folder in folders:
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    out[folder] = {
        "class": type(tok).__name__,
        "module": type(tok).__module__,
        "len": len(tok),
        "ids": tok(texts, add_special_tokens=False)["input_ids"],
        "added": {i: [t.content, t.special] for i, t in tok.added_tokens_decoder.items()},
        "named": [tok.eos_token, tok.pad_token, tok.bos_token, tok.unk_token, tok.model_max_length],
        "template": tok.chat_template,
        "chat": tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False),
    }
print(json.dumps(out))
"""


def test_save_and_reload_in_clean_process(tok, tmp_path):
    saved = tmp_path / "saved"
    tok.save_pretrained(saved)  # the builder registered the class for AutoTokenizer: code file + auto_map
    # transformers copies the class's file and, recursively, the siblings it imports relatively
    for name in ("tokenization", "processing", "media", "tokens"):
        name = f"{name}_qwen3_multimodal.py"
        assert (saved / name).read_bytes() == (REMOTE_DIR / name).read_bytes(), name
    assert (saved / "chat_template.jinja").read_text() == tok.chat_template
    config = json.loads((saved / "tokenizer_config.json").read_text())
    # save_pretrained puts a class not named "...Fast" in the first slot; 5.24 takes slot 1 if set, else slot 0.
    assert config["auto_map"]["AutoTokenizer"] == ["tokenization_qwen3_multimodal.Qwen3MultimodalTokenizer", None]

    # The [null, class] form (what hub.save_tokenizer writes) loads too.
    swapped = tmp_path / "swapped"
    shutil.copytree(saved, swapped)
    config["auto_map"]["AutoTokenizer"] = [None, "tokenization_qwen3_multimodal.Qwen3MultimodalTokenizer"]
    (swapped / "tokenizer_config.json").write_text(json.dumps(config))

    messages = [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image"}]}]
    payload = json.dumps([CORPUS, messages, [str(saved), str(swapped)]])
    out = run_clean_python(f"PAYLOAD = {payload!r}\n" + RELOAD_CODE, cwd=tmp_path)
    results = json.loads(out.strip().splitlines()[-1])

    expected_ids = tok(CORPUS, add_special_tokens=False)["input_ids"]
    expected_added = {str(i): [t.content, t.special] for i, t in tok.added_tokens_decoder.items()}
    for folder, got in results.items():
        assert got["class"] == "Qwen3MultimodalTokenizer", folder
        assert got["module"].startswith("transformers_modules."), got["module"]
        assert got["len"] == len(tok) == 151676
        mismatched = [t for t, a, b in zip(CORPUS, got["ids"], expected_ids, strict=True) if a != b]
        assert not mismatched, f"{folder}: reloaded ids differ for {mismatched[:3]!r}"
        assert got["added"] == expected_added
        assert got["named"] == ["<|im_end|>", "<|endoftext|>", None, None, 131072]
        assert got["template"] == tok.chat_template
        assert got["chat"] == render(tok, messages, add_generation_prompt=True, enable_thinking=False)
