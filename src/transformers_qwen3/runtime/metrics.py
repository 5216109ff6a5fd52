"""How close two runtimes' logits are: the one home of the numbers ``verify`` checks and ``bench_quality`` reports.

All in float64 over [positions, vocab] arrays (the reference first):

- ``rel_err``: Frobenius norm of the difference over the reference's norm;
- ``max_abs_diff``;
- ``top1_agreement``: the fraction of positions where both argmaxes agree;
- ``kl_mean`` / ``kl_max``: KL(reference ‖ other) per position over the whole vocabulary, in nats (the reference's
  distribution first, as llama.cpp's ``llama-perplexity --kl-divergence`` reports it).
"""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def kl_divergence(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) ‖ softmax(got)) per row, nats."""
    log_p, log_q = log_softmax(ref), log_softmax(got)
    return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


def compare_logits(ref: np.ndarray | list[np.ndarray], got: np.ndarray | list[np.ndarray]) -> dict:
    """The metrics above for two logit arrays [positions, vocab] (or lists of them, concatenated in order)."""
    r = np.concatenate(ref) if isinstance(ref, list) else np.asarray(ref)
    g = np.concatenate(got) if isinstance(got, list) else np.asarray(got)
    r, g = r.astype(np.float64), g.astype(np.float64)
    if r.shape != g.shape:
        raise ValueError(f"logits of different shapes: {r.shape} and {g.shape}")
    kl = kl_divergence(r, g)
    return {
        "rel_err": float(np.linalg.norm(g - r) / np.linalg.norm(r)),
        "max_abs_diff": float(np.max(np.abs(g - r))),
        "top1_agreement": float(np.mean(r.argmax(-1) == g.argmax(-1))),
        "kl_mean": float(np.mean(kl)),
        "kl_max": float(np.max(kl)),
        "positions": int(r.shape[0]),
    }
