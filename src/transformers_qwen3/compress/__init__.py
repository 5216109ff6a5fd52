"""Dynamic parameter compression (issue 11): measure a model's own sensitivities once (``calibrate``), then fit it to
a byte budget (``plan``) with per-tensor types, per-layer FFN widths and skipped layers. The hardware probe
(``hw``) gives the budget ``auto`` uses. docs/compression.md describes the method and its measurements."""
