#!/usr/bin/env bash
# The GPU check, one command on a machine with an NVIDIA GPU (docs/backends.md, "CUDA"):
#
#   scripts/gpu_check.sh              on the GPU machine (as the device tool runs it: no network there)
#   scripts/gpu_check.sh --dry-run    here, without a GPU: the same steps on the CPU (see below)
#
# 1. Python: the wheels in .gpu/whl/ (transformers 5.24.0, gguf 0.19.0, ...: what the GPU machine's own
#    Python lacks) and this project, installed with --no-deps into a folder on PYTHONPATH.
# 2. The patched CUDA llama-cpp-python: a wheel already built on this machine (a warm machine), else
#    .gpu/wheel/*.whl (a prebuilt CUDA wheel, if one was carried), else built from the trimmed patched
#    tree .gpu/llama_cpp_python-<version>.tar.gz with ggml_patches/cuda/cuda_args.sh's arguments (sm_90,
#    flash attention off) on every core (`pip wheel --no-build-isolation`). `make gpu-tree` prepares .gpu/.
# 3. tests/test_gpu.py with TRANSFORMERS_QWEN3_REQUIRE_GPU=1: no CUDA device, or a llama-cpp-python without
#    a GPU back end, fails instead of skipping. It holds the torch oracles on the GPU (fp32 against
#    transformers' native class and against the CPU run, bf16, device_map, LoRA) and llama.cpp on the GPU
#    against its CPU run: tiny-mm's and the demo model's Q8_0 and Q4_K_M GGUFs, image and audio.
# 4. Decode speed of an 8b-shape (Qwen3-8B's dimensions) Q4_K_M GGUF, every layer on the GPU, against the
#    bandwidth bound (H200: 4.8 TB/s; bytes per token as bench/bench_decode.py counts them).
#
# --dry-run: the project's .venv (CPU llama-cpp-python, no build), the tests with
# TRANSFORMERS_QWEN3_GPU_DEVICE=cpu, a 2-layer shape for the decode step. It checks that the steps run;
# its "GPU vs CPU" numbers compare the CPU with itself and say nothing about a GPU.
#
# Output: everything is logged to $OUT/gpu_check.log (the device tool's $OUT; else /tmp/gpu_check/), the
# decode figures to $OUT/decode.json; the last line is a one-line summary. Budget: <= 8 min on one H200.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
dry=0
for a in "$@"; do
    case "$a" in
        --dry-run) dry=1 ;;
        -h | --help)
            sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
            exit 0
            ;;
        *) echo "scripts/gpu_check.sh: unknown option '$a' (see --help)" >&2; exit 2 ;;
    esac
done
# the CPU half of each GPU-vs-CPU comparison: ggml's AMX buffer type segfaulted here (patch 0005's switch turns it off)
export GGML_CPU_NO_AMX="${GGML_CPU_NO_AMX:-1}"
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
work="${GPU_CHECK_WORK:-/tmp/gpu_check_work}"
mkdir -p "$work"
exec > >(tee -a "$out/gpu_check.log") 2>&1
t_all=$(date +%s)
results=()
step() { echo; echo "== $* ($(date -u +%H:%M:%S), +$(($(date +%s) - t_all)) s)"; }
fail() {
    echo "gpu_check: FAILED: $*"
    echo "gpu_check: FAILED ($*) after $(($(date +%s) - t_all)) s; ${results[*]:-}"
    exit 1
}

# --- 1. Python ---------------------------------------------------------------------------------------------------
step "1/4 Python"
if [ "$dry" = 1 ]; then
    py="$repo/.venv/bin/python"
    device=cpu
    [ -x "$py" ] || fail "no .venv (make venv llama-cpp)"
else
    py="$(command -v python3)"
    device=cuda
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || fail "nvidia-smi found no GPU"
    site="$work/site"
    if [ ! -f "$site/.complete" ]; then
        rm -rf "$site"
        ls .gpu/whl/*.whl >/dev/null 2>&1 || fail "no .gpu/whl/*.whl (run make gpu-tree here and carry .gpu)"
        "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" .gpu/whl/*.whl || fail "wheel install"
        "$py" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$site" . ||
            fail "project install"
        touch "$site/.complete"
    fi
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    # cuBLAS / CUDA runtime libraries of the Python's NVIDIA wheels (torch's), for libggml-cuda.so
    nv="$("$py" -c 'import nvidia; print(next(iter(nvidia.__path__)))' 2>/dev/null || true)"
    for d in "$nv"/cu13/lib "$nv"/*/lib; do [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; done
    export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
fi
"$py" -c 'import sys, torch, transformers; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__)' ||
    fail "python environment"

# --- 2. the CUDA wheel -------------------------------------------------------------------------------------------
step "2/4 patched llama-cpp-python (CUDA)"
tree="$(ls .gpu/llama_cpp_python-*.tar.gz 2>/dev/null | head -n1)"
if [ "$dry" = 1 ]; then
    [ -n "$tree" ] || fail "no .gpu/llama_cpp_python-*.tar.gz (make gpu-tree)"
    tar -tzf "$tree" >"$work/tree.list" || fail "$tree does not read"
    grep -q 'vendor/llama.cpp/ggml/src/ggml-cuda/ggml-cuda.cu$' "$work/tree.list" || fail "$tree has no ggml-cuda"
    echo "dry run: would build $tree with CMAKE_ARGS: $(bash ggml_patches/cuda/cuda_args.sh "$py" | tr '\n' ' ')"
    "$py" -c 'import llama_cpp; print("CPU llama-cpp-python", llama_cpp.__version__, "gpu offload:", llama_cpp.llama_supports_gpu_offload())' ||
        fail "no llama-cpp-python in .venv (make llama-cpp)"
    results+=("wheel: dry run (not built)")
else
    wheel="$(ls "$work"/wheel/llama_cpp_python-*.whl 2>/dev/null | head -n1)"
    [ -n "$wheel" ] || wheel="$(ls .gpu/wheel/llama_cpp_python-*.whl 2>/dev/null | head -n1)"
    if [ -z "$wheel" ]; then
        [ -n "$tree" ] || fail "no .gpu/llama_cpp_python-*.tar.gz and no prebuilt wheel (make gpu-tree)"
        rm -rf "$work/src" "$work/wheel" && mkdir -p "$work/src" "$work/wheel"
        tar -xzf "$tree" -C "$work/src"
        cmake_args="$(bash ggml_patches/cuda/cuda_args.sh "$py" | tr '\n' ' ')" || fail "cuda_args.sh"
        echo "CMAKE_ARGS: $cmake_args"
        t=$(date +%s)
        CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
            "$py" -m pip wheel -v --no-deps --no-build-isolation --no-index -w "$work/wheel" "$work/src"/llama_cpp_python-* \
            >"$out/wheel_build.log" 2>&1 || { tail -n 40 "$out/wheel_build.log"; fail "CUDA wheel build (log: wheel_build.log)"; }
        grep -E '^\s*\[[0-9]+/[0-9]+\]' "$out/wheel_build.log" | tail -n 1
        wheel="$(ls "$work"/wheel/llama_cpp_python-*.whl | head -n1)"
        echo "built $wheel in $(($(date +%s) - t)) s"
        results+=("wheel built in $(($(date +%s) - t)) s")
    fi
    "$py" -m pip install -q --no-index --no-deps --no-compile --target "$work/site" --upgrade "$wheel" || fail "wheel install"
    "$py" -c 'import llama_cpp, llama_cpp._ggml_patches as g; print("llama-cpp-python", llama_cpp.__version__, "patches", g.PATCHES, "gpu offload:", llama_cpp.llama_supports_gpu_offload())
assert llama_cpp.llama_supports_gpu_offload(), "no GPU back end in the installed wheel"' || fail "the CUDA wheel does not load or has no GPU back end"
fi

# --- 3. tests/test_gpu.py ------------------------------------------------------------------------------------------
step "3/4 tests/test_gpu.py on $device"
t=$(date +%s)
TRANSFORMERS_QWEN3_GPU_DEVICE="$device" TRANSFORMERS_QWEN3_REQUIRE_GPU=$((1 - dry)) HF_HUB_OFFLINE=1 \
    "$py" -m pytest -q -p no:cacheprovider -n 0 -rA -s tests/test_gpu.py >"$out/test_gpu.log" 2>&1
tests_rc=$?
grep -E 'max \|diff\||rel:|losses|demo .* on |passed|failed|error' "$out/test_gpu.log" | tail -n 40
tests_line="$(tail -n 1 "$out/test_gpu.log")"
results+=("test_gpu.py: $tests_line ($(($(date +%s) - t)) s)")

# --- 4. decode speed -----------------------------------------------------------------------------------------------
step "4/4 decode speed, 8b-shape Q4_K_M on $device"
shape=8b
[ "$dry" = 1 ] && shape=tiny
"$py" - "$shape" "$device" "$work" "$out/decode.json" <<'PY' || fail "decode step"
"""An 8b-shape GGUF in Q4_K_M's type layout, random quants, decode speed with every layer on the GPU vs the bound."""
import json, sys, time
from pathlib import Path

import numpy as np
import gguf

sys.path.insert(0, "bench")
from bench_decode import bytes_per_token, decode_tokens_per_s  # noqa: E402

from transformers_qwen3.runtime.llama_cpp import llama_cpp_module  # noqa: E402

shape, device, work, json_out = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
# Qwen3-8B's config.json: hidden 4096, 36 layers, FFN 12288, 32 query / 8 KV heads of 128, vocabulary 151936
SHAPES = {
    "8b": dict(n_embd=4096, n_layer=36, n_ff=12288, n_head=32, n_head_kv=8, head_dim=128),
    "tiny": dict(n_embd=512, n_layer=2, n_ff=1536, n_head=8, n_head_kv=4, head_dim=64),
}
H200_BYTES_PER_S = 4.8e12
N_VOCAB = 151936
s = SHAPES[shape]
Q4_K, Q6_K, F32 = gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K, gguf.GGMLQuantizationType.F32


def use_more_bits(i: int, n: int) -> bool:  # llama.cpp's llama-quant.cpp
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def q_type(name: str, layer: int) -> gguf.GGMLQuantizationType:
    """Q4_K_M's choice (llama_tensor_get_type): Q6_K for output and for attn_v / ffn_down in use_more_bits layers."""
    if name == "output" or (name in ("attn_v", "ffn_down") and use_more_bits(layer, s["n_layer"])):
        return Q6_K
    return Q4_K


rng = np.random.default_rng(0)
SCALE = np.array([2e-4], dtype=np.float16).view(np.uint8)


def blocks(qtype, rows: int, cols: int) -> np.ndarray:
    """Random blocks with small f16 scales (d, dmin), so activations stay finite over the layers."""
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(rows, cols // block, nbytes), dtype=np.uint8)
    if qtype == Q4_K:
        data[..., 0:2] = SCALE
        data[..., 2:4] = SCALE
    else:  # Q6_K: d is the last 2 bytes
        data[..., -2:] = SCALE
    return data.reshape(rows, -1)


path = work / f"qwen3-{shape}-Q4_K_M-layout.gguf"
if not path.is_file():
    t = time.perf_counter()
    tok_src = sorted(p for p in work.glob("tok/*.gguf") if not p.name.startswith("mmproj-"))
    if not tok_src:
        from transformers_qwen3.convert import convert_checkpoint
        from transformers_qwen3.demo.model import demo_checkpoint

        convert_checkpoint(demo_checkpoint(), work / "tok", "q8_0", force=True, progress=False)
        tok_src = sorted(p for p in work.glob("tok/*.gguf") if not p.name.startswith("mmproj-"))
    reader = gguf.GGUFReader(tok_src[0])
    w = gguf.GGUFWriter(path.with_suffix(".partial"), "qwen3")
    e, L = s["n_embd"], s["n_layer"]
    w.add_context_length(40960)
    w.add_embedding_length(e)
    w.add_block_count(L)
    w.add_feed_forward_length(s["n_ff"])
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    w.add_key_length(s["head_dim"])
    w.add_value_length(s["head_dim"])
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    for f in reader.fields.values():
        if f.name.startswith("tokenizer."):
            vtype = gguf.GGUFValueType(f.types[0])
            sub = gguf.GGUFValueType(f.types[1]) if vtype == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(f.name, f.contents(), vtype, sub)
    hd, qd, kvd = s["head_dim"], s["n_head"] * s["head_dim"], s["n_head_kv"] * s["head_dim"]

    def add(name, qtype, rows, cols):
        w.add_tensor(name, blocks(qtype, rows, cols), raw_dtype=qtype)  # uint8 [rows, bytes per row]

    def norm(name, n):
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    add("token_embd.weight", Q4_K, N_VOCAB, e)
    for i in range(L):
        norm(f"blk.{i}.attn_norm.weight", e)
        add(f"blk.{i}.attn_q.weight", q_type("attn_q", i), qd, e)
        add(f"blk.{i}.attn_k.weight", q_type("attn_k", i), kvd, e)
        add(f"blk.{i}.attn_v.weight", q_type("attn_v", i), kvd, e)
        add(f"blk.{i}.attn_output.weight", q_type("attn_output", i), e, qd)
        norm(f"blk.{i}.attn_q_norm.weight", hd)
        norm(f"blk.{i}.attn_k_norm.weight", hd)
        norm(f"blk.{i}.ffn_norm.weight", e)
        add(f"blk.{i}.ffn_gate.weight", q_type("ffn_gate", i), s["n_ff"], e)
        add(f"blk.{i}.ffn_up.weight", q_type("ffn_up", i), s["n_ff"], e)
        add(f"blk.{i}.ffn_down.weight", q_type("ffn_down", i), e, s["n_ff"])
    norm("output_norm.weight", e)
    add("output.weight", Q6_K, N_VOCAB, e)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    path.with_suffix(".partial").rename(path)
    print(f"wrote {path.name} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s")

llama_cpp = llama_cpp_module("the decode benchmark")
n_prompt, n_gen = 16, 128


class NBytes:  # bytes_per_token needs only len(data): the 8b file's 5 GB are not read into memory
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


reader = gguf.GGUFReader(path)
kv = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
tensors = {t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape), NBytes(int(t.n_bytes))) for t in reader.tensors}
del reader
nbytes, _ = bytes_per_token(kv, tensors, n_prompt + n_gen / 2)
layers = -1 if device == "cuda" else 0
llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=512, n_gpu_layers=layers, verbose=False,
                      n_threads=2, n_threads_batch=2)
prompt = list(range(1000, 1000 + n_prompt))
gen = [(7 * i + 11) % 100000 for i in range(n_gen)]
decode_tokens_per_s(llm, prompt, gen[:16])  # warm-up (CUDA graphs are captured on the first tokens)
speeds = [decode_tokens_per_s(llm, prompt, gen) for _ in range(3)]
tok_s = float(np.median(speeds))
bound = H200_BYTES_PER_S / nbytes
res = dict(shape=shape, device=device, file=path.name, file_bytes=path.stat().st_size, bytes_per_token=nbytes,
           tokens=n_gen, tok_s_runs=speeds, tok_s=tok_s, h200_bound_tok_s=bound, fraction_of_bound=tok_s / bound)
json_out.write_text(json.dumps(res, indent=2))
print(f"{shape} Q4_K_M layout on {device}: {tok_s:.1f} tok/s (runs {[round(x, 1) for x in speeds]}), "
      f"{nbytes / 1e9:.3f} GB read per token, H200 bound {bound:.0f} tok/s at 4.8 TB/s -> {100 * tok_s / bound:.1f} %")
PY
results+=("decode: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(f"{d[\"shape\"]} {d[\"tok_s\"]:.1f} tok/s = {100*d[\"fraction_of_bound\"]:.1f} % of the 4.8 TB/s bound")' "$out/decode.json")")

kind="GPU run"
[ "$dry" = 1 ] && kind="DRY RUN on the CPU (no GPU result)"
status=OK
[ "$tests_rc" = 0 ] || status=FAILED
echo "gpu_check: $status, $kind, $(($(date +%s) - t_all)) s: $(IFS=';'; echo "${results[*]}")"
[ "$status" = OK ]
