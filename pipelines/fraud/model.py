"""The fraud model: a small multilayer perceptron over the preprocessed features.

Standard layers only (``Linear``, ``ReLU``), so its weights are plain tensors
that a safetensors file describes completely and any torch version can load.
With ``hidden=()`` it is a logistic regression, the lighter fallback model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MAX_HIDDEN_LAYERS", "MAX_LAYER_WIDTH", "FraudMLP"]

#: Limits on an architecture, so that a manifest cannot ask for absurd allocations.
MAX_HIDDEN_LAYERS = 8
MAX_LAYER_WIDTH = 4096


class FraudMLP(nn.Module):
    """``Linear -> ReLU`` per hidden width, then a ``Linear`` to one logit per row."""

    def __init__(self, n_inputs: int, hidden: Sequence[int] = (64, 32)) -> None:
        super().__init__()
        widths = tuple(int(h) for h in hidden)
        if not 1 <= n_inputs <= 1_000_000:
            raise ValueError(f"n_inputs must be between 1 and 1000000, got {n_inputs}")
        if len(widths) > MAX_HIDDEN_LAYERS or any(not 1 <= h <= MAX_LAYER_WIDTH for h in widths):
            raise ValueError(
                f"hidden must be at most {MAX_HIDDEN_LAYERS} widths between 1 and "
                f"{MAX_LAYER_WIDTH}, got {list(widths)}"
            )
        self.n_inputs = n_inputs
        self.hidden = widths
        layers: list[nn.Module] = []
        width = n_inputs
        for h in widths:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``[n]`` for inputs of shape ``[n, n_inputs]``."""
        logits: torch.Tensor = self.net(x)
        return logits.squeeze(-1)
