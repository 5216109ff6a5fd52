"""GGUF conversion of Qwen3 / Qwen3-Multimodal checkpoints for llama.cpp (installed as `transformers_qwen3.convert`).

    from transformers_qwen3.convert import convert_checkpoint
    convert_checkpoint("my-model", "gguf/", outtype="q4_k_m")
    # -> gguf/my-model-Q4_K_M.gguf (+ gguf/mmproj-my-model-Q8_0.gguf when the checkpoint has towers)

The text model becomes llama.cpp's `qwen3` (text-only checkpoints) or `qwen3vl` (M-RoPE + deepstack, when towers
exist); the vision and audio towers share ONE mmproj file with per-modality projector types `qwen3vl_merger` and
`qwen3a`. Modules, in pipeline order: `support` (what llama.cpp can run) → tensor_map / plan (what to write) →
metadata / vocab (KV pairs) → writer (stream) → quantize (llama.cpp's quantizer for K-quants); `converter` runs them
and `lora` does the same for adapters; `cli` is the `transformers-qwen3 convert` verb. The folder is read and checked
by `transformers_qwen3.formats` first. This package imports nothing else of transformers_qwen3 but `formats`,
`errors` and `outputs` (docs/architecture.md). docs/gguf.md lists every difference from llama.cpp's own
convert_hf_to_gguf.py.
"""

from .converter import OUTTYPES, convert_checkpoint
from .errors import ConversionError
from .quantize import type_report, written_types

__all__ = ["OUTTYPES", "ConversionError", "convert_checkpoint", "type_report", "written_types"]
