"""Two workers in one group: a member joins mid-stream and leaves again."""

from __future__ import annotations

import time
from collections import defaultdict

import orjson
import pytest

from pipelines.fraud.synthetic import SyntheticWorld
from streams.harness import metric_value
from tests.integration.conftest import Deployment, PacedPublisher, event_record
from tests.integration.test_restart import assert_history_counts, expected_counts


@pytest.mark.broker
def test_partitions_move_to_a_new_member_and_back_without_loss_or_disorder(
    deployment: Deployment,
) -> None:
    world = SyntheticWorld(seed=61, n_entities=300)
    first = deployment.worker("w1")
    first.wait_ready()
    publisher = PacedPublisher(  # flows through both handovers
        deployment, lambda: [event_record(item.event) for item in world.events(5_000)]
    )
    reader = deployment.reader()
    reader.until(lambda o: len(o.scores) >= 2000, 60)

    second = deployment.worker("w2")  # joins mid-stream: the group rebalances
    second.wait_ready()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        scored = metric_value(second.metrics(), "streamscore_events_total", {"outcome": "scored"})
        if scored > 0:
            break
        reader.poll(0.2)
    assert scored > 0, "the second member never got partitions"
    assert second.terminate() == 0  # leaves: its partitions go back to the first
    mark = publisher.published
    reader.until(lambda o: len(o.scored_ids()) >= mark + 1000, 60)  # flowing again
    records = publisher.stop()
    ids = {orjson.loads(r.value)["event_id"] for r in records}  # type: ignore[arg-type]
    out = reader.until(lambda o: o.scored_ids() >= ids, 120)
    reader.close()

    assert out.scored_ids() == ids  # nothing lost
    first_offsets: dict[bytes, list[int]] = defaultdict(list)
    sources: dict[str, tuple[int, int]] = {}
    for message, value in out.scores:
        source = (value["source"]["partition"], value["source"]["offset"])
        if value["event_id"] in sources:
            assert sources[value["event_id"]] == source  # a duplicate names the same event
            continue
        sources[value["event_id"]] = source
        first_offsets[message.key()].append(source[1])
    for key, offsets in first_offsets.items():
        assert offsets == sorted(offsets), key
    duplicates = len(out.scores) - len(out.scored_ids())
    assert duplicates == 0  # both handovers drained and committed before letting go
    # The tables followed their partitions to the new member and back: counts are exact.
    assert_history_counts(deployment, expected_counts(records))
    assert first.terminate() == 0
