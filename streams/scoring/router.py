"""Which model scores which event of a batch: rules, canary, primary ladder, escalation.

A :class:`Deployment` is the set of models one batch is scored with. The
pipeline reads the current one when a batch starts and uses it for the whole
batch, so a new rollout plan takes effect between batches: every batch is
scored by exactly one version per role.

For one batch:

1. events matching a routing rule (``STREAMSCORE_ROUTING_RULES``, first match
   wins) go to that rule's model; the rest, when a canary is set, are split
   by :func:`streams.scoring.cohorts.members`; the rest go down the primary's ladder
   (:mod:`streams.scoring.ladder`: fallback, default score, dead letters);
2. the side models (rules, canary) run at the same time as the primary; an
   event a side model cannot score goes down the primary's ladder after all
   (a canary never turns an event into a dead letter, and its failures are
   what the canary watch counts);
3. events whose score falls in the escalation band are scored again, as one
   batch, by the escalation model (``route=escalated``); if that fails they
   keep their first score.

Order needs no care here: the batch is emitted whole, after all of it is
scored, in offset order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from models.inputs import ModelInput
from schemas.rollout import RolloutPlan, RoutingRule
from streams.scoring.cohorts import members
from streams.scoring.inference import Inference
from streams.scoring.ladder import Ladder, Outcome, Route, model_key
from streams.scoring.rules import first_match

__all__ = ["Deployment", "route_batch"]


class CanaryWatch(Protocol):
    """What the router tells the canary watch (``streams.rollout.canary.CanaryMonitor``)."""

    def observe(
        self,
        side: str,
        *,
        events: int,
        errors: int,
        seconds: float,
        scores: npt.NDArray[np.float64],
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Deployment:
    """The models of one rollout plan (plus the router's settings), swapped in whole."""

    plan: RolloutPlan | None  # None: no plan written yet, STREAMSCORE_MODEL is the primary
    ladder: Ladder
    canary: Inference | None = None
    canary_percent: float = 0.0
    shadow: Inference | None = None
    escalation: Inference | None = None
    band: tuple[float, float] = (0.2, 0.8)
    rules: tuple[tuple[RoutingRule, Inference], ...] = ()
    monitor: CanaryWatch | None = field(default=None, compare=False)

    @property
    def primary(self) -> Inference:
        return self.ladder.primary

    def models(self) -> list[tuple[str, Inference]]:
        """Every model in use with its role (for ``GET /models`` and the info metric)."""
        roles: list[tuple[str, Inference]] = [("primary", self.ladder.primary)]
        if self.ladder.fallback is not None:
            roles.append(("fallback", self.ladder.fallback))
        if self.canary is not None:
            roles.append(("canary", self.canary))
        if self.shadow is not None:
            roles.append(("shadow", self.shadow))
        if self.escalation is not None:
            roles.append(("escalation", self.escalation))
        roles.extend(("rule", inference) for _, inference in self.rules)
        return roles


async def route_batch(
    deployment: Deployment,
    raw: ModelInput,
    record_times: npt.NDArray[np.float64],
    entities: Sequence[str] | None,
    events: Sequence[Any] | None,
) -> Outcome:
    """Score one batch with ``deployment``; ``entities`` are needed only for the canary,
    ``events`` only for rules."""
    ladder = deployment.ladder
    sides = {}
    if (deployment.rules and events is not None) or (deployment.canary and entities is not None):
        sides = _assign(deployment, len(raw), entities, events)
    if not sides:
        outcome = await ladder.score(raw, record_times)
    else:
        outcome = await _score_with_sides(deployment, sides, raw, record_times)
    if deployment.escalation is not None:
        await _escalate(deployment, deployment.escalation, raw, outcome)
    return outcome


def _assign(
    deployment: Deployment,
    n: int,
    entities: Sequence[str] | None,
    events: Sequence[Any] | None,
) -> dict[int, tuple[Inference, list[int]]]:
    """Rows of the batch that side models take, by route code (empty: all to the primary)."""
    code = np.full(n, Route.PRIMARY, dtype=np.int16)
    if deployment.rules and events is not None:
        found = first_match([rule for rule, _ in deployment.rules], events)
        code[found >= 0] = Route.RULES + found[found >= 0]
    if deployment.canary is not None and entities is not None:
        open_rows = np.flatnonzero(code == Route.PRIMARY)
        if len(open_rows):
            chosen = members(
                [entities[row] for row in open_rows.tolist()], deployment.canary_percent
            )
            code[open_rows[chosen]] = Route.CANARY
    sides: dict[int, tuple[Inference, list[int]]] = {}
    if deployment.canary is not None:
        rows = np.flatnonzero(code == Route.CANARY).tolist()
        if rows:
            sides[Route.CANARY] = (deployment.canary, rows)
    for k, (_, inference) in enumerate(deployment.rules):
        rows = np.flatnonzero(code == Route.RULES + k).tolist()
        if rows:
            sides[Route.RULES + k] = (inference, rows)
    return sides


async def _score_with_sides(
    deployment: Deployment,
    sides: dict[int, tuple[Inference, list[int]]],
    raw: ModelInput,
    record_times: npt.NDArray[np.float64],
) -> Outcome:
    ladder = deployment.ladder
    n = len(raw)
    # In route code order: primary, fallback, default, failed, canary, escalated, rules.
    outcome = Outcome.unscored(
        n,
        [ladder.primary, ladder.fallback, None, None, deployment.canary, deployment.escalation,
         *(inference for _, inference in deployment.rules)],
    )  # fmt: skip
    taken = np.zeros(n, dtype=np.bool_)
    for _, rows in sides.values():
        taken[rows] = True
    primary_rows = np.flatnonzero(~taken).tolist()

    async def side(code: int, inference: Inference, rows: list[int]) -> list[int]:
        """Score ``rows`` with a side model; return the rows it could not score."""
        scored = await ladder.call(inference, raw, rows, outcome)
        if scored is None:
            failed = rows
        else:
            Ladder.take(outcome, rows, scored, code)
            failed = [rows[p] for p in sorted(scored.failures)]
        if code == Route.CANARY and deployment.monitor is not None:
            ok = [row for row in rows if outcome.route[row] == Route.CANARY]
            deployment.monitor.observe(
                "canary",
                events=len(rows),
                errors=len(failed),
                seconds=outcome.seconds.get(model_key(inference), 0.0),
                scores=outcome.scores[ok],
            )
        return failed

    async def primary(rows: list[int]) -> None:
        if not rows:
            return
        sub = await ladder.score(raw.select(rows), record_times[rows])
        _merge(outcome, sub, rows)

    results = await asyncio.gather(
        primary(primary_rows), *(side(code, inf, rows) for code, (inf, rows) in sides.items())
    )
    if deployment.monitor is not None and primary_rows:
        _observe_primary(deployment.monitor, deployment.ladder.primary, outcome, primary_rows)
    leftovers = sorted(row for failed in results[1:] if failed for row in failed)
    if leftovers:  # what a side model could not score goes down the primary's ladder
        await primary(leftovers)
    return outcome


def _merge(outcome: Outcome, sub: Outcome, rows: list[int]) -> None:
    """Copy a ladder outcome over ``rows`` of the batch (its codes mean the same here)."""
    index = np.asarray(rows, dtype=np.intp)
    outcome.scores[index] = sub.scores
    outcome.route[index] = sub.route
    for position, exc in sub.failures.items():
        outcome.failures[rows[position]] = exc
    for key, seconds in sub.seconds.items():
        outcome.seconds[key] = outcome.seconds.get(key, 0.0) + seconds
    for key, count in sub.timeouts.items():
        outcome.timeouts[key] = outcome.timeouts.get(key, 0) + count
    outcome.deadline_missed += sub.deadline_missed


def _observe_primary(
    monitor: CanaryWatch, primary: Inference, outcome: Outcome, rows: list[int]
) -> None:
    """The primary's side of the canary comparison (deadline skips are not its failures)."""
    routes = outcome.route[rows]
    scored = routes == Route.PRIMARY
    errors = max(0, int((~scored).sum()) - outcome.deadline_missed)
    monitor.observe(
        "primary",
        events=len(rows),
        errors=errors,
        seconds=outcome.seconds.get(model_key(primary), 0.0),
        scores=outcome.scores[np.asarray(rows)[scored]],
    )


async def _escalate(
    deployment: Deployment, escalation: Inference, raw: ModelInput, outcome: Outcome
) -> None:
    """Score the uncertain events again with the heavier model, as one batch."""
    low, high = deployment.band
    first = (outcome.route == Route.PRIMARY) | (outcome.route == Route.CANARY)
    first |= outcome.route >= Route.RULES
    band = first & (outcome.scores >= low) & (outcome.scores <= high)
    rows = np.flatnonzero(band).tolist()
    if not rows:
        return
    outcome.models[Route.ESCALATED] = escalation
    scored = await deployment.ladder.call(escalation, raw, rows, outcome)
    if scored is None:
        outcome.escalation_failures += len(rows)
        return
    Ladder.take(outcome, rows, scored, Route.ESCALATED)
    outcome.escalation_failures += len(scored.failures)
