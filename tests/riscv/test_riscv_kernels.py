"""ggml's RVV kernels under qemu, and proof that the vector code is what runs.

- llama.cpp's own ``test-quantize-fns`` (quantize / dequantize / dot product of every type against the reference
  implementation, with its own error bounds) passes with 128- and 256-bit vector registers: the kernels branch on
  the VLEN they read at run time.
- Negative control: the same RVV binary on a CPU without V dies of SIGILL (vector instructions were compiled in and
  executed), and llama.cpp's system-info banner says ``RISCV_V = 1`` with the VLEN qemu was given; the scalar
  reference build says neither and runs without V.
"""

from __future__ import annotations

import signal

import pytest
from riscv_tools import cpu_features, explain, finish, run, start

VLENS = (128, 256)
# test-quantize-fns runs every type single-threaded: ~4.5 min of qemu CPU at VLEN 128 (measured), so the two VLENs
# and the no-V control run side by side, one qemu process each
QUANTIZE_FNS_TIMEOUT = 1500


@pytest.fixture(scope="module")
def quantize_fns(rvv_bin):
    """vlen (None: a CPU without V) -> test-quantize-fns' CompletedProcess; all three started at once."""
    procs = {vlen: start(rvv_bin, "test-quantize-fns", vlen=vlen) for vlen in (*VLENS, None)}
    try:
        return {vlen: finish(proc, QUANTIZE_FNS_TIMEOUT) for vlen, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:  # one timed out: stop the others too
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("vlen", VLENS)
def test_quantize_fns_rvv(quantize_fns, vlen):
    proc = quantize_fns[vlen]
    assert proc.returncode == 0, explain(proc)
    tested = [ln for ln in proc.stdout.splitlines() if ln.startswith("Testing ")]
    # every quantized type llama.cpp has a CPU vec_dot for (q4_0 ... iq4_xs, the K-quants, mxfp4 ...)
    assert len(tested) >= 20, explain(proc)
    assert "FAILED" not in proc.stdout, explain(proc)


def test_rvv_binary_needs_the_vector_extension(quantize_fns):
    proc = quantize_fns[None]
    assert proc.returncode == -signal.SIGILL, explain(proc)


def banner(bin_dir, gguf, tmp_path, vlen):
    """llama-perplexity's system-info line: printed after loading the model, before it refuses the short text."""
    text = tmp_path / "short.txt"
    text.write_text("hello")
    proc = run(bin_dir, "llama-perplexity", "-m", gguf, "-f", text, "-c", 64, "-t", 2, vlen=vlen)
    features = cpu_features(proc.stderr + proc.stdout)
    assert features, explain(proc)
    return features


@pytest.mark.parametrize("vlen", VLENS)
def test_banner_reports_rvv(rvv_bin, demo_gguf, tmp_path, vlen):
    features = banner(rvv_bin, demo_gguf("q8_0")[0], tmp_path, vlen)
    assert features.get("RISCV_V") == "1", features
    assert features.get("RVV_VLEN") == str(vlen // 8), features  # VLEN in bytes (vlenb)


def test_scalar_build_has_no_vector_code(scalar_bin, demo_gguf, tmp_path):
    features = banner(scalar_bin, demo_gguf("q8_0")[0], tmp_path, vlen=None)  # a CPU without V
    assert "RISCV_V" not in features and "RVV_VLEN" not in features, features
