"""CPU per event of the hot path's own stages (decode, features, scores' JSON), without Kafka.

    python -m benchmarks.stage_probe --chunk 512 --malformed-share 0.005

Builds chunks of the bench's synthetic input (its events, with the same share
of its malformed records spread through them, 8 partitions, 1,000 keys),
then times the fraud pipeline's validation
(:func:`streams.scoring.declared.validate_records`) on a clean chunk and on one
with malformed records, its whole intake
(:meth:`streams.scoring.declared.DeclaredIntake.prepare`: validation, state and
features, with profiles and histories in memory, as if cached), and the
writing of the scores as JSON (:class:`schemas.scores.ScoreBatch`). It prints
the best time per record of ``--repeats`` timings: steady on a shared machine,
where a whole drain's rate moves by a fifth from one minute to the next.
"""

from __future__ import annotations

import argparse
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.preload import InputStream, Workload
from pipelines.fraud import pipeline as fraud
from schemas.scores import ScoreBatch, ScoreEncoder
from streams.kafka.emit import Outgoing
from streams.scoring.declared import DeclaredIntake, validate_records
from streams.scoring.decode import Decoded, Record

PARTITIONS = 8


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    """A consumed record, as the decoder sees one."""

    key: bytes | None
    value: bytes | None
    offset: int
    topic: str = "events"
    partition: int = 0
    timestamp: int | None = 0
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class MemoryState:
    """A table in memory, with :class:`streams.kafka.tables.TableState`'s bulk interface."""

    changelog_topic = "probe-changelog"

    def __init__(self, values: Mapping[tuple[int, bytes], bytes] | None = None) -> None:
        self.values: dict[tuple[int, bytes], bytes] = dict(values or {})

    def get_many(self, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        return [self.values.get((partition, key)) for key in keys]

    def put_many(self, partition: int, items: Mapping[bytes, bytes]) -> list[Outgoing]:
        for key, value in items.items():
            self.values[(partition, key)] = value
        topic = self.changelog_topic
        return [Outgoing(topic, key, value, None, partition) for key, value in items.items()]


def chunk(size: int, malformed_share: float, seed: int = 11) -> list[ProbeRecord]:
    """``size`` records of the bench's input (``malformed_share`` of them malformed)."""
    workload = Workload(size, 1_000, PARTITIONS, 0, malformed_share, seed)
    records = InputStream(workload).backlog()
    return [
        ProbeRecord(r.key, r.value, offset, partition=zlib.crc32(r.key) % PARTITIONS)
        for offset, r in enumerate(records)
    ]


def decode_events(records: Sequence[Record]) -> Decoded[Any]:
    """The fraud pipeline's validation of a chunk, as the worker's intake runs it."""
    return validate_records(fraud.schema, records)


def feature_stage(seed: int = 11) -> DeclaredIntake:
    """The fraud pipeline's intake over in-memory tables holding the bench's profiles."""
    stream = InputStream(Workload(1, 1_000, PARTITIONS, 0, 0.0, seed))
    profiles = {(zlib.crc32(key) % PARTITIONS, key): value for key, value in stream.profiles()}
    return DeclaredIntake(fraud, MemoryState(profiles), MemoryState())  # type: ignore[arg-type]


def microseconds_per_record(
    records: Sequence[Any], repeats: int, loops: int, step: Callable[[], object] | None = None
) -> float:
    """Best of ``repeats`` timings of ``loops`` runs of ``step`` (a decode), per record."""
    run = step or (lambda: decode_events(records))
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            run()
        best = min(best, (time.perf_counter() - start) / loops)
    return best / len(records) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=512, help="records per chunk")
    parser.add_argument("--malformed-share", type=float, default=0.005)
    parser.add_argument("--repeats", type=int, default=30, help="timings; the best is shown")
    parser.add_argument("--loops", type=int, default=20, help="decodes per timing")
    args = parser.parse_args()
    for share in (0.0, args.malformed_share):
        records = chunk(args.chunk, share)
        decoded = decode_events(records)
        cost = microseconds_per_record(records, args.repeats, args.loops)
        print(
            f"decode, chunk of {len(records)} with {len(decoded.dead)} malformed: "
            f"{cost:.2f} µs per record"
        )
    stage = feature_stage()
    events = decoded.items
    # Fresh offsets for every run (a repeated one would be a redelivery), made beforehand.
    runs = args.repeats * args.loops + 1
    chunks = iter([_shifted(decoded.records, run * (len(records) + 1)) for run in range(runs)])

    def prepare() -> object:
        return stage.prepare(next(chunks))

    cost = microseconds_per_record(events, args.repeats, args.loops, prepare)
    print(f"validation, state and features, {len(events)} events: {cost:.2f} µs per event")
    cost = microseconds_per_record(
        events, args.repeats, args.loops, lambda: encode_scores(decoded.records, events)
    )
    print(f"scores written as JSON, {len(events)} events: {cost:.2f} µs per score")


def encode_scores(records: Sequence[Record], events: Sequence[Any]) -> list[bytes]:
    """What emitting a batch costs before the producer: one score's JSON per event."""
    encoder = ScoreEncoder("fraud-mlp", "1", False, "primary")
    batch = ScoreBatch()
    add = batch.add
    for record, event in zip(records, events, strict=True):
        add(encoder, event.event_id, event.entity_id, 0.0123, event.ts, 1.7e9,
            record.topic, record.partition, record.offset)  # fmt: skip
    return batch.encode()


def _shifted(records: Sequence[Record], shift: int) -> list[ProbeRecord]:
    return [ProbeRecord(r.key, r.value, r.offset + shift, partition=r.partition) for r in records]


if __name__ == "__main__":
    main()
