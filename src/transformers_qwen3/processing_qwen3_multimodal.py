"""Tokenizer (and, with the multimodal work, the processor) for Qwen3-Multimodal.

Hub file: imports only stdlib, torch and transformers, and siblings with `from .x import y`.

`Qwen3MultimodalTokenizer` is transformers' `Qwen2Tokenizer` (byte-level BPE, NFC, Qwen's pre-tokenizer regex,
ByteLevel decoder) under our own name, so that `AutoTokenizer` with `trust_remote_code=True` returns our class and
the multimodal work can teach it inline media tags. On text without media tags it is the Qwen3 tokenizer, token for
token; `transformers_qwen3.tokenizer.build_qwen3_tokenizer` builds it from Qwen's BPE ranks.
"""

from transformers import Qwen2Tokenizer


class Qwen3MultimodalTokenizer(Qwen2Tokenizer):
    """The Qwen3 tokenizer plus Qwen3-Omni's audio/TTS tokens (ids 151643-151675, `len()` 151676).

    No `__init__` of its own on purpose: `from_pretrained` then loads the backend straight from tokenizer.json
    instead of rebuilding BPE from vocab/merges (transformers 5 only does that for classes without an own
    `__init__` or loaded with `trust_remote_code`), and the saved `ignore_merges` flag survives the round trip.
    """

    def _encode_plus(self, text, text_pair=None, **kwargs):
        # Media hook: the one path behind `__call__`, `encode` and `apply_chat_template(tokenize=True)`. The
        # multimodal work expands inline `<image>…</image>` / `<audio>…</audio>` tags here; today text passes
        # through unchanged, so the ids are exactly Qwen3's.
        return super()._encode_plus(text, text_pair, **kwargs)


__all__ = ["Qwen3MultimodalTokenizer"]
