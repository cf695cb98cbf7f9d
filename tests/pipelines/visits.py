"""A pipeline declared only here, as a user would in their own repository: site visits.

The tests run it through ``pipeline features``, ``pipeline check`` and a worker,
with models exported in the tests themselves.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, Field

from streams.pipeline import Batch, Count, Max, Mean, Pipeline, SincePrevious, Tensor, Window


class Visit(BaseModel):
    user: str = Field(min_length=1)
    visit_id: str = Field(min_length=1)
    ts: float
    seconds: float = Field(ge=0)
    pages: int = Field(ge=1)
    device: Literal["web", "app"]
    referrer: str | None = None


WINDOW = 4


def features(batch: Batch) -> dict[str, np.ndarray]:
    """Aggregates (log-scaled, NaN imputed as 0) and the last visits as a sequence."""
    s = batch.state
    aggregates = np.stack(
        [
            np.log1p(s["visits"]),
            np.log1p(np.nan_to_num(s["mean_seconds"])),
            np.log1p(np.nan_to_num(s["longest"], nan=0.0)),
            np.log1p(np.nan_to_num(s["gap"], nan=0.0)),
            (batch["device"] == "app").astype(np.float64),
            np.log1p(batch["seconds"]),
        ],
        axis=1,
    )
    assert batch.window is not None
    return {"aggregates": aggregates, "recent": np.log1p(batch.window)}


class VisitNet(torch.nn.Module):
    """A small net over both inputs; ends in a sigmoid, as every pipeline model does."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.hidden = hidden
        self.recent = torch.nn.Linear(WINDOW * 2, hidden)
        self.out = torch.nn.Linear(hidden + 6, 1)

    def forward(self, aggregates: torch.Tensor, recent: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.recent(recent.flatten(1)))
        return torch.sigmoid(self.out(torch.cat([h, aggregates], dim=1))).squeeze(1)


pipeline = Pipeline(
    name="visits",
    event=Visit,
    key="user",
    event_id="visit_id",
    time="ts",
    state={
        "visits": Count(),
        "mean_seconds": Mean("seconds"),
        "longest": Max("seconds"),
        "gap": SincePrevious(),
    },
    window=Window(WINDOW, fields=("seconds", "pages")),
    features=features,
    inputs={"aggregates": Tensor("float32", (6,)), "recent": Tensor("float32", (WINDOW, 2))},
    architectures={"VisitNet": VisitNet},
)
