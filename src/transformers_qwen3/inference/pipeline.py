"""The product brief's Pipeline API: ``Pipeline.from_pretrained(path)``, ``pipe(images=..., audio=..., text=...)``.

Also importable as ``from qwen3_multimodal import Pipeline``. Prompts are built with the model's chat template
(media parts first, then the text), so an instruction-tuned checkpoint sees the format it was trained on. Media go
through the processor's media loader (:class:`~transformers_qwen3.remote.processing_qwen3_multimodal.MediaPolicy`: local
files below the working directory, no network unless enabled).
"""

import os
import threading
from collections.abc import Iterator

import torch

from ..remote.media_qwen3_multimodal import MediaPolicy
from ..remote.processing_qwen3_multimodal import Qwen3MultimodalProcessor, flatten_media, is_frame
from ..remote.tokenization_qwen3_multimodal import Qwen3MultimodalTokenizer


class Pipeline:
    """Text generation from text + images + video + audio.

    ``pipe(images="photo.jpg", text="What is unusual here?", max_length=100)`` returns the generated text.
    Lists give a batch: every list argument has one entry per prompt (an entry may itself be a list of several
    media for that prompt, or ``None``); a single value is shared by all prompts. ``pipe.stream(...)`` yields the
    text piece by piece as it is generated (one prompt).

    ``media_tags=False`` (here, in ``from_pretrained`` or per call) leaves ``<image>SRC</image>``-like text as plain
    text, e.g. for a question about HTML; ``None`` follows the tokenizer's ``media_tags`` (default on). Media
    placeholders typed into ``text`` or ``system`` (``<|image_pad|>`` ...) are refused with ``MediaError``: pass
    media through ``images`` / ``audio`` / ``videos`` or a tag.
    """

    def __init__(
        self,
        model,
        processor: Qwen3MultimodalProcessor,
        media_policy: MediaPolicy | None = None,
        media_tags: bool | None = None,
    ):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.media_policy = media_policy
        self.media_tags = media_tags

    @classmethod
    def from_pretrained(
        cls,
        path,
        *,
        media_policy: MediaPolicy | None = None,
        allow_network: bool | None = None,
        allowed_roots=None,
        media_tags: bool | None = None,
        **model_kwargs,
    ) -> "Pipeline":
        """Load the model and processor of a folder (or Hub id) in our layout.

        ``model_kwargs`` go to ``from_pretrained`` of the model (``dtype``, ``device_map`` ...). ``allow_network``
        / ``allowed_roots`` are shortcuts for ``media_policy=MediaPolicy(...)``.
        """
        from ..remote.modeling_qwen3_multimodal import Qwen3MultimodalForConditionalGeneration

        if media_policy is None and (allow_network is not None or allowed_roots is not None):
            roots = (
                None
                if allowed_roots is None
                else tuple([allowed_roots] if isinstance(allowed_roots, str) else allowed_roots)
            )
            media_policy = MediaPolicy(allow_network=allow_network, allowed_roots=roots)
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "processor_config.json")):
            # a text-only folder has a tokenizer but no processor config: the default media settings
            processor = Qwen3MultimodalProcessor(tokenizer=Qwen3MultimodalTokenizer.from_pretrained(path))
        else:
            processor = Qwen3MultimodalProcessor.from_pretrained(path)
        model = Qwen3MultimodalForConditionalGeneration.from_pretrained(path, **model_kwargs)
        return cls(model, processor, media_policy=media_policy, media_tags=media_tags)

    # ---- inputs ------------------------------------------------------------------------------------------------

    def _batch(self, text, images, audio, videos) -> tuple[list, bool]:
        if isinstance(videos, list) and videos and all(is_frame(f) for f in videos):
            videos = (videos,)  # one video given as its frames, not a batch
        args = {"text": text, "images": images, "audio": audio, "videos": videos}
        sizes = {name: len(v) for name, v in args.items() if isinstance(v, list)}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"list arguments must have one entry per prompt, got lengths {sizes}")
        batched = bool(sizes)
        n = next(iter(sizes.values())) if batched else 1
        if n == 0:
            raise ValueError("empty batch")
        rows = []
        for i in range(n):
            row = {name: (v[i] if isinstance(v, list) else v) for name, v in args.items()}
            if row["text"] is None and row["images"] is None and row["audio"] is None and row["videos"] is None:
                raise ValueError("each prompt needs text or media")
            rows.append(row)
        return rows, batched

    @staticmethod
    def _message(row, system) -> list[dict]:
        content = []
        for kind, key in (("image", "images"), ("video", "videos"), ("audio", "audio")):
            for item in flatten_media(row[key], kind):
                content.append({"type": kind, kind: item})
        if row["text"] is not None:
            content.append({"type": "text", "text": str(row["text"])})
        messages = [{"role": "system", "content": system}] if system else []
        return messages + [{"role": "user", "content": content}]

    def _inputs(self, text, images, audio, videos, system, enable_thinking, media_tags):
        rows, batched = self._batch(text, images, audio, videos)
        template_kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        inputs = self.processor.apply_chat_template(
            [self._message(row, system) for row in rows],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            media_policy=self.media_policy,
            media_tags=self.media_tags if media_tags is None else media_tags,
            **template_kwargs,
        )
        return inputs.to(self.model.device), batched

    def _generate_kwargs(self, max_length, max_new_tokens, generate_kwargs):
        # The brief's `max_length` counts generated tokens (a prompt with an image alone can exceed 100 tokens)
        generate_kwargs.setdefault("max_new_tokens", max_new_tokens if max_new_tokens is not None else max_length)
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        return generate_kwargs

    # ---- generation --------------------------------------------------------------------------------------------

    def __call__(
        self,
        text=None,
        images=None,
        audio=None,
        videos=None,
        *,
        max_length: int = 100,
        max_new_tokens: int | None = None,
        system: str | None = None,
        enable_thinking: bool | None = None,
        media_tags: bool | None = None,
        **generate_kwargs,
    ) -> str | list[str]:
        """Generate; returns the new text (a list of texts for a batch). ``generate_kwargs`` go to
        ``model.generate`` (``do_sample``, ``temperature`` ...)."""
        inputs, batched = self._inputs(text, images, audio, videos, system, enable_thinking, media_tags)
        with torch.no_grad():
            out = self.model.generate(**inputs, **self._generate_kwargs(max_length, max_new_tokens, generate_kwargs))
        new = out[:, inputs["input_ids"].shape[1] :]
        texts = [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return texts if batched else texts[0]

    def stream(
        self,
        text=None,
        images=None,
        audio=None,
        videos=None,
        *,
        max_length: int = 100,
        max_new_tokens: int | None = None,
        system: str | None = None,
        enable_thinking: bool | None = None,
        timeout: float | None = None,
        media_tags: bool | None = None,
        **generate_kwargs,
    ) -> Iterator[str]:
        """Yield the generated text piece by piece (one prompt), using transformers' ``TextIteratorStreamer``."""
        from transformers import TextIteratorStreamer

        inputs, batched = self._inputs(text, images, audio, videos, system, enable_thinking, media_tags)
        if batched and inputs["input_ids"].shape[0] != 1:
            raise ValueError("stream() takes one prompt; call the pipeline itself for a batch")
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout)
        kwargs = {**inputs, **self._generate_kwargs(max_length, max_new_tokens, generate_kwargs), "streamer": streamer}
        failure = []

        def work():
            try:
                with torch.no_grad():
                    self.model.generate(**kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer below
                failure.append(e)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            thread.join()
        if failure:
            raise failure[0]


__all__ = ["Pipeline"]
