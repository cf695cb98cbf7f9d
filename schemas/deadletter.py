"""Dead letters: the original record, byte for byte, plus headers that say why.

Original headers come first and ours are appended, so a reader taking the
last header of a name (Kafka's ``lastHeader``) sees this dead letter's reason
even when the record had been dead-lettered and replayed before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Stage = Literal["decode", "validate", "features", "model", "emit"]
STAGES: tuple[Stage, ...] = ("decode", "validate", "features", "model", "emit")

STAGE = "dlq.stage"
ERROR_CLASS = "dlq.error.class"
ERROR_MESSAGE = "dlq.error.message"
SOURCE_TOPIC = "dlq.source.topic"
SOURCE_PARTITION = "dlq.source.partition"
SOURCE_OFFSET = "dlq.source.offset"
SOURCE_TIMESTAMP = "dlq.source.timestamp"
APP = "dlq.app"
PREFIX = "dlq."
# Only on a dead letter that had to be cut to fit the DLQ topic (see streams.scoring.deadletters).
VALUE_BYTES = "dlq.value.bytes"  # the original value's length
VALUE_SHA256 = "dlq.value.sha256"  # hex SHA-256 of the original value
KEY_BYTES = "dlq.key.bytes"  # the original key's length, where the key was cut too
KEY_SHA256 = "dlq.key.sha256"
HEADERS_DROPPED = "dlq.headers.dropped"  # how many of the record's own headers were left out
HEADER_NAMES: tuple[str, ...] = (
    STAGE,
    ERROR_CLASS,
    ERROR_MESSAGE,
    SOURCE_TOPIC,
    SOURCE_PARTITION,
    SOURCE_OFFSET,
    SOURCE_TIMESTAMP,
    APP,
)

#: ``dlq.error.message`` is cut to this many bytes of UTF-8.
MAX_MESSAGE_BYTES = 1024

Headers = Sequence[tuple[str, bytes | None]]


def truncate_utf8(text: str, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    """Encode ``text`` and cut it to ``limit`` bytes without splitting a character."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", errors="ignore").encode("utf-8")


def dead_letter_headers(
    original: Headers | None,
    *,
    stage: Stage,
    error_class: str,
    message: str,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    app_id: str,
) -> list[tuple[str, str | bytes | None]]:
    """The headers of a dead letter: the original ones, then the contract's ``dlq.*``."""
    headers: list[tuple[str, str | bytes | None]] = list(original or ())
    headers += [
        (STAGE, stage.encode()),
        (ERROR_CLASS, error_class.encode("utf-8", errors="replace")),
        (ERROR_MESSAGE, truncate_utf8(message)),
        (SOURCE_TOPIC, topic.encode()),
        (SOURCE_PARTITION, str(partition).encode()),
        (SOURCE_OFFSET, str(offset).encode()),
        (SOURCE_TIMESTAMP, str(timestamp_ms if timestamp_ms is not None else -1).encode()),
        (APP, app_id.encode()),
    ]
    return headers
