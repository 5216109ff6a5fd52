"""The Qwen3-Multimodal tokenizer: Qwen3's, reading inline media tags (Hub file).

Imports only stdlib, torch and transformers, and its siblings with ``from .x import y``.

`Qwen3MultimodalTokenizer` is transformers' `Qwen2Tokenizer` (byte-level BPE, NFC, Qwen's pre-tokenizer regex,
ByteLevel decoder) under our own name, so that `AutoTokenizer` with `trust_remote_code=True` returns our class and
it can read inline media tags. On text without media tags it is the Qwen3 tokenizer, token for token;
`transformers_qwen3.checkpoint.tokenizer.build_qwen3_tokenizer` builds it from Qwen's BPE ranks.
"""

from transformers import Qwen2Tokenizer

from .processing_qwen3_multimodal import MediaEncoder, has_media_tags, refuse_media_specials, refuse_specials_in_chat


class Qwen3MultimodalTokenizer(Qwen2Tokenizer):
    """The Qwen3 tokenizer plus Qwen3-Omni's audio/TTS tokens (ids 151643-151675, `len()` 151676).

    No `__init__` of its own on purpose: `from_pretrained` then loads the backend straight from tokenizer.json
    instead of rebuilding BPE from vocab/merges (transformers 5 only does that for classes without an own
    `__init__` or loaded with `trust_remote_code`), and the saved `ignore_merges` flag survives the round trip.

    Inline media: ``tok("What is this? <image>photo.jpg</image>", return_tensors="pt")`` loads the image through
    the media loader, expands the tag to Qwen3-VL's placeholder tokens and returns ``pixel_values`` /
    ``image_grid_thw`` (``<audio>`` → ``input_features`` / ``feature_attention_mask``; ``<video>`` →
    ``pixel_values_videos`` / ``video_grid_thw``) beside the ids, ready for ``model.generate(**inputs)``. The
    image/audio settings come from the processor config saved in the tokenizer's folder (or the defaults). The
    loader policy is ``tok.media_policy`` (a :class:`MediaPolicy`; default: from the environment), or per call
    ``media_policy=``. ``media_tags=False`` (per call, or the attribute ``tok.media_tags``, saved in
    tokenizer_config.json) tokenizes tags as plain text.

    Media placeholders (``<|image_pad|>``, ``<|vision_start|>`` ...) typed into chat message text or into text with
    inline tags are refused with a :class:`MediaError` (see :func:`refuse_media_specials`). Text without tags keeps
    Qwen3's behaviour: there the placeholders are special tokens, as in a prompt a chat template rendered.
    """

    media_policy = None  # None: MediaPolicy() from the environment at call time

    @property
    def media_tags(self) -> bool:
        """Whether inline tags load media (the default) or stay plain text. Kept in ``init_kwargs`` so that
        ``save_pretrained`` writes it to tokenizer_config.json (a saved ``false`` only ever turns loading off)."""
        return self.__dict__.get("init_kwargs", {}).get("media_tags", True) is not False

    @media_tags.setter
    def media_tags(self, value: bool):
        self.init_kwargs["media_tags"] = bool(value)

    def _encode_plus(self, text, text_pair=None, **kwargs):
        # The one path behind `__call__`, `encode` and `apply_chat_template(tokenize=True)`. Text without media tags
        # goes straight to the parent, so its ids are exactly Qwen3's.
        policy = kwargs.pop("media_policy", None)
        media_tags = kwargs.pop("media_tags", None)
        if media_tags is None:
            media_tags = self.media_tags
        if media_tags and text_pair is None and not kwargs.get("is_split_into_words") and has_media_tags(text):
            return self._encode_with_media(text, policy, **kwargs)
        return super()._encode_plus(text, text_pair, **kwargs)

    def apply_chat_template(self, conversation, *args, **kwargs):
        # transformers' sanitize_control_tokens=True encodes typed control tokens as text itself: nothing to refuse
        if not kwargs.get("sanitize_control_tokens"):
            refuse_specials_in_chat(conversation)
        return super().apply_chat_template(conversation, *args, **kwargs)

    def _encode_with_media(self, text, policy, **kwargs):
        batched = not isinstance(text, str)
        for one in [text] if not batched else text:
            if isinstance(one, str):  # the tokenizer has no media to put behind a typed placeholder
                refuse_media_specials(one, "text with inline media tags, which the tokenizer reads")
        encoder = self.media_encoder()
        texts, features = encoder.expand(list(text) if batched else [text], policy=policy or self.media_policy)
        return_tensors = kwargs.get("return_tensors")
        encoding = super()._encode_plus(texts if batched else texts[0], None, **kwargs)
        ids = encoding["input_ids"]
        encoder.check_token_counts(ids if batched or return_tensors else [ids], texts)
        encoding.update(features)  # torch tensors; converted below when other tensors were asked for
        if return_tensors:
            encoding.convert_to_tensors(return_tensors)
        return encoding

    def media_encoder(self) -> "MediaEncoder":
        """The image/audio/video settings of this tokenizer's folder (processor config), or the defaults."""
        encoder = self.__dict__.get("_media_encoder")
        if encoder is None:
            encoder = MediaEncoder.from_folder(self.name_or_path)
            self.__dict__["_media_encoder"] = encoder
        return encoder


__all__ = ["Qwen3MultimodalTokenizer"]
