"""Tokenizer metadata for the text GGUF: llama.cpp's ``gpt2`` (byte-level BPE) model with the ``qwen2`` pre-tokenizer.

Read from the checkpoint folder's ``tokenizer.json`` (no model code runs); special-token ids, the add-BOS/EOS flags
and the chat template go through gguf-py's `SpecialVocab`, as in llama.cpp's converter.

Deviation from llama.cpp's convert_hf_to_gguf.py: it identifies the pre-tokenizer by hashing the token ids of a
fixed text and accepts only hashes it knows. llama.cpp's ``tokenizer.ggml.pre`` names the pre-tokenizer *regex*, so
we check that regex (and the byte-level / NFC steps around it) in tokenizer.json instead: a fine-tuned vocabulary
or a different but equivalent merges list converts, while a tokenizer that would split text differently in
llama.cpp is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from ..formats.errors import CheckpointFolderError
from ..formats.folder import read_json_object
from .errors import ConversionError

# The Qwen2 / Qwen2.5 / Qwen3 pre-tokenizer regex: llama.cpp's `qwen2` pre-tokenizer implements exactly this one.
QWEN2_PRETOKENIZER_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TOKENIZER_MODEL = "gpt2"
TOKENIZER_PRE = "qwen2"


@dataclass
class Vocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special: gguf.SpecialVocab  # special ids, add_bos/eos flags, chat template

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(TOKENIZER_MODEL)
        writer.add_tokenizer_pre(TOKENIZER_PRE)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        writer.add_token_merges(self.merges)
        self.special.add_to_gguf(writer, quiet=True)


def _merges(tok: dict[str, Any], folder: Path) -> list[str]:
    """BPE merges as llama.cpp stores them ("a b"). Byte-level BPE tokens hold no spaces, so pairs join directly;
    anything else goes through gguf-py's SpecialVocab, which escapes spaces (and is ~10x slower on 300k merges)."""
    merges = (tok.get("model") or {}).get("merges") or []
    if merges and isinstance(merges[0], str):
        return merges
    if merges and all(len(m) == 2 and " " not in m[0] and " " not in m[1] for m in merges):
        return [f"{a} {b}" for a, b in merges]
    return gguf.SpecialVocab(folder, load_merges=True).merges


def _looks_special(token: str) -> bool:
    # same heuristic as llama.cpp's converter: "<|...|>" added tokens are control tokens even when not flagged
    return token.startswith("<|") and token.endswith("|>")


def _check_pretokenizer(tok: dict[str, Any], path: Path) -> None:
    model = tok.get("model") or {}
    pre = tok.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    regexes = [s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    problems = []
    if model.get("type") != "BPE":
        problems.append(f"model type {model.get('type')!r} (need byte-level BPE)")
    if regexes != [QWEN2_PRETOKENIZER_REGEX]:
        problems.append(f"pre-tokenizer split regex {regexes!r} is not Qwen2's")
    if len(byte_level) != 1 or byte_level[0].get("add_prefix_space", False) or byte_level[0].get("use_regex", False):
        problems.append("pre-tokenizer is not one ByteLevel step without prefix space / GPT-2 regex")
    normalizer = tok.get("normalizer")
    if normalizer not in (None, {"type": "NFC"}):
        problems.append(f"normalizer {normalizer!r} (llama.cpp's qwen2 applies none or NFC)")
    if problems:
        raise ConversionError(
            f"{path}: llama.cpp's {TOKENIZER_PRE!r} pre-tokenizer would tokenize differently: " + "; ".join(problems)
        )


def load_vocab(folder: Path, vocab_size: int) -> Vocab:
    """Token strings and types (padded to the embedding's `vocab_size`), merges, special ids, chat template."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ConversionError(
            f"{folder}: no tokenizer.json; save the tokenizer next to the weights "
            "(tokenizer.save_pretrained(folder), or transformers_qwen3.checkpoint.tokenizer.save_tokenizer)"
        )
    tok = read_json_object(path, "save the tokenizer again (tokenizer.save_pretrained(folder))")
    try:
        _check_pretokenizer(tok, path)
        by_id: dict[int, str] = {int(i): str(t) for t, i in tok["model"]["vocab"].items()}
        added = {int(a["id"]): a for a in tok.get("added_tokens", [])}
    except ConversionError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as e:  # an untrusted file's structure, not our bug
        raise CheckpointFolderError(
            f"{path}: not a tokenizers BPE file (model.vocab / added_tokens malformed: {type(e).__name__} {e}); "
            "save the tokenizer again (tokenizer.save_pretrained(folder))"
        ) from e
    for i, a in added.items():
        by_id[i] = a["content"]
    if by_id and max(by_id) >= vocab_size:
        raise ConversionError(
            f"{path}: token id {max(by_id)} does not fit the embedding's vocab_size {vocab_size} "
            "(resize the token embeddings after adding tokens)"
        )
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")  # embedding rows without a token (Qwen pads 151669 → 151936)
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            token = by_id[i]
            tokens.append(token)
            special = added[i].get("special", False) or _looks_special(token)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)

    merges = _merges(tok, folder)
    if not merges:
        raise ConversionError(f"{path}: no BPE merges")
    special = gguf.SpecialVocab(folder, load_merges=False, n_vocab=vocab_size)
    # A ByteLevel post-processor adds no BOS/EOS: say so explicitly, as newer gguf-py releases do (0.19.0 leaves
    # the keys out and llama.cpp then falls back to its own per-vocab default).
    post = tok.get("post_processor") or {}
    if any(p.get("type") == "ByteLevel" for p in post.get("processors", [post])):
        special.add_special_token.setdefault("bos", False)
        special.add_special_token.setdefault("eos", False)
    return Vocab(tokens, types, merges, special)
