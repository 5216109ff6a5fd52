"""Nested (MatFormer-style) FFN training: every step runs the decoder's FFNs at one width prefix, sampled per step.

A width ``w`` keeps the first ``w`` neurons of each layer's FFN: rows ``[:w]`` of ``gate_proj``/``up_proj`` and
columns ``[:, :w]`` of ``down_proj``, exactly what the elastic-width runtimes slice (llama.cpp's
``Llama(ffn_width=...)``, a checkpoint cut to ``intermediate_size=w``). Training with the width sampled uniformly
among a few prefixes each step (the full width among them) teaches the leading neurons to work alone, so a model
cut to a narrower width afterwards loses less (MatFormer, Devvrit et al. 2023; Gemma 3n's elastic FFN). Start from an
importance-ordered model (``compress`` permutes the neurons most-important-first) so the prefixes are the neurons
that matter.

``NestedFFN(model, widths)`` patches the MLPs' ``forward`` (the weights stay whole: gradients reach only the prefix
in use); ``sample()`` picks the next width, ``set(w)`` fixes one, ``close()`` restores the original forwards. The
patched forward at the full width is the original one.
"""

from __future__ import annotations

import random

import torch.nn.functional as F  # noqa: N812 (torch's own convention)

from ..errors import UserError


class NestedFFNError(UserError, ValueError):
    """Widths that do not fit the model's FFNs."""


def _mlps(model) -> list:
    """Every decoder layer's MLP (modules with gate_proj, up_proj, down_proj and act_fn), towers left out."""
    found = []
    for name, module in model.named_modules():
        if any(t in name for t in ("visual", "audio")):
            continue
        if all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            found.append(module)
    return found


class NestedFFN:
    def __init__(self, model, widths: list[int], seed: int = 0):
        self.mlps = _mlps(model)
        if not self.mlps:
            raise NestedFFNError("--nested-ffn: the model has no decoder MLPs (gate_proj/up_proj/down_proj)")
        fulls = {m.gate_proj.weight.shape[0] for m in self.mlps}
        if len(fulls) != 1:
            raise NestedFFNError(f"--nested-ffn: the layers' FFN widths differ ({sorted(fulls)}); train one width")
        self.full = fulls.pop()
        bad = [w for w in widths if not 0 < w <= self.full]
        if bad or not widths:
            raise NestedFFNError(f"--nested-ffn {widths}: each width must be in 1..{self.full} (the FFN width)")
        self.widths = sorted(set(widths) | {self.full})
        self.width = self.full
        self.draws = dict.fromkeys(self.widths, 0)  # steps trained at each width (finetune.json)
        self._rng = random.Random(seed)
        self._originals = []
        for mlp in self.mlps:
            self._originals.append((mlp, mlp.forward))
            mlp.forward = self._forward(mlp, mlp.forward)

    def _forward(self, mlp, original):
        def forward(x):
            w = self.width
            if w >= self.full:
                return original(x)
            gate, up, down = mlp.gate_proj, mlp.up_proj, mlp.down_proj
            g = F.linear(x, gate.weight[:w], None if gate.bias is None else gate.bias[:w])
            u = F.linear(x, up.weight[:w], None if up.bias is None else up.bias[:w])
            return F.linear(mlp.act_fn(g) * u, down.weight[:, :w], down.bias)

        return forward

    def sample(self) -> int:
        """The width for the next step, uniform among ``widths`` (MatFormer's sampling)."""
        self.width = self._rng.choice(self.widths)
        self.draws[self.width] += 1
        return self.width

    def set(self, width: int) -> None:
        if width not in self.widths:
            raise NestedFFNError(f"width {width} is not one of the nested widths {self.widths}")
        self.width = width

    def close(self) -> None:
        for mlp, original in self._originals:
            mlp.forward = original
        self._originals = []
        self.width = self.full

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def NestedFFNCallback(nested: NestedFFN):  # noqa: N802 (a class built on demand: transformers loads lazily)
    """A transformers TrainerCallback drawing the next width at the start of every optimizer step."""
    from transformers import TrainerCallback

    class _Callback(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            nested.sample()

    return _Callback()
