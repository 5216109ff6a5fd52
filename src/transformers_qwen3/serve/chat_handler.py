"""Our chat handler for llama-cpp-python: OpenAI chat messages with text, images and audio → one mtmd evaluation.

llama-cpp-python calls a chat handler with the ``Llama`` and the request's arguments; ours

1. takes the request's :class:`~transformers_qwen3.serve.messages.Conversation` (checked and decoded by the server's
   middleware before the request was queued; parsed here when the handler is called in-process);
2. renders our chat template (``remote/chat_template.jinja``) with llama-cpp-python's ``Jinja2ChatFormatter``
   (HF's jinja settings, ``{% generation %}`` ignored) and replaces each media block with mtmd's marker, in the
   order the parts were written;
3. evaluates the prompt and its media with the project's one llama.cpp driver
   (:meth:`~transformers_qwen3.runtime.llama_cpp.LlamaCppModel.eval_prompt`, ``mtmd_helper_eval_chunks``);
4. hands the evaluated context to ``Llama.create_completion``, which samples (streaming, ``max_tokens``,
   ``temperature``, stop strings, usage counts) from the logits already there: ``n_tokens`` is set to the
   prompt's positions and ``_requires_eval`` cleared, so its prefix cache takes the whole prompt as cached.

Where we differ from llama-cpp-python's ``MTMDChatHandler``: audio parts, our template instead of the GGUF's,
the media decoded by the project's loader (PIL / soundfile+soxr, as transformers sees them) instead of mtmd's
stb_image / miniaudio, ``repeat_penalty`` fixed at 1.0 (OpenAI's API has no such parameter, the server's
default (1.1) would silently change greedy answers, and ``frequency_penalty`` / ``presence_penalty`` are OpenAI's),
and ``logit_bias`` applied by llama.cpp's own logit-bias sampler: llama-cpp-python applies it as a Python logits
processor that copies the 151,936 logits through numpy at every token (measured: 2.8 ms a token on the loaded CI
machine, where a whole decode step of the demo model takes ~11 ms when idle).
"""

from __future__ import annotations

import contextvars
from importlib import resources
from pathlib import Path

import numpy as np

from ..remote.tokens_qwen3_multimodal import AUDIO_TOKEN, EOS_TOKEN, IMAGE_TOKEN, PAD_TOKEN
from ..runtime.llama_cpp import LlamaCppModel
from .messages import BadRequest, Conversation, read_messages

# the request being served: set by the server's middleware, read by the handler in the worker thread (contextvars
# follow the request into starlette's threadpool and into the streaming response's task)
CURRENT = contextvars.ContextVar("transformers_qwen3_serve_request", default=None)


def chat_template_file() -> Path:
    """Our chat template (``remote/chat_template.jinja``), as a file for engines that read one (llama-server)."""
    return Path(str(resources.files("transformers_qwen3.remote").joinpath("chat_template.jinja")))


def chat_template() -> str:
    return chat_template_file().read_text(encoding="utf-8")


def context_error(n_prompt: int, n_ctx: int) -> ValueError:
    """The message llama-cpp-python's server turns into a 400 ``context_length_exceeded`` (its RouteErrorHandler
    matches this wording)."""
    return ValueError(
        f"Requested tokens ({n_prompt}) exceed context window of {n_ctx} "
        f"(the prompt has {n_prompt} positions; start the server with a larger --ctx-size or send less)"
    )


class Qwen3ChatHandler:
    """A llama-cpp-python ``chat_handler`` over a :class:`LlamaCppModel` (whose ``llm`` the server serves)."""

    def __init__(self, model: LlamaCppModel):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.model = model
        self.formatter = Jinja2ChatFormatter(chat_template(), eos_token=EOS_TOKEN, bos_token=PAD_TOKEN)
        self.media_pad = {"image": model.tokenize(IMAGE_TOKEN)[0], "audio": model.tokenize(AUDIO_TOKEN)[0]}
        self.logit_bias: dict[int, float] | None = None  # the request's, for _init_sampler (one request at a time)
        self._init_sampler = model.llm._init_sampler
        model.llm._init_sampler = self.init_sampler

    def init_sampler(self, **kwargs):
        """llama-cpp-python's sampler chain for a request, behind llama.cpp's logit-bias sampler when the request has
        a ``logit_bias`` (the chain then owns llama-cpp-python's chain: a chain is a sampler too)."""
        import llama_cpp
        from llama_cpp._internals import LlamaSampler

        chain = self._init_sampler(**kwargs)
        bias, self.logit_bias = self.logit_bias, None  # this request's generate() asks once
        if not bias:
            return chain
        outer = LlamaSampler()
        outer.add_logit_bias(self.model.n_vocab, bias)
        llama_cpp.llama_sampler_chain_add(outer.sampler, chain.sampler)
        chain.sampler = None  # freed with `outer` now, not by its own wrapper
        return outer

    def prompt(self, conversation: Conversation, template_kwargs: dict | None = None) -> str:
        """Our template's text for ``conversation`` with each media block as mtmd's marker."""
        try:
            text = self.formatter(messages=conversation.messages, **(template_kwargs or {})).prompt
        except ValueError as e:  # the template's raise_exception: an unsupported role or part
            raise BadRequest(f"the chat template refused the messages: {e}", param="messages") from None
        if not conversation.media:
            return text
        return self.model.media_prompt(text, conversation.kinds)

    def check(self, conversation: Conversation, template_kwargs: dict | None = None) -> None:
        """Raise :class:`BadRequest` for a request this model cannot take (before it is queued for the model)."""
        if conversation.media and self.model.ctx is None:
            raise BadRequest("this server's model has no mmproj: it reads text only", param="messages")
        self.prompt(conversation, template_kwargs)

    def evaluate(self, conversation: Conversation, template_kwargs: dict | None = None) -> list[int]:
        """Evaluate the prompt into the model's context; returns token ids standing for its positions (text tokens,
        then one media pad per media position; they only feed llama-cpp-python's bookkeeping and prefix check)."""
        model, llm = self.model, self.model.llm
        self.check(conversation, template_kwargs)
        prompt = self.prompt(conversation, template_kwargs)
        if model.ctx is not None:  # an mmproj: every prompt goes through mtmd, with or without media
            bitmaps = [
                model.image_bitmap(m) if kind == "image" else model.audio_bitmap(m) for kind, m in conversation.media
            ]
            n_positions = model.count_positions(prompt, bitmaps)
            if n_positions >= llm.n_ctx():
                for b in bitmaps:
                    model.mtmd.mtmd_bitmap_free(b)
                raise context_error(n_positions, llm.n_ctx())
            model.eval_prompt(prompt, bitmaps)
            n = model._pos
            text_ids = model.tokenize(prompt.replace(model.marker, ""))
            pad = self.media_pad[conversation.kinds[0] if conversation.media else "image"]
            ids = (text_ids + [pad] * n)[:n]
            llm.input_ids[:n] = ids
            llm.n_tokens = n
            llm._requires_eval = False
            return ids
        ids = model.tokenize(prompt)
        if len(ids) >= llm.n_ctx():
            raise context_error(len(ids), llm.n_ctx())
        llm.reset()
        llm._ctx.kv_cache_clear()
        return ids  # create_completion evaluates text-only prompts itself

    def __call__(self, *, llama, messages, stream: bool = False, max_tokens=None, **kwargs):
        from llama_cpp.llama_chat_format import _convert_completion_to_chat

        request = CURRENT.get()
        conversation = request["conversation"] if request else read_messages(messages)
        template_kwargs = request["template_kwargs"] if request else {}
        ids = self.evaluate(conversation, template_kwargs)
        bias = {int(k): float(v) for k, v in (kwargs.get("logit_bias") or {}).items()}
        logits_processor = kwargs.get("logits_processor")  # the server's, for min_tokens
        self.logit_bias = None
        if bias and logits_processor is None and llama is self.model.llm:
            self.logit_bias = bias  # llama.cpp's sampler (init_sampler)
        elif bias:  # beside Python processors (whose samplers llama.cpp must not free): one more of them; not
            # llama-cpp-python's logit_bias, whose `processors.extend(...)` returns None and so drops them all
            from llama_cpp import LogitsProcessorList

            logits_processor = LogitsProcessorList([*(logits_processor or []), _bias_processor(bias)])
        completion = llama.create_completion(
            prompt=ids,
            temperature=kwargs.get("temperature", 0.2),
            top_p=kwargs.get("top_p", 0.95),
            top_k=kwargs.get("top_k", 40),
            min_p=kwargs.get("min_p", 0.05),
            typical_p=kwargs.get("typical_p", 1.0),
            stream=stream,
            stop=kwargs.get("stop") or [],
            seed=kwargs.get("seed"),
            max_tokens=max_tokens,
            presence_penalty=kwargs.get("presence_penalty", 0.0),
            frequency_penalty=kwargs.get("frequency_penalty", 0.0),
            repeat_penalty=1.0,
            model=kwargs.get("model"),
            logits_processor=logits_processor,
        )
        return _convert_completion_to_chat(completion, stream=stream)


def _bias_processor(bias: dict[int, float]):
    ids, values = np.array(list(bias), dtype=np.int64), np.array(list(bias.values()), dtype=np.float32)

    def apply(input_ids, scores):
        scores = scores.copy()
        scores[ids] += values
        return scores

    return apply
