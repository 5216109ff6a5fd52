"""The llama.cpp engine: llama-cpp-python's OpenAI-compatible server (``llama_cpp.server``) with our chat handler.

The app is llama-cpp-python's own (``create_app``: its routes, streaming, API-key check, error formatting), run by
uvicorn. What we change, and why:

- the served ``Llama`` is the one inside our :class:`~transformers_qwen3.runtime.llama_cpp.LlamaCppModel` (text
  GGUF + mmproj), with :class:`~transformers_qwen3.serve.chat_handler.Qwen3ChatHandler` as its chat handler; the
  app is built with a vocabulary-only model (cheap) which is then replaced, because llama-cpp-python's model proxy
  builds its chat handlers from a fixed list of formats;
- a small ASGI middleware checks each chat request before it is queued for the model: the API key (401), the JSON
  (400), the model name (404: llama-cpp-python would silently answer with its default model), and the messages
  with their media (400: :func:`~transformers_qwen3.serve.messages.read_messages`). It hands the decoded request
  to the handler through a context variable and rewrites ``input_audio`` parts, which llama-cpp-python's request
  schema does not know, as empty text parts. ``chat_template_kwargs`` in the request body (as vLLM and
  llama-server accept it, e.g. ``{"enable_thinking": false}``) reach our template the same way.

A prompt over the context is refused with llama-cpp-python's own 400 ``context_length_exceeded`` (non-streaming
requests; a streaming request learns it in the stream, since its 200 is sent before the model is reached).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..runtime.llama_cpp import LlamaCppModel
from .chat_handler import CURRENT, Qwen3ChatHandler
from .messages import BadRequest, read_messages

CHAT_PATHS = ("/v1/chat/completions",)
MODEL_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


class OneModel:
    """Stands in for llama-cpp-python's ``LlamaProxy``: one model, already loaded (names are checked upstream)."""

    def __init__(self, name: str, llm):
        self.name, self.llm = name, llm

    def __call__(self, model: str | None = None):
        return self.llm

    def __iter__(self):
        yield self.name

    def free(self):
        pass


def _error_body(message: str, code: str, param: str | None = None) -> bytes:
    kind = "authentication_error" if code == "invalid_api_key" else "invalid_request_error"
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


class CheckRequests:
    """Pure ASGI middleware (so context variables set here reach the endpoint): see the module docstring."""

    def __init__(self, app, name: str, api_key: str | None, check=None, n_vocab: int | None = None):
        """``check(conversation, template_kwargs)``: raises BadRequest for what only the model side knows (our
        template's refusals, media sent to a model without an mmproj); ``n_vocab``: the range of ``logit_bias``'s
        token ids."""
        self.app, self.name, self.api_key, self.check, self.n_vocab = app, name, api_key, check, n_vocab

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in MODEL_PATHS:
            return await self.app(scope, receive, send)
        if self.api_key is not None:
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization", b"").decode("latin-1") != f"Bearer {self.api_key}":
                return await _reply(send, 401, _error_body("Invalid API key", "invalid_api_key"))
        body = await _read_body(receive)
        try:
            request = json.loads(body)
            if not isinstance(request, dict):
                raise BadRequest("the request body must be a JSON object")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return await _reply(send, 400, _error_body(f"the request body is not valid JSON ({e})", "invalid_json"))
        except BadRequest as e:
            return await _reply(send, e.status, _error_body(str(e), e.code, e.param))
        model = request.get("model")
        if model is not None and model != self.name:
            message = f"The model '{model}' does not exist; this server serves '{self.name}'"
            return await _reply(send, 404, _error_body(message, "model_not_found", "model"))
        try:
            check_logit_bias(request.get("logit_bias"), self.n_vocab)
        except BadRequest as e:
            return await _reply(send, e.status, _error_body(str(e), e.code, e.param))
        token = None
        if scope["path"] in CHAT_PATHS:
            try:
                from starlette.concurrency import run_in_threadpool

                conversation = await run_in_threadpool(read_messages, request.get("messages"))
                template_kwargs = request.get("chat_template_kwargs") or {}
                if not isinstance(template_kwargs, dict):
                    raise BadRequest("'chat_template_kwargs' must be an object", param="chat_template_kwargs")
                if self.check is not None:
                    self.check(conversation, template_kwargs)
            except BadRequest as e:
                return await _reply(send, e.status, _error_body(str(e), e.code, e.param))
            token = CURRENT.set({"conversation": conversation, "template_kwargs": template_kwargs})
            request["messages"] = [_schema_safe(m) for m in request["messages"]]
            body = json.dumps(request).encode()
        try:
            await self.app(scope, _replay(body, receive), send)
        finally:
            if token is not None:
                CURRENT.reset(token)


def check_logit_bias(bias, n_vocab: int | None) -> None:
    """``logit_bias``: an object of token ids (as strings, OpenAI's form) to numbers; ids in the vocabulary."""
    if bias is None:
        return
    if not isinstance(bias, dict):
        raise BadRequest("'logit_bias' must be an object of token ids to numbers", param="logit_bias")
    for k, v in bias.items():
        try:
            token = int(k)
        except ValueError:
            raise BadRequest(f"'logit_bias' key {k!r} is not a token id", param="logit_bias") from None
        if n_vocab is not None and not 0 <= token < n_vocab:
            raise BadRequest(
                f"'logit_bias' token {token} is not in the vocabulary (0..{n_vocab - 1})", param="logit_bias"
            )
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise BadRequest(f"'logit_bias' value for token {k} must be a number", param="logit_bias")


def _schema_safe(message: dict) -> dict:
    """``message`` with its ``input_audio`` parts as empty text parts (llama-cpp-python's schema has no audio parts;
    the handler reads the decoded request, not these)."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    parts = [{"type": "text", "text": ""} if p.get("type") == "input_audio" else p for p in content]
    return {**message, "content": parts}


async def _read_body(receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes, receive):
    """``receive`` for the app: the body read here once, then the client's own channel (so that a real disconnect
    is still seen, and nothing else looks like one)."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _reply(send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build_app(
    gguf: Path,
    mmproj: Path | None,
    name: str,
    *,
    api_key: str | None = None,
    n_ctx: int = 4096,
    n_threads: int | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
):
    """(ASGI app, the LlamaCppModel it serves): llama-cpp-python's app, our model and handler, our request checks."""
    import llama_cpp.server.app as server_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    model = LlamaCppModel(gguf, mmproj, n_threads=n_threads, n_ctx=n_ctx)
    handler = model.llm.chat_handler = Qwen3ChatHandler(model)
    # llama-cpp-python reports the model name it was given; the `model` field of a response is ours
    server = ServerSettings(host=host, port=port, api_key=api_key)
    vocab = ModelSettings(model=str(gguf), model_alias=name, vocab_only=True, verbose=False)
    app = server_app.create_app(server_settings=server, model_settings=[vocab])
    server_app._llama_proxy.free()
    server_app._llama_proxy = OneModel(name, model.llm)
    app.add_middleware(CheckRequests, name=name, api_key=api_key, check=handler.check, n_vocab=model.n_vocab)
    return app, model
