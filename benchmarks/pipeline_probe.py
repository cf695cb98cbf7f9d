"""CPU per event of a declared pipeline's stages, and its model batched against one at a time.

    python -m benchmarks.pipeline_probe --pipeline purchases --events 20000

Without Kafka: the pipeline's declared sample (for ``purchases``, the CDNOW log
by date) go through the stages a worker runs, chunk by chunk, each timed apart
and reported as the best of ``--repeats`` runs, in microseconds per event:

- validation (:meth:`EventSchema.validate`, one pydantic call per record),
- features (:func:`streams.pipeline.stage.featurize`: one state read per distinct
  entity, the walk, the feature function, the state encoded for the write back),
- the model, batched (``--batch`` events per call) and one event per call,
  giving the ratio the issue asks for (batched at least 10x one at a time on CPU).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from models.registry import resolve
from streams.pipeline import Pipeline, load_pipeline
from streams.pipeline.events import Invalid
from streams.pipeline.models import load_model
from streams.pipeline.stage import featurize

CHUNK = 1024


def _events(pipeline: Pipeline, n: int) -> list[bytes]:
    if pipeline.sample is None:
        raise SystemExit(f"pipeline {pipeline.name!r} declares no sample for the probe")
    return list(pipeline.sample()[:n])


def _best(repeats: int, run: Callable[[], Any]) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def probe(ref: str, n_events: int, batch: int, repeats: int, threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    pipeline = load_pipeline(ref)
    lines = _events(pipeline, n_events)
    n = len(lines)
    schema = pipeline.schema

    def validate() -> list[Any]:
        return [schema.validate(None, line) for line in lines]

    events = validate()
    assert not any(isinstance(e, Invalid) for e in events)
    offsets = np.arange(n, dtype=np.int64)
    stamps = np.zeros(n)
    table: dict[str, bytes] = {}

    def features() -> list[dict[str, np.ndarray]]:
        table.clear()
        out = []
        for start in range(0, n, CHUNK):
            part = slice(start, start + CHUNK)
            done = featurize(
                pipeline, events[part], offsets[part], stamps[part],
                lambda keys: [table.get(k) for k in keys],
            )  # fmt: skip
            table.update(zip(done.entities, done.writes, strict=True))
            out.append(done.inputs)
        return out

    chunks = features()
    inputs = {k: np.concatenate([c[k] for c in chunks]) for k in pipeline.inputs}
    assert pipeline.model is not None
    model = load_model(pipeline, resolve(pipeline.model))
    single = min(n, 2_000)

    def batched() -> None:
        for start in range(0, n, batch):
            model.predict({k: v[start : start + batch] for k, v in inputs.items()})

    def one_at_a_time() -> None:
        for row in range(single):
            model.predict({k: v[row : row + 1] for k, v in inputs.items()})

    micro = 1e6
    results = {
        "events": float(n),
        "batch": float(batch),
        "repeats": float(repeats),
        "validate_us": _best(repeats, validate) / n * micro,
        "features_us": _best(repeats, features) / n * micro,
        "model_batched_us": _best(repeats, batched) / n * micro,
        "model_single_us": _best(repeats, one_at_a_time) / single * micro,
    }
    results["batched_speedup"] = results["model_single_us"] / results["model_batched_us"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", default="purchases")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker's: 1)")
    args = parser.parse_args()
    results = probe(args.pipeline, args.events, args.batch, args.repeats, args.threads)
    print(f"pipeline {args.pipeline}: {int(results['events'])} events, batch {args.batch}")
    for name in ("validate_us", "features_us", "model_batched_us", "model_single_us"):
        print(f"  {name:<18} {results[name]:8.2f} us/event")
    print(f"  batched / one at a time: {results['batched_speedup']:.1f}x")


if __name__ == "__main__":
    main()
