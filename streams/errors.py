"""The product's exceptions, in one tree.

::

    StreamscoreError                 anything the worker or a command raises on purpose
    ├── ConfigError                  a STREAMSCORE_* value is wrong: fix the environment (exit 2)
    ├── BrokerError                  the Kafka cluster cannot be reached or refused a request
    │   └── TopicMismatchError       an existing topic disagrees with the settings
    └── EmitError                    a score or dead letter could not be delivered
    models.errors.ModelError         the model layer (it knows nothing of Kafka)
    ├── ArtifactError                manifest, checksum or weights are wrong: fix or re-train it
    └── InferenceError               the model raised or returned something unusable for a batch
    RecordError                      never raised: names why a record became a dead letter
    ├── EmptyRecord                  (``dlq.error.class``) no value at all (a tombstone)
    ├── RecordTooLarge               key + value over 64 KiB
    ├── NotAnObject                  JSON, but not an object
    ├── KeyMismatch                  the record key is not the UTF-8 ``entity_id``
    └── NonFiniteScore               the model returned NaN or infinity for this event

Bad *records* are not exceptions: decoding and validation turn them into dead
letters (values), so only systemic failures travel up this tree. Lower-level
errors (librdkafka, torch, rocksdict) are translated at the boundary with
``raise ... from exc`` so the message says what the operator should do.
"""

from __future__ import annotations

from models.errors import ArtifactError, InferenceError, ModelError

__all__ = [
    "ArtifactError",
    "BrokerError",
    "ConfigError",
    "EmitError",
    "EmptyRecord",
    "InferenceError",
    "KeyMismatch",
    "ModelError",
    "NonFiniteScore",
    "NotAnObject",
    "RecordError",
    "RecordTooLarge",
    "StreamscoreError",
    "TopicMismatchError",
]


class StreamscoreError(Exception):
    """Base of every error the product raises on purpose."""


class ConfigError(StreamscoreError):
    """A setting is invalid; the message names the variable. Fix the environment."""


class BrokerError(StreamscoreError):
    """The Kafka cluster could not be reached or refused a request. Check STREAMSCORE_BROKER."""


class TopicMismatchError(BrokerError):
    """An existing topic disagrees with the settings (e.g. its partition count)."""


class EmitError(StreamscoreError):
    """A score or dead letter could not be delivered to the broker."""


class RecordError(Exception):
    """Why a record was dead-lettered; only its class name travels (``dlq.error.class``)."""


class EmptyRecord(RecordError):
    """The record has no value (a tombstone); there is nothing to score."""


class RecordTooLarge(RecordError):
    """Key and value together exceed the contract's 64 KiB."""


class NotAnObject(RecordError):
    """The value is JSON but not a JSON object."""


class KeyMismatch(RecordError):
    """The record key is missing or is not the UTF-8 bytes of ``entity_id``."""


class NonFiniteScore(RecordError):
    """The model returned NaN or infinity for this event."""
