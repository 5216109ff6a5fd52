"""Applying a plan's structure (FFN neurons in importance order, per-layer widths, skipped layers): one home for
both runtimes. Stub: the implementation lands next (issue 11, item 4)."""

from __future__ import annotations


def apply_structure(model, plan: dict):
    """The compressed model (in memory): FFN neurons permuted by importance and cut to the plan's widths, skipped
    layers dropped and the rest renumbered, the config updated. Returns the new model."""
    raise NotImplementedError("apply_structure: being written (issue 11, item 4)")


def save_compressed(model, plan: dict, out_dir, *, force: bool = False):
    """Write the compressed model as an ordinary checkpoint folder (loads with trust_remote_code=True)."""
    raise NotImplementedError("save_compressed: being written (issue 11, item 4)")
