"""K-quants and q4_0 through llama.cpp's own quantizer (`llama_model_quantize`, via llama-cpp-python).

No quantization kernel lives here: llama.cpp picks each tensor's type (the K-quant "mixes" give some tensors a
wider type) and, where a row width is not a multiple of the type's block (256 for K-quants), substitutes a
compatible one. `written_types` reads back what it actually wrote so the caller can report it.
"""

from __future__ import annotations

import ctypes
import re
from collections import Counter
from pathlib import Path

import gguf
import numpy as np

from ..errors import MissingDependencyError
from ..formats.gguf_file import tensor_types as written_types  # what llama.cpp wrote, read back
from .errors import ConversionError

__all__ = [
    "LLAMA_FTYPES",
    "check_tensor_types",
    "llama_quantize",
    "read_imatrix",
    "require_quantizer",
    "type_report",
    "written_types",
]

# outtype → (llama_ftype constant name in llama_cpp, the types its mix is meant to use for 2-D weights)
LLAMA_FTYPES: dict[str, tuple[str, frozenset[str]]] = {
    "q6_k": ("LLAMA_FTYPE_MOSTLY_Q6_K", frozenset({"Q6_K"})),
    "q5_k_m": ("LLAMA_FTYPE_MOSTLY_Q5_K_M", frozenset({"Q5_K", "Q6_K"})),
    "q4_k_m": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", frozenset({"Q4_K", "Q6_K"})),
    "q4_0": ("LLAMA_FTYPE_MOSTLY_Q4_0", frozenset({"Q4_0", "Q6_K"})),  # output.weight gets Q6_K
    # the low end of the quality table (docs/compression.md): llama.cpp's mixes keep some tensors wider
    "q3_k_m": ("LLAMA_FTYPE_MOSTLY_Q3_K_M", frozenset({"Q3_K", "Q4_K", "Q5_K", "Q6_K"})),
    "q2_k": ("LLAMA_FTYPE_MOSTLY_Q2_K", frozenset({"Q2_K", "Q3_K", "Q4_K", "Q6_K"})),
}


def _llama_cpp():
    try:
        import llama_cpp
    except (ImportError, OSError) as e:  # OSError: the package is there but its shared library will not load
        raise MissingDependencyError(
            "llama-cpp-python (llama.cpp's quantizer, patched 0.3.36)",
            "make llama-cpp",
            "K-quant and q4_0 outputs (f32 / f16 / bf16 / q8_0 need only gguf-py)",
        ) from e
    return llama_cpp


def require_quantizer() -> None:
    """Fail now, before anything is written, when llama.cpp's quantizer is not installed."""
    _llama_cpp()


def check_tensor_types(tensor_types: dict[str, str]) -> dict[str, gguf.GGMLQuantizationType]:
    """--tensor-type REGEX=TYPE pairs → ggml types, refusing unknown type names and patterns that do not compile
    (checked with Python's re; llama.cpp's std::regex reads these simple patterns the same way)."""
    out = {}
    for pattern, type_name in tensor_types.items():
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConversionError(
                f"--tensor-type {pattern}={type_name}: {pattern!r} is not a valid regex ({e})"
            ) from e
        try:
            out[pattern] = gguf.GGMLQuantizationType[type_name.upper()]
        except KeyError as e:
            known = ", ".join(t.name.lower() for t in gguf.GGMLQuantizationType)
            raise ConversionError(
                f"--tensor-type {pattern}={type_name}: unknown ggml type {type_name!r}; choose one of {known}"
            ) from e
    return out


def llama_quantize(
    src: Path,
    dst: Path,
    outtype: str,
    tensor_types: dict[str, str] | None = None,
    nthread: int = 0,
    *,
    ftype_name: str | None = None,
    imatrix: dict[str, np.ndarray] | None = None,
) -> None:
    """Quantize the GGUF `src` (F32 / BF16 / F16 weights) into `dst` with llama.cpp.

    `tensor_types` maps a regex (searched in each tensor name, as llama-quantize's --tensor-type) to a type name
    such as "q8_0"; those tensors get that type instead of the mix's choice. `ftype_name` (a llama_cpp
    LLAMA_FTYPE_* constant name) replaces `outtype`'s mix (a compression plan's types, all given as overrides).
    `imatrix`: GGUF weight name → mean squared input per input column, as llama-quantize passes the file that
    `--imatrix` names (it divides the sums by the counts first); the K-quants weigh their rounding error by it."""
    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name or LLAMA_FTYPES[outtype][0])
    params.nthread = nthread
    keep_alive = []
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            data = np.ascontiguousarray(values, dtype=np.float32)
            if not np.isfinite(data).all():
                raise ConversionError(f"importance matrix for {name}: non-finite values; recompute it")
            encoded = name.encode()
            keep_alive += [encoded, data]
            entries[i].name = encoded
            entries[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = data.size
        entries[len(imatrix)].name = None  # terminator: the vendored llama-quant.cpp loops while name != nullptr
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep_alive.append(entries)
    if tensor_types:
        qtypes = check_tensor_types(tensor_types)
        overrides = (llama_cpp.llama_model_tensor_override * (len(qtypes) + 1))()
        for i, (pattern, qtype) in enumerate(qtypes.items()):
            encoded = pattern.encode()
            keep_alive.append(encoded)
            overrides[i].pattern = encoded
            overrides[i].type = int(qtype)
        overrides[len(qtypes)].pattern = None  # terminator
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep_alive.append(overrides)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise ConversionError(f"llama.cpp's quantizer failed on {src.name} (return code {rc}; see its log above)")


def type_report(types: dict[str, str], outtype: str | None = None) -> list[str]:
    """Counts per type, then one line per tensor whose type is outside the requested K-quant mix."""
    counts = Counter(types.values())
    lines = ["types written: " + ", ".join(f"{k}×{v}" for k, v in sorted(counts.items()))]
    if outtype in LLAMA_FTYPES:
        mix = LLAMA_FTYPES[outtype][1]
        odd = {n: t for n, t in types.items() if t not in mix and t != "F32"}
        if odd:
            lines.append(
                f"{len(odd)} tensor(s) not in the {outtype.upper()} mix ({', '.join(sorted(mix))}): llama.cpp "
                "substituted a type because the row width is not a multiple of the block size"
            )
            lines.extend(f"  {n}: {t}" for n, t in odd.items())
    return lines


def read_imatrix(path: Path) -> dict[str, np.ndarray]:
    """llama.cpp's imatrix GGUF (what `llama-imatrix` and `calibrate --imatrix` write: `<weight>.in_sum2` and
    `<weight>.counts`) as weight name → mean squared input per column, what `llama_quantize` takes."""
    from ..formats.gguf_file import read_gguf

    reader = read_gguf(Path(path))
    kind = reader.get_field(gguf.Keys.General.TYPE)
    if kind is None or str(kind.contents()) != "imatrix":
        raise ConversionError(f"--imatrix {path}: not an imatrix GGUF (general.type is not 'imatrix')")
    sums, counts = {}, {}
    for t in reader.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name.removesuffix(".in_sum2")] = np.array(t.data, dtype=np.float64).reshape(-1)
        elif t.name.endswith(".counts"):
            counts[t.name.removesuffix(".counts")] = np.array(t.data, dtype=np.float64).reshape(-1)
    out = {}
    for name, s in sums.items():
        if name not in counts or counts[name].size != 1 or counts[name][0] <= 0:
            raise ConversionError(f"--imatrix {path}: {name} has no usable count (one matrix per weight is read)")
        out[name] = (s / counts[name][0]).astype(np.float32)
    if not out:
        raise ConversionError(f"--imatrix {path}: holds no importance data")
    return out
