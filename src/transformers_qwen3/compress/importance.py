"""FFN neurons in importance order, and the compressed shapes that order makes meaningful.

A Qwen3 MLP is ``down(act(gate(x)) * up(x))``: neuron i is row i of ``gate_proj`` and ``up_proj`` and column i of
``down_proj``. Permuting all three the same way changes nothing the model computes (the down projection's sum runs
over the neurons in another order; see the tests for how exact that is), and after sorting by importance "keep the
first w neurons" keeps the w most important ones, so a layer's width can be cut by slicing, in transformers and in
llama.cpp alike (views of leading rows / columns).

A neuron's importance is its expected squared contribution to the layer output: E[h_i^2] · ||down_proj[:, i]||^2,
with h the down projection's input. E[h_i^2] is exactly down_proj's importance-matrix entry, so the calibration
gets it for free.
"""

from __future__ import annotations

import torch
from torch import nn


def decoder_layers(model) -> nn.ModuleList:
    """The Qwen3 decoder layers of our model (``model.model.layers``) or of a native Qwen3ForCausalLM."""
    base = model.model if hasattr(model, "model") else model
    return base.layers


def text_config(model):
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def neuron_scores(mlp: nn.Module, down_input_sq_mean: torch.Tensor) -> torch.Tensor:
    """Importance of each neuron of ``mlp``: E[h_i^2] · ||down_proj[:, i]||^2 (float64)."""
    col_norm_sq = mlp.down_proj.weight.detach().double().pow(2).sum(dim=0)  # [intermediate]
    return down_input_sq_mean.double() * col_norm_sq


def importance_order(scores: torch.Tensor) -> torch.Tensor:
    """Neuron indices, most important first (ties keep their original order: a stable sort)."""
    return torch.sort(scores, descending=True, stable=True).indices


@torch.no_grad()
def permute_ffn(model, orders: list[torch.Tensor]) -> None:
    """Reorder every layer's FFN neurons in place: new neuron j is old neuron ``orders[layer][j]``."""
    for layer, order in zip(decoder_layers(model), orders, strict=True):
        mlp = layer.mlp
        mlp.gate_proj.weight.copy_(mlp.gate_proj.weight[order])
        mlp.up_proj.weight.copy_(mlp.up_proj.weight[order])
        mlp.down_proj.weight.copy_(mlp.down_proj.weight[:, order])


def slice_mlp(mlp: nn.Module, width: int) -> None:
    """Keep the first ``width`` neurons of ``mlp`` (in place: new, smaller parameters)."""
    for name in ("gate_proj", "up_proj"):
        linear = getattr(mlp, name)
        linear.weight = nn.Parameter(linear.weight.detach()[:width].clone(), requires_grad=linear.weight.requires_grad)
        linear.out_features = width
    down = mlp.down_proj
    down.weight = nn.Parameter(down.weight.detach()[:, :width].clone(), requires_grad=down.weight.requires_grad)
    down.in_features = width
    mlp.intermediate_size = width
