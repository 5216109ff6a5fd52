"""Quantize → dequantize round trips of one weight, through llama.cpp's own kernels (never ours).

Quantizing: ggml's ``ggml_quantize_chunk`` from the ggml library llama-cpp-python ships (``llama_cpp._ggml``), the
function llama-quantize calls per tensor, with the importance matrix as its ``quant_weights``. Dequantizing:
gguf-py's ``quants.dequantize`` (numpy; it implements every type used here). gguf-py alone cannot quantize the
K-quants (``NotImplementedError`` in 0.19.0), hence ggml for both; for Q8_0 and Q4_0 the two quantizers agree bit
for bit (a test checks it).
"""

from __future__ import annotations

import ctypes
import functools

import gguf
import numpy as np
import torch

from ..errors import MissingDependencyError

# The candidate types a plan chooses among, widest first, with their bits per weight (block bytes * 8 / block
# size, from gguf-py's table). F16 is the unquantized reference of a GGUF file.
CANDIDATE_TYPES = ("F16", "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K")


def bits_per_weight(type_name: str) -> float:
    block, nbytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return nbytes * 8 / block


def tensor_bytes(type_name: str, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of ``shape`` (torch order, rows last-dim wide) stored as ``type_name``."""
    block, nbytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    n = 1
    for d in shape:
        n *= d
    return n // block * nbytes


def fits(type_name: str, shape: tuple[int, ...]) -> bool:
    """llama.cpp quantizes a row as whole blocks: a row width that is not a multiple of the block size makes it
    substitute another type silently, so a plan never chooses such a pair."""
    block, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return shape[-1] % block == 0


@functools.cache
def _ggml():
    try:
        from llama_cpp._ggml import libggml
    except (ImportError, OSError) as e:
        raise MissingDependencyError(
            "llama-cpp-python (llama.cpp's quantizer, patched 0.3.36)", "make llama-cpp", "quantization round trips"
        ) from e
    fn = libggml.ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p]
    libggml.ggml_quantize_init.argtypes = [ctypes.c_int]
    return libggml


def quantize(weight: np.ndarray, type_name: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """``weight`` [rows, n_per_row] float32 → the ggml blocks of ``type_name`` as uint8 [rows, row bytes]."""
    qtype = gguf.GGMLQuantizationType[type_name]
    lib = _ggml()
    w = np.ascontiguousarray(weight, dtype=np.float32)
    rows, n_per_row = w.shape
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    out = np.empty((rows, n_per_row // block * nbytes), dtype=np.uint8)
    qw = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    lib.ggml_quantize_init(int(qtype))
    written = lib.ggml_quantize_chunk(
        int(qtype), w.ctypes.data, out.ctypes.data, 0, rows, n_per_row, None if qw is None else qw.ctypes.data
    )
    assert written == out.nbytes, (written, out.nbytes)
    return out


def round_trip(weight: torch.Tensor, type_name: str, imatrix: torch.Tensor | None = None) -> torch.Tensor:
    """What ``weight`` becomes when stored as ``type_name`` and read back (same dtype and shape)."""
    if type_name in ("F32",):
        return weight.clone()
    w = weight.detach().float().reshape(-1, weight.shape[-1]).numpy()
    if type_name in ("F16", "BF16"):
        back = gguf.quants.dequantize(
            gguf.quants.quantize(w, gguf.GGMLQuantizationType[type_name]), gguf.GGMLQuantizationType[type_name]
        )
    else:
        im = None if imatrix is None else imatrix.float().numpy()
        back = gguf.quants.dequantize(quantize(w, type_name, im), gguf.GGMLQuantizationType[type_name])
    return torch.from_numpy(np.asarray(back, dtype=np.float32)).reshape(weight.shape).to(weight.dtype)
