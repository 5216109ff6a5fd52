"""Dynamic parameter compression (issue 11): measure a model's own sensitivities once (``calibrate``), then fit it to
a byte budget (``plan``) with per-tensor types, per-layer FFN widths and skipped layers. The hardware probe
(``hw``) gives the budget ``auto`` uses. docs/compression.md describes the method and its measurements."""


def __getattr__(name):
    # ``compress(model, plan)``: a plan applied in transformers (compress/torch_types.py), imported on first use so
    # the CLI's other verbs do not load transformers' quantizers.
    if name in ("compress", "write_budget_plans"):
        from . import torch_types

        return getattr(torch_types, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
