"""A record the Kafka client cannot decode is a dead letter, not a crash loop."""

from __future__ import annotations

import os
import shutil
import subprocess

import orjson
import pytest

from schemas import deadletter
from tests.integration.conftest import Deployment, _librdkafka_dirs, event_record

EVENT = {
    "event_id": "poison", "entity_id": "acct-7", "ts": 1.0, "amount": 5.0, "currency": "EUR",
    "merchant": "m", "country": "DE", "channel": "web",
}  # fmt: skip


def produce_with_raw_header(deployment: Deployment, header_name: bytes) -> None:
    """kcat, to produce a header name no Python client would (it is not UTF-8)."""
    link_dir, libs = _librdkafka_dirs()
    binary = shutil.which("kcat")
    assert binary is not None
    result = subprocess.run(
        [binary.encode(), b"-P", b"-b", deployment.bootstrap.encode(),
         b"-t", deployment.topics["events"].encode(), b"-p", b"0", b"-k", b"acct-7",
         b"-H", header_name + b"=value"],
        input=orjson.dumps(EVENT), env={**os.environ, "LD_LIBRARY_PATH": f"{link_dir}:{libs}"},
        capture_output=True, check=False, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.mark.broker
def test_a_header_name_that_is_not_utf8_is_dead_lettered_and_the_stream_goes_on(
    deployment: Deployment,
) -> None:
    worker = deployment.worker()
    worker.wait_ready()
    before = [
        event_record({**EVENT, "event_id": f"b-{i}", "entity_id": f"acct-{i % 9}"})
        for i in range(200)
    ]
    after = [
        event_record({**EVENT, "event_id": f"a-{i}", "entity_id": f"acct-{i % 9}"})
        for i in range(200)
    ]
    deployment.publish("events", before)
    produce_with_raw_header(deployment, b"\xff\xfe")
    deployment.publish("events", after)

    reader = deployment.reader()
    out = reader.until(lambda o: len(o.scores) >= 400 and len(o.dead) >= 1, 60)
    reader.poll(1.0)
    reader.close()
    assert {v["event_id"] for _, v in out.scores} == {f"{p}-{i}" for p in "ba" for i in range(200)}
    assert len(out.scores) == 400
    [letter] = out.dead
    headers = dict(letter.headers() or [])
    assert headers[deadletter.STAGE] == b"decode"
    assert headers[deadletter.ERROR_CLASS] == b"UnicodeDecodeError"
    assert b"headers are left out" in headers[deadletter.ERROR_MESSAGE]
    assert (letter.key(), letter.value()) == (b"acct-7", orjson.dumps(EVENT))
    assert headers[deadletter.SOURCE_PARTITION] == b"0"
    assert worker.get("/health/ready")[0] == 200
    assert worker.returncode is None
