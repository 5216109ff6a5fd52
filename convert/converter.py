"""`convert_checkpoint`: one checkpoint folder → `<name>-<TYPE>.gguf` and, with towers, `mmproj-<name>-<TYPE>.gguf`.

Fixed phases, in order: arguments (outtype, --tensor-type names, the quantizer installed) → open and validate the
folder (`validate_folder`: config schema, safetensors headers, index, tensors vs config) → check what llama.cpp can
run → plan (every output tensor from headers alone) → stage (write each file under a temporary name in OUTDIR;
K-quants: write the lossless intermediate, then run llama.cpp's quantizer) → publish (rename all files into place
only once every one of them is complete). Any error removes every staged file: nothing partial is left.
"""

from __future__ import annotations

import filecmp
import logging
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from ..formats.compression import checkpoint_sha256, planned_checkpoint, read_plan
from ..formats.compression import tensor_types as plan_tensor_types
from ..formats.folder import Checkpoint, validate_folder
from ..outputs import publish_file, temp_file
from .errors import ConversionError
from .metadata import ARCH_MMPROJ, add_general, add_mmproj_hparams, add_text_hparams, text_arch
from .plan import PlannedTensor, format_plan, plan_mmproj, plan_text
from .quantize import (
    LLAMA_FTYPES,
    check_tensor_types,
    llama_quantize,
    read_imatrix,
    require_quantizer,
    type_report,
    written_types,
)
from .support import check_llama_cpp_support
from .vocab import Vocab, load_vocab
from .writer import write_gguf

logger = logging.getLogger(__name__)

QT = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType

# outtypes gguf-py writes itself: (tensor type, general.file_type)
DIRECT_OUTTYPES: dict[str, tuple[QT, FT]] = {
    "f32": (QT.F32, FT.ALL_F32),
    "f16": (QT.F16, FT.MOSTLY_F16),
    "bf16": (QT.BF16, FT.MOSTLY_BF16),
    "q8_0": (QT.Q8_0, FT.MOSTLY_Q8_0),
}
# `--plan` with outtype "plan": each weight gets the plan's type through llama.cpp's quantizer (every weight an
# exact-name override). llama.cpp applies overrides only under a quantized ftype (llama_tensor_get_type in the
# vendored llama-quant.cpp), so the file's general.file_type is the mix of the plan's most common quantized type,
# Q8_0 when the plan quantizes nothing.
PLAN = "plan"
PLAN_FTYPES = {
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "Q5_K": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q4_K": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "Q3_K": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "Q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K",
}
OUTTYPES = (*DIRECT_OUTTYPES, *LLAMA_FTYPES, PLAN)
# the K-quant intermediate: lossless for the checkpoint's own precision
_INTERMEDIATE = {"F32": "f32", "BF16": "bf16", "F16": "f16"}
# towers are small and precision-sensitive, and llama.cpp's quantizer does not read mmproj files: a K-quant
# conversion writes its mmproj as Q8_0
MMPROJ_FOR_LLAMA_QUANT = "q8_0"


@dataclass(frozen=True)
class Output:
    path: Path
    kind: str  # "text" / "mmproj"
    outtype: str  # the type the file is named after
    write_type: str  # what gguf-py writes (== outtype except for the K-quant intermediate)
    plan: list[PlannedTensor]


@dataclass
class Quantization:
    """What llama.cpp's quantizer gets besides the outtype: --tensor-type overrides, a plan's per-weight types
    (checkpoint name in the compressed model → ggml type), the importance matrix (GGUF name → column means)."""

    tensor_types: dict[str, str] | None = None
    plan_types: dict[str, str] = field(default_factory=dict)
    imatrix: dict | None = None


def type_label(outtype: str) -> str:
    """File-name type as llama.cpp writes it: F16, Q8_0, Q4_K_M …"""
    return outtype.upper()


def _check_name(name: str) -> str:
    if not name or name in (".", "..") or re.search(r"[/\\\x00]", name):
        raise ConversionError(f"--name {name!r}: need a plain file-name stem (no path separators)")
    return name


def _prepare_outdir(outdir: Path) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise ConversionError(f"OUTDIR {outdir} exists and is not a folder")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConversionError(f"OUTDIR {outdir}: cannot create it ({e.strerror}); pick a writable folder") from e
    # access() can pass for root on read-only mounts: create and remove a probe file instead
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=outdir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConversionError(f"OUTDIR {outdir} is not writable ({e.strerror}); pick a writable folder") from e


def plan_outputs(ckpt: Checkpoint, outdir: Path, outtype: str, name: str) -> list[Output]:
    outputs = []
    if outtype in DIRECT_OUTTYPES:
        text_write = outtype
    else:
        text_write = _INTERMEDIATE[ckpt.widest_float_dtype()]
    text_qt = DIRECT_OUTTYPES[text_write][0]
    outputs.append(
        Output(outdir / f"{name}-{type_label(outtype)}.gguf", "text", outtype, text_write, plan_text(ckpt, text_qt))
    )
    if ckpt.has_towers:
        mm_type = outtype if outtype in DIRECT_OUTTYPES else MMPROJ_FOR_LLAMA_QUANT
        mm_qt = DIRECT_OUTTYPES[mm_type][0]
        outputs.append(
            Output(
                outdir / f"mmproj-{name}-{type_label(mm_type)}.gguf",
                "mmproj",
                mm_type,
                mm_type,
                plan_mmproj(ckpt, mm_qt),
            )
        )
    return outputs


def _stage_text(ckpt: Checkpoint, out: Output, tmp: Path, name: str, vocab: Vocab, progress: bool) -> None:
    file_type = DIRECT_OUTTYPES[out.write_type][1]

    def metadata(w: gguf.GGUFWriter) -> None:
        add_general(w, gguf.GGUFType.MODEL, name, file_type)
        add_text_hparams(w, ckpt)
        vocab.add_to(w)

    write_gguf(tmp, text_arch(ckpt), out.plan, metadata, ckpt, progress, out.path.name)


def _stage_mmproj(ckpt: Checkpoint, out: Output, tmp: Path, name: str, progress: bool) -> None:
    file_type = DIRECT_OUTTYPES[out.write_type][1]

    def metadata(w: gguf.GGUFWriter) -> None:
        add_general(w, gguf.GGUFType.MMPROJ, name, file_type)
        add_mmproj_hparams(w, ckpt)

    write_gguf(tmp, ARCH_MMPROJ, out.plan, metadata, ckpt, progress, out.path.name)


def _check_arguments(outtype: str, tensor_types: dict[str, str] | None, dry_run: bool, plan=None, imatrix=None) -> str:
    outtype = outtype.lower()
    if outtype not in OUTTYPES:
        raise ConversionError(f"--outtype {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    if outtype == PLAN and plan is None:
        raise ConversionError("--outtype plan takes each weight's type from a plan: pass --plan PLAN.json")
    if outtype == PLAN and tensor_types:
        raise ConversionError("--tensor-type with --plan: the plan sets every weight's type; change the plan instead")
    if imatrix is not None and outtype not in (*LLAMA_FTYPES, PLAN):
        raise ConversionError(
            "--imatrix applies to llama.cpp's quantizer: use it with --plan or q6_k/q5_k_m/q4_k_m/q4_0"
        )
    if tensor_types and outtype not in LLAMA_FTYPES:
        raise ConversionError("--tensor-type applies to llama.cpp's quantizer: use it with q6_k/q5_k_m/q4_k_m/q4_0")
    if tensor_types:
        check_tensor_types(tensor_types)
    if outtype in (*LLAMA_FTYPES, PLAN) and not dry_run:
        require_quantizer()  # before the lossless intermediate is written, not after
    return outtype


def _print_plans(outputs: list[Output]) -> None:
    for out in outputs:
        title = f"{out.path} ({out.kind}, {type_label(out.outtype)})"
        if out.write_type != out.outtype:
            title += f" — written as {type_label(out.write_type)}, then llama.cpp's quantizer picks each weight's final type"
        print(format_plan(out.plan, title))


def _kept_if_identical(outputs: list[Output], outtype: str, force: bool) -> set[Path]:
    """The shared mmproj of a K-quant conversion may exist already (an earlier K-quant wrote the same Q8_0 file);
    every other existing output needs --force."""
    keep = {out.path for out in outputs if out.kind == "mmproj" and out.outtype != outtype}
    clash = [out.path for out in outputs if out.path.exists() and out.path not in keep]
    if clash and not force:
        raise ConversionError(f"{', '.join(map(str, clash))} already exist(s); pass --force to overwrite")
    return keep


def _stage(ckpt: Checkpoint, out: Output, name: str, vocab: Vocab, temp_path, progress: bool, quant) -> Path:
    """Write ``out`` under a temporary name (K-quants: the intermediate, then llama.cpp's quantizer)."""
    tmp = temp_path(out.path)
    if out.kind != "text":
        _stage_mmproj(ckpt, out, tmp, name, progress)
        return tmp
    _stage_text(ckpt, out, tmp, name, vocab, progress)
    if out.write_type == out.outtype:
        return tmp
    quantized = temp_path(out.path)
    overrides, ftype_name, planned = quant.tensor_types, None, {}
    if out.outtype == PLAN:
        planned = {p.name: quant.plan_types[p.source].upper() for p in out.plan if p.source in quant.plan_types}
        overrides = {f"^{re.escape(n)}$": t for n, t in planned.items()}
        common = Counter(t for t in planned.values() if t in PLAN_FTYPES).most_common(1)
        ftype_name = PLAN_FTYPES[common[0][0]] if common else PLAN_FTYPES["Q8_0"]
    llama_quantize(tmp, quantized, out.outtype, overrides, ftype_name=ftype_name, imatrix=quant.imatrix)
    tmp.unlink()
    written = written_types(quantized)
    wrong = [f"{n}: {written.get(n)} (plan: {t})" for n, t in planned.items() if written.get(n) != t]
    if wrong:
        raise ConversionError(f"llama.cpp's quantizer did not write the plan's types: {'; '.join(wrong[:6])}")
    for line in type_report(written, out.outtype):
        logger.info("%s: %s", out.path.name, line)
    return quantized


def _stage_and_publish(ckpt, outputs, name, vocab, keep_if_identical, force, progress, quant) -> None:
    """Stage every output, then rename them all into place; any error removes every staged file."""
    staged: list[tuple[Path, Path]] = []
    scratch: list[Path] = []

    def temp_path(final: Path) -> Path:
        # our temporary naming: a run killed mid-write leaves it behind, and the next run into OUTDIR removes it
        tmp = temp_file(final)
        scratch.append(tmp)
        return tmp

    try:
        for out in outputs:
            tmp = _stage(ckpt, out, name, vocab, temp_path, progress, quant)
            if out.path in keep_if_identical and out.path.exists() and not force:
                if filecmp.cmp(tmp, out.path, shallow=False):
                    logger.info("%s: unchanged, kept", out.path.name)
                    continue
                raise ConversionError(f"{out.path} exists with different content; pass --force to overwrite")
            staged.append((tmp, out.path))
        for tmp, final in staged:
            publish_file(tmp, final)
    finally:
        for tmp in scratch:
            tmp.unlink(missing_ok=True)


def convert_checkpoint(
    src: str | os.PathLike,
    outdir: str | os.PathLike,
    outtype: str = "f16",
    name: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    *,
    progress: bool = True,
    tensor_types: dict[str, str] | None = None,
    plan: str | os.PathLike | None = None,
    imatrix: str | os.PathLike | None = None,
) -> list[Path]:
    """Convert the checkpoint folder `src` into GGUF files in `outdir`; returns their paths.

    `outtype`: one of f32, f16, bf16, q8_0 (written by gguf-py) or q6_k, q5_k_m, q4_k_m, q4_0 (llama.cpp's
    quantizer; needs llama-cpp-python). `name` defaults to `src`'s folder name. Existing files need `force`, except
    an mmproj whose bytes would not change (K-quant conversions of one checkpoint share the Q8_0 mmproj).
    `dry_run` prints every tensor (name, shape, type, bytes) and the totals, and writes nothing.
    `tensor_types`: regex → ggml type overrides for llama.cpp's quantizer (K-quants / q4_0 only).
    `plan`: a compression plan (``transformers-qwen3 plan``) for this checkpoint: the text model is written with
    its FFN neurons permuted and cut to the plan's widths and its skipped layers dropped (formats/compression.py,
    the same functions the transformers side uses); with outtype "plan" each weight gets the plan's type.
    `imatrix`: llama.cpp's imatrix GGUF (``calibrate --imatrix``, ``llama-imatrix``) for llama.cpp's quantizer.
    """
    outtype = _check_arguments(outtype, tensor_types, dry_run, plan, imatrix)
    src, outdir = Path(src), Path(outdir)
    ckpt = validate_folder(src)
    quant = Quantization(tensor_types)
    if plan is not None:
        plan_dict = read_plan(plan, checkpoint_sha256(ckpt))
        ckpt = planned_checkpoint(ckpt, plan_dict, str(plan))
        quant.plan_types = plan_tensor_types(plan_dict, ckpt.layout)
    check_llama_cpp_support(ckpt)
    name = _check_name(name or src.resolve().name)
    outputs = plan_outputs(ckpt, outdir, outtype, name)
    if imatrix is not None:
        quant.imatrix = _imatrix_for(ckpt, outputs, Path(imatrix))
    if dry_run:
        _print_plans(outputs)
        return [out.path for out in outputs]
    vocab = load_vocab(ckpt.folder, ckpt.text["vocab_size"])  # tokenizer problems surface before any writing
    _prepare_outdir(outdir)
    keep_if_identical = _kept_if_identical(outputs, outtype, force)
    _stage_and_publish(ckpt, outputs, name, vocab, keep_if_identical, force, progress, quant)
    return [out.path for out in outputs]


def _imatrix_for(ckpt: Checkpoint, outputs: list[Output], path: Path) -> dict:
    """The imatrix file's entries under the written model's names (a plan renumbers layers and cuts ffn_down's
    columns), each checked against its weight's row width."""
    import torch

    data = read_imatrix(path)
    layout = getattr(ckpt, "layout", None)
    if layout is not None:
        mapped = {}
        for name, values in data.items():
            new = layout.gguf_name(name)
            if new is not None:
                mapped[new] = layout.gguf_input_columns(name, torch.from_numpy(values)).numpy()
        data = mapped
    widths = {p.name: p.shape[-1] for out in outputs if out.kind == "text" for p in out.plan}
    wrong = [
        f"{n} ({v.size} columns, the weight has {widths[n]})"
        for n, v in data.items()
        if widths.get(n, v.size) != v.size
    ]
    if wrong:
        raise ConversionError(f"--imatrix {path}: made for another model: {', '.join(wrong[:4])}")
    return {n: v for n, v in data.items() if n in widths}
