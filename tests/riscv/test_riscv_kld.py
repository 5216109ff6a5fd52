"""The RVV build against the scalar reference build, with llama.cpp's own yardstick: ``llama-perplexity
--kl-divergence`` on a short text, per quantization type of the demo model (hidden 256, FFN 768: every row is a
whole number of 256-wide K-quant blocks, so the Q4_K / Q6_K kernels run, not a fallback).

Rule: mean KL divergence (RVV vs scalar, same GGUF) < 1e-3 and the same top token at ≥ 97 % of the positions. The control shows the rule can fail: a real
quantization change (the RVV build on Q4_0 against the scalar build's Q8_0 logits) must exceed it. Measured
numbers are in docs/backends.md ("RISC-V (RVV) under qemu")."""

from __future__ import annotations

import re

import pytest
from riscv_tools import explain, run

KLD_RULE = 1e-3
SAME_TOP_RULE = 97.0  # % of positions whose top token is the scalar build's
N_CTX = 64  # llama-perplexity scores the second half of each chunk
N_CHUNKS = 2  # 128 tokens, 64 scored: each run is ~45 s of qemu per chunk on the busy 2 cores (measured)
TEXT = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, counting the steps as his father had "
    "taught him. From the lamp room he could see the whole bay: the fishing boats coming home, the gulls circling "
    "the harbour wall, and far out the dark line where the current turned. He trimmed the wick, polished the great "
    "lens until it shone, and wrote the weather in the log in small careful letters. Some nights the fog rolled in "
    "so thick that the beam seemed to stop a few yards from the glass, and then he would start the horn and listen "
    "to it answer itself from the cliffs. In winter the storms came one after another. Waves broke over the rocks "
    "and spray reached the windows of the lamp room, and the tower hummed in the wind like a plucked string. Still "
    "the light turned, once every ten seconds, as it had for a hundred years, and the ships far out at sea counted "
    "the flashes and knew where they were. When spring came he painted the railings, mended the boat, and planted "
    "beans in the small walled garden behind the cottage, where the wind could not reach them."
)


def perplexity(bin_dir, gguf, text_file, *args, vlen):
    proc = run(
        bin_dir, "llama-perplexity", "-m", gguf, "-f", text_file, "-c", N_CTX, "-b", N_CTX, "--chunks", N_CHUNKS,
        "-t", 2, *args, vlen=vlen,
    )  # fmt: skip
    assert proc.returncode == 0, explain(proc)
    return proc


# a row of llama-perplexity --kl-divergence's per-chunk table: chunk, PPL, ln(PPL(Q)/PPL(base)), KL divergence, Δp RMS,
# same top p; each column the running value over every position scored so far, "value ± uncertainty". Its summary
# ("Mean KLD: ...") is printed only from 100 scored positions on, which would double the emulated work.
CHUNK_ROW = re.compile(
    r"^\s*(\d+)\s+\S+\s+±\s+\S+\s+\S+\s+±\s+\S+\s+([-0-9.e]+)\s+±\s+\S+\s+\S+\s+±\s+\S+\s+%\s+([0-9.]+)\s+±\s+\S+\s+%\s*$",
    re.M,
)


def kld_stats(proc) -> tuple[float, float]:
    """(mean KLD, same-top-token %) over every scored position: the last row of the per-chunk table."""
    rows = CHUNK_ROW.findall(proc.stdout + proc.stderr)
    assert len(rows) == N_CHUNKS, explain(proc)
    _, mean, same = rows[-1]
    return float(mean), float(same)


@pytest.fixture(scope="module")
def base_logits(scalar_bin, demo_gguf, tmp_path_factory):
    """outtype -> the scalar build's logits file for that GGUF (llama-perplexity --kl-divergence-base)."""
    folder = tmp_path_factory.mktemp("kld")
    text_file = folder / "text.txt"
    text_file.write_text(TEXT)
    done = {}

    def get(outtype: str):
        if outtype not in done:
            base = folder / f"base-{outtype}.kld"
            perplexity(scalar_bin, demo_gguf(outtype)[0], text_file, "--kl-divergence-base", base, vlen=None)
            done[outtype] = base
        return done[outtype], text_file

    return get


@pytest.mark.parametrize("outtype", ["q4_0", "q8_0", "q4_k_m", "q6_k"])
def test_rvv_matches_scalar(rvv_bin, demo_gguf, base_logits, outtype):
    base, text_file = base_logits(outtype)
    proc = perplexity(
        rvv_bin, demo_gguf(outtype)[0], text_file, "--kl-divergence-base", base, "--kl-divergence", vlen=128
    )
    mean, same = kld_stats(proc)
    print(f"{outtype}: mean KLD {mean:.5f}, same top {same:.2f} %")
    assert mean < KLD_RULE, f"{outtype}: RVV vs scalar mean KLD {mean} >= {KLD_RULE} (same top {same} %)"
    assert same >= SAME_TOP_RULE, f"{outtype}: RVV vs scalar same top {same} % < {SAME_TOP_RULE} % (mean KLD {mean})"


def test_control_quantization_change_exceeds_the_rule(rvv_bin, demo_gguf, base_logits):
    base, text_file = base_logits("q8_0")
    proc = perplexity(
        rvv_bin, demo_gguf("q4_0")[0], text_file, "--kl-divergence-base", base, "--kl-divergence", vlen=128
    )
    mean, same = kld_stats(proc)
    print(f"control Q4_0 (RVV) vs Q8_0 (scalar): mean KLD {mean:.5f}, same top {same:.2f} %")
    assert mean > KLD_RULE, f"Q4_0 vs Q8_0 mean KLD {mean} does not exceed {KLD_RULE}: the rule separates nothing"
