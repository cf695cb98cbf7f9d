"""The purchases models: a GRU over the customer's last purchases plus aggregates, and
the two baselines it is measured against (the same network without the sequence,
and a logistic regression on recency, frequency and monetary value)."""

from __future__ import annotations

import torch
from torch import nn

from pipelines.purchases.features import AGGREGATES, SLOT_FEATURES

__all__ = ["PurchasesNet", "RFMLogistic"]


class PurchasesNet(nn.Module):
    """P(buys again within 90 days) from ``sequence`` ``[n, WINDOW, 4]`` and
    ``aggregates`` ``[n, 9]``; with ``sequence=False`` the sequence is ignored."""

    def __init__(self, hidden: int = 16, width: int = 32, sequence: bool = True) -> None:
        super().__init__()
        self.uses_sequence = sequence
        self.gru = nn.GRU(SLOT_FEATURES, hidden, batch_first=True) if sequence else None
        inputs = len(AGGREGATES) + (hidden if sequence else 0)
        self.head = nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, 1))
        # Standardisation of the aggregates, fitted on the training split (see train.py).
        self.mean: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("mean", torch.zeros(len(AGGREGATES)))
        self.register_buffer("scale", torch.ones(len(AGGREGATES)))

    def forward(self, sequence: torch.Tensor, aggregates: torch.Tensor) -> torch.Tensor:
        parts = [(aggregates - self.mean) / self.scale]
        if self.gru is not None:
            # The window is most recent last: the final step's state summarises it.
            _, state = self.gru(sequence)
            parts.append(state[-1])
        out: torch.Tensor = torch.sigmoid(self.head(torch.cat(parts, dim=1))).squeeze(1)
        return out


class RFMLogistic(nn.Module):
    """Logistic regression on recency, frequency and monetary value (and "no history")."""

    COLUMNS = (0, 1, 3, 4)  # log count, log mean spend, log days since previous, no history

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(len(self.COLUMNS), 1)
        self.mean: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("mean", torch.zeros(len(self.COLUMNS)))
        self.register_buffer("scale", torch.ones(len(self.COLUMNS)))

    def forward(self, sequence: torch.Tensor, aggregates: torch.Tensor) -> torch.Tensor:
        x = (aggregates[:, list(self.COLUMNS)] - self.mean) / self.scale
        out: torch.Tensor = torch.sigmoid(self.linear(x)).squeeze(1)
        return out
