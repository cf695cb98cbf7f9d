"""``purchases``: will a customer buy again within 90 days? Scored at each purchase.

The real CDNOW purchase log (:mod:`pipelines.purchases.data`), a GRU over the
customer's last ten purchases plus aggregates (:mod:`pipelines.purchases.model`),
trained with a split by time (:mod:`pipelines.purchases.train`). Declared with
the public API only, as a team's own pipeline would be.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from pipelines.purchases.features import AGGREGATES, DAY, SLOT_FEATURES, WINDOW, features
from pipelines.purchases.model import PurchasesNet, RFMLogistic
from streams.pipeline import (
    Count,
    Last,
    Max,
    Mean,
    Min,
    Pipeline,
    SincePrevious,
    Sum,
    Tensor,
    Window,
)


class Purchase(BaseModel):
    """One purchase; the record key is ``customer``."""

    customer: str = Field(min_length=1)
    purchase_id: str = Field(min_length=1)
    ts: float  # epoch seconds
    cds: int = Field(ge=0)
    dollars: float = Field(ge=0)


def train(output: Path, seed: int) -> dict[str, float]:
    """``streamscore train --pipeline purchases``: see :mod:`pipelines.purchases.train`."""
    from pipelines.purchases.train import train as run

    return run(output, seed=seed)


def sample() -> list[bytes]:
    """``streamscore demo --pipeline purchases``: the whole CDNOW log, by date."""
    from pipelines.purchases.data import events_jsonl, fetch, read_log

    return events_jsonl(read_log(fetch()))


pipeline = Pipeline(
    name="purchases",
    description="P(the customer buys again within 90 days), at each purchase (CDNOW)",
    event=Purchase,
    key="customer",
    event_id="purchase_id",
    time="ts",
    state={
        "purchases": Count(),
        "recent_purchases": Count(half_life=90 * DAY),
        "spend": Sum("dollars"),
        "mean_dollars": Mean("dollars"),
        "largest": Max("dollars"),
        "first": Min("ts"),
        "last_cds": Last("cds"),
        "gap": SincePrevious(),
    },
    window=Window(WINDOW, fields=("dollars", "cds", "ts")),
    features=features,
    inputs={
        "sequence": Tensor("float32", (WINDOW, SLOT_FEATURES)),
        "aggregates": Tensor("float32", (len(AGGREGATES),)),
    },
    model="purchases-gru:1",
    architectures={"PurchasesNet": PurchasesNet, "RFMLogistic": RFMLogistic},
    trainer=train,
    sample=sample,
)

__all__ = ["Purchase", "pipeline"]
