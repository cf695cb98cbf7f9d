"""Routing rules checked against the served pipeline's event, and read off a batch's columns.

A rule names fields of the event (``STREAMSCORE_ROUTING_RULES``), so a worker
checks, before it joins a group, that each field exists, that bounds are set
on numbers only, and that each listed value is one the field can take: a
misspelt field or a value outside a Literal is a message at start, never a
rule that silently matches nothing.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, TypeAdapter, ValidationError

from schemas.rollout import RoutingRule
from streams.errors import ConfigError
from streams.pipeline.events import field_kind

__all__ = ["check_rules", "columns_of", "first_match"]


def check_rules(rules: Sequence[RoutingRule], event: type[BaseModel], pipeline: str) -> None:
    """Raise :class:`ConfigError` naming the first condition ``event`` cannot meet."""
    fields = event.model_fields
    for n, rule in enumerate(rules):
        where = f"STREAMSCORE_ROUTING_RULES[{n}]"
        for name, condition in rule.where.items():
            if name not in fields:
                known = ", ".join(sorted(fields))
                raise ConfigError(
                    f"{where}: {name!r} is not a field of pipeline {pipeline!r}'s event "
                    f"(its fields: {known})"
                )
            info = fields[name]
            kind = field_kind(info.annotation)
            if condition.bounds and (kind is None or kind[0] != "number"):
                raise ConfigError(f"{where}: {name!r} is not a number; it cannot have bounds")
            typed: Any = (
                Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
            )
            adapter: TypeAdapter[Any] = TypeAdapter(typed)
            for value in sorted(condition.allowed or (), key=repr):
                try:
                    adapter.validate_python(value, strict=True)
                except ValidationError:
                    raise ConfigError(
                        f"{where}: {name!r} can never be {value!r}, so the rule would never match"
                    ) from None


def columns_of(events: Sequence[Any]) -> Callable[[str], list[Any]]:
    """``column(field)``: one field of every event (dicts or objects), read once per field."""
    get = operator.itemgetter if events and isinstance(events[0], Mapping) else operator.attrgetter
    cache: dict[str, list[Any]] = {}

    def column(field: str) -> list[Any]:
        found = cache.get(field)
        if found is None:
            found = cache[field] = list(map(get(field), events))
        return found

    return column


def first_match(rules: Sequence[RoutingRule], events: Sequence[Any]) -> np.ndarray:
    """For each event, the index of the first rule it matches (-1: none)."""
    n = len(events)
    found = np.full(n, -1, dtype=np.int16)
    column = columns_of(events)
    for k, rule in enumerate(rules):
        hit = rule.mask(column, n) & (found < 0)
        found[hit] = k
    return found
