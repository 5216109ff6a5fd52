"""The one driver of llama-cpp-python: a text GGUF (``llama_cpp.Llama``) and, optionally, its mmproj (mtmd).

Everything that runs a GGUF goes through here: ``verify``, the demo and the benches. What it does:

- :func:`load_llama`: the ``Llama`` object (vocabulary only; or a context of ``n_ctx`` with batch = ubatch = n_ctx,
  so a whole prompt is one decode; optional F32 KV cache and logits at every position);
- :func:`prompt_logits`: logits at every position of token-id prompts (fresh KV cache each);
- :class:`LlamaCppModel`: text model + mmproj: bitmaps from a PIL image, float samples or a file, the embedding rows
  mtmd hands the text model (:meth:`~LlamaCppModel.embed`), a chat prompt with media markers evaluated through
  ``mtmd_helper_eval_chunks`` (:meth:`~LlamaCppModel.eval_prompt`) and greedy decoding after it
  (:meth:`~LlamaCppModel.greedy`, :meth:`~LlamaCppModel.answer`).

Where we differ from llama-cpp-python's own multimodal path (``Llava15ChatHandler`` and friends): the prompt is our
chat template's text with each media part replaced by mtmd's marker (mtmd writes the ``<|vision_start|>`` /
``<|audio_start|>`` wrappers and the embeddings itself), and decoding is plain argmax over the raw logits (no
sampler chain), so it is comparable token for token with transformers' greedy ``generate``. The mmproj runs on the
CPU (``use_gpu = False``) and without warm-up, as the comparisons in ``verify`` assume.

Without llama-cpp-python (or with a wheel that has no mtmd library) every entry point raises
:class:`~transformers_qwen3.errors.MissingDependencyError` naming ``make llama-cpp``.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError, UserError
from ..remote.tokens_qwen3_multimodal import AUDIO_END, AUDIO_START, AUDIO_TOKEN, IMAGE_TOKEN, VISION_END, VISION_START

WHAT = "llama-cpp-python (the patched 0.3.36 build)"
INSTALL = "make llama-cpp"
# the special tokens (end-of-generation ones among them) sit at the end of Qwen3's vocabulary
_EOG_SEARCH = 512
# the media blocks our chat template writes; mtmd writes the start/end tokens itself around its marker
MEDIA_BLOCKS = {"image": VISION_START + IMAGE_TOKEN + VISION_END, "audio": AUDIO_START + AUDIO_TOKEN + AUDIO_END}


class LlamaCppError(UserError, RuntimeError):
    """llama.cpp refused a file or an input (an mmproj that does not fit the text model, a prompt whose media
    markers do not match its media); the message names the file and the step."""


def llama_cpp_module(purpose: str = "running a GGUF"):
    """``llama_cpp``, or a MissingDependencyError naming ``make llama-cpp``."""
    try:
        import llama_cpp
    except (ImportError, OSError) as e:  # OSError: the package is there but its shared library will not load
        raise MissingDependencyError(WHAT, INSTALL, purpose) from e
    return llama_cpp


def mtmd_module(purpose: str = "images and audio in llama.cpp"):
    """``llama_cpp.mtmd_cpp``: a wheel built without libmtmd fails to import it (OSError or ImportError)."""
    llama_cpp_module(purpose)
    try:
        import llama_cpp.mtmd_cpp as mtmd
    except (ImportError, OSError) as e:
        raise MissingDependencyError(f"{WHAT} with its mtmd library", INSTALL, purpose) from e
    return mtmd


def default_threads() -> int:
    return max(1, (os.cpu_count() or 2) // 2)


def load_llama(
    path: Path,
    n_ctx: int = 512,
    n_threads: int | None = None,
    *,
    logits_all: bool = False,
    f32_kv: bool = False,
    vocab_only: bool = False,
    use_mmap: bool = True,
    ffn_width: int | list[int] | None = None,
    n_gpu_layers: int = 0,
):
    """A ``llama_cpp.Llama`` over ``path``; ``f32_kv``: an F32 KV cache (the default F16 cache alone costs ~5e-4
    relative error in the logits); ``use_mmap=False`` reads the weights into memory instead of mapping them;
    ``ffn_width``: elastic FFN width (ggml_patches/0004), one width for every layer or one per layer (0 = full),
    a multiple of the FFN weights' block size; None: the width the GGUF was written with; ``n_gpu_layers``: layers
    offloaded to a GPU build's device (-1: all; scripts/gpu_check.sh)."""
    llama_cpp = llama_cpp_module()
    if vocab_only:
        return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    threads = n_threads or default_threads()
    kv = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_kv else {}
    if ffn_width is not None:
        if not hasattr(llama_cpp, "llama_set_ffn_widths"):  # an older wheel would take the keyword and ignore it
            raise MissingDependencyError(f"{WHAT} with elastic FFN width (patch 0004)", INSTALL, "ffn_width")
        kv["ffn_width"] = ffn_width
    try:
        return llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_ubatch=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=n_gpu_layers,
            logits_all=logits_all,
            use_mmap=use_mmap,
            verbose=False,
            **kv,
        )
    except ValueError as e:  # the patched Llama's refusal of ffn_width; llama.cpp's log (off here) has the detail
        # only that refusal (python/0001's message): a missing or unreadable file raises ValueError too
        if ffn_width is None or "refused ffn_width" not in str(e):
            raise
        raise LlamaCppError(
            f"{path}: ffn_width={ffn_width!r} refused: each width must be a multiple of the FFN weights' block size "
            "(256 for K-quants, 32 for Q8_0/Q4_0), at most the layer's width, given once or once per layer"
        ) from e


def gguf_metadata(path: Path) -> dict[str, str]:
    """A GGUF's metadata as llama.cpp reads it (scalar values, as strings; arrays are left out), from the header and
    vocabulary only: no weights, no context (1.4 s for a 151k-token vocabulary, where gguf-py's reader parses
    every vocabulary array in Python: 25 s; docs/benchmarks.md)."""
    llama_cpp = llama_cpp_module()
    from llama_cpp._internals import LlamaModel

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = LlamaModel(path_model=str(path), params=params, verbose=False)
    try:
        return dict(model.metadata())
    finally:
        model.close()


def tokenize(path: Path, texts: list[str]) -> list[list[int]]:
    """llama.cpp's tokenization of each text (special tokens parsed, no BOS added), from the vocabulary alone."""
    llm = load_llama(path, vocab_only=True)
    try:
        return [list(llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)) for t in texts]
    finally:
        llm.close()


def prompt_logits(
    path: Path, token_ids: list[list[int]], n_threads: int | None = None, *, ffn_width: int | list[int] | None = None
) -> list[np.ndarray]:
    """Logits at every position, one [n_tokens, n_vocab] float32 array per prompt (fresh KV cache each, F32);
    ``ffn_width`` as in :func:`load_llama`."""
    n_ctx = max(32, max(len(t) for t in token_ids))
    llm = load_llama(path, n_ctx, n_threads, logits_all=True, f32_kv=True, ffn_width=ffn_width)
    try:
        out = []
        for ids in token_ids:
            llm.reset()
            llm.eval(ids)
            out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
        return out
    finally:
        llm.close()


class LlamaCppModel:
    """A text GGUF (+ its mmproj) in llama.cpp. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        gguf: Path,
        mmproj: Path | None = None,
        n_threads: int | None = None,
        n_ctx: int = 512,
        n_gpu_layers: int = 0,
    ):
        self.llama_cpp = llama_cpp_module()
        self.mtmd = mtmd_module() if mmproj is not None else None
        self.n_threads = n_threads or default_threads()
        self.n_gpu_layers = n_gpu_layers
        self.llm = load_llama(gguf, n_ctx, self.n_threads, n_gpu_layers=n_gpu_layers)
        self.model = self.llm._model.model
        self.ctx = None
        if mmproj is not None:
            self.ctx = self._mtmd_context(Path(gguf), Path(mmproj))
            self.marker = self.mtmd.mtmd_default_marker().decode()
        self.n_vocab = self.llm.n_vocab()
        self.n_embd_inp = self.llama_cpp.llama_model_n_embd_inp(self.model)
        vocab = self.llm._model.vocab
        first = max(0, self.n_vocab - _EOG_SEARCH)
        self.eog = {i for i in range(first, self.n_vocab) if self.llama_cpp.llama_vocab_is_eog(vocab, i)}
        self._pos = 0

    def _mtmd_context(self, gguf: Path, mmproj: Path):
        params = self.mtmd.mtmd_context_params_default()
        params.use_gpu = self.n_gpu_layers != 0
        params.n_threads = self.n_threads
        params.print_timings = False
        params.warmup = False
        ctx = self.mtmd.mtmd_init_from_file(str(mmproj).encode(), self.model, params)
        if not ctx:
            self.llm.close()
            raise LlamaCppError(f"mtmd could not load {mmproj.name} with {gguf.name} (llama.cpp's log above says why)")
        return ctx

    def close(self) -> None:
        if self.ctx:
            self.mtmd.mtmd_free(self.ctx)
            self.ctx = None
        self.llm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- text --------------------------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def detokenize(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens).decode("utf-8", errors="replace")

    # --- media -------------------------------------------------------------------------------------------------
    def image_bitmap(self, image):
        """An mtmd bitmap of a PIL image (RGB bytes, copied by mtmd)."""
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
        data = rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        return self.mtmd.mtmd_bitmap_init(image.width, image.height, data)

    def audio_bitmap(self, samples: np.ndarray):
        """An mtmd bitmap of mono float samples at the mmproj's rate (16 kHz)."""
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        return self.mtmd.mtmd_bitmap_init_from_audio(
            len(samples), samples.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        )

    def file_bitmap(self, path: Path):
        """An mtmd bitmap of an image or audio file, decoded by mtmd's helper (stb_image / miniaudio)."""
        bitmap = self.mtmd.mtmd_helper_bitmap_init_from_file(self.ctx, str(path).encode(), False)
        if not bitmap:
            raise LlamaCppError(f"mtmd could not read {path} (not an image or audio file it can decode)")
        return bitmap

    def _chunks(self, prompt: str, bitmaps: list):
        """mtmd's chunks of ``prompt`` (one marker per bitmap, in order); the caller frees them."""
        m = self.mtmd
        encoded = prompt.encode()
        text = m.mtmd_input_text(encoded, len(encoded), False, True)
        chunks = m.mtmd_input_chunks_init()
        array = (m.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
        rc = m.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), array, len(bitmaps))
        if rc != 0:
            m.mtmd_input_chunks_free(chunks)
            raise LlamaCppError(f"mtmd_tokenize failed ({rc}): {len(bitmaps)} media for the markers in {prompt!r}")
        return chunks

    def count_positions(self, prompt: str, bitmaps: list) -> int:
        """KV cells ``prompt`` with its media will take (mtmd's own counts: tokens, or positions where M-RoPE makes
        them more), before anything is evaluated, so that a prompt past the context is refused instead of failing
        halfway through a decode (the server's request check). The bitmaps stay the caller's."""
        m = self.mtmd
        chunks = self._chunks(prompt, bitmaps)
        try:
            return max(int(m.mtmd_helper_get_n_tokens(chunks)), int(m.mtmd_helper_get_n_pos(chunks)))
        finally:
            m.mtmd_input_chunks_free(chunks)

    def embed(self, bitmap) -> np.ndarray:
        """[n_tokens, n_embd_inp]: the rows mtmd hands the text model for one image or clip (bitmap freed here).
        A deepstack model's rows are [main | deepstack_0 | deepstack_1 …]."""
        m = self.mtmd
        try:
            chunks = self._chunks(self.marker, [bitmap])
        finally:
            m.mtmd_bitmap_free(bitmap)
        try:
            rows = []
            for i in range(m.mtmd_input_chunks_size(chunks)):
                chunk = m.mtmd_input_chunks_get(chunks, i)
                if m.mtmd_input_chunk_get_type(chunk) == m.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    continue
                # long audio arrives as several chunks (one per attention window): encode each, in order
                n_tokens = m.mtmd_input_chunk_get_n_tokens(chunk)
                if m.mtmd_encode_chunk(self.ctx, chunk) != 0:
                    raise LlamaCppError("mtmd_encode_chunk failed (llama.cpp's log above says why)")
                view = np.ctypeslib.as_array(m.mtmd_get_output_embd(self.ctx), shape=(n_tokens * self.n_embd_inp,))
                # copy now: the next chunk's encode reuses (and may reallocate) mtmd's output buffer
                rows.append(view.reshape(n_tokens, -1).copy())
            return np.concatenate(rows)
        finally:
            m.mtmd_input_chunks_free(chunks)

    # --- a prompt with media, then greedy decoding ---------------------------------------------------------------
    def media_prompt(self, prompt: str, kinds: list[str]) -> str:
        """Our chat template's ``prompt`` with its media blocks (one per entry of ``kinds``: "image" / "audio", in
        order) written as mtmd's marker."""
        for kind in kinds:
            if MEDIA_BLOCKS[kind] not in prompt:
                raise LlamaCppError(f"the chat template wrote no {MEDIA_BLOCKS[kind]!r} for a {kind} part: {prompt!r}")
            prompt = prompt.replace(MEDIA_BLOCKS[kind], self.marker, 1)
        return prompt

    def eval_prompt(self, prompt: str, bitmaps: list) -> int:
        """Clear the KV cache and evaluate ``prompt`` (one mtmd marker per bitmap) with its media; the bitmaps are
        freed here. Returns the prompt's length in positions."""
        m = self.mtmd
        self.llm._ctx.kv_cache_clear()
        try:
            chunks = self._chunks(prompt, bitmaps)
        finally:
            for b in bitmaps:
                m.mtmd_bitmap_free(b)
        try:
            n_prompt = m.mtmd_helper_get_n_tokens(chunks)
            n_past = self.llama_cpp.llama_pos(0)
            rc = m.mtmd_helper_eval_chunks(
                self.ctx, self.llm._ctx.ctx, chunks, 0, 0, self.llm.n_batch, True, ctypes.byref(n_past)
            )
            if rc != 0:
                raise LlamaCppError(f"mtmd_helper_eval_chunks failed ({rc}) on a {n_prompt}-token prompt")
        finally:
            m.mtmd_input_chunks_free(chunks)
        self._pos = n_past.value
        return n_prompt

    def last_logits(self) -> np.ndarray:
        """A copy of the logits at the last evaluated position, float32 [n_vocab]."""
        ptr = self.llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def greedy(self, max_new_tokens: int, stop_at_eog: bool = True) -> list[int]:
        """Argmax decoding after :meth:`eval_prompt`, one token per ``llama_decode``; an end-of-generation token
        ends it (not included) unless ``stop_at_eog`` is False (then exactly ``max_new_tokens``)."""
        from llama_cpp._internals import LlamaBatch

        tokens = []
        batch = LlamaBatch(n_tokens=1, embd=0, n_seq_max=1, verbose=False)
        try:
            for _ in range(max_new_tokens):
                token = int(self.last_logits().argmax())
                if stop_at_eog and token in self.eog:
                    break
                tokens.append(token)
                batch.set_batch([token], n_past=self._pos, logits_all=False)
                self.llm._ctx.decode(batch)
                self._pos += 1
        finally:
            batch.close()
        return tokens

    def answer(
        self, prompt: str, bitmaps: list, max_new_tokens: int, stop_at_eog: bool = True
    ) -> tuple[list[int], int, np.ndarray]:
        """(greedy tokens, prompt length, logits at the prompt's last position) for ``prompt`` with ``bitmaps``."""
        n_prompt = self.eval_prompt(prompt, bitmaps)
        first = self.last_logits()
        return self.greedy(max_new_tokens, stop_at_eog), n_prompt, first
