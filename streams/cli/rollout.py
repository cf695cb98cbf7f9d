"""``streamscore rollout``: read and change the rollout plan on the control topic.

Each change reads the current plan, applies one step, and writes the whole
new plan (the topic is compacted: the last plan wins). Every reference is
resolved against the packaged models and the registry *before* anything is
written, and written pinned as ``NAME:VERSION``, so all workers load the same
version even if a higher one is added later. Two operators changing the plan
at the same moment: the later write wins; `rollout status` shows which.

The steps themselves are pure functions of the current plan (``with_*``,
:func:`promoted`, :func:`rolled_back`), tested without Kafka.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import click

from models.errors import ModelError
from schemas.rollout import Canary, PlanError, RolloutPlan
from streams.cli.common import EXIT_FAILED, EXIT_USAGE, fail, settings_or_exit
from streams.errors import BrokerError
from streams.settings import Settings

#: Whether two references name the same model (``fraud-mlp`` and ``fraud-mlp:1`` may).
Same = Callable[[str, str], bool]


class RolloutError(ValueError):
    """A step that does not apply to the current plan (the message says why)."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _equal(a: str, b: str) -> bool:
    return a == b


def implied_plan(model: str | None) -> RolloutPlan:
    """The plan workers follow while none was written: ``STREAMSCORE_MODEL`` as the primary."""
    from models.artifact import DEFAULT_MODEL

    primary = DEFAULT_MODEL if model is None else model.strip()
    try:
        return RolloutPlan(
            primary=primary,
            canary=None,
            shadow=None,
            updated_ts=0.0,
            reason="no plan written yet: the primary is STREAMSCORE_MODEL"
            if model is not None
            else "no plan written yet: the packaged default model",
        )
    except ValueError:
        raise RolloutError(
            f"STREAMSCORE_MODEL={primary} is a path, which a rollout plan cannot name: add it "
            "with `streamscore models add DIR` and use its NAME:VERSION",
            EXIT_USAGE,
        ) from None


def with_primary(
    plan: RolloutPlan, ref: str, reason: str, now: float, same: Same = _equal
) -> RolloutPlan:
    """Blue-green: ``ref`` takes all traffic at once; a canary or shadow equal to it goes."""
    canary = None if plan.canary is None or same(plan.canary.model, ref) else plan.canary
    shadow = None if plan.shadow is None or same(plan.shadow, ref) else plan.shadow
    return RolloutPlan(primary=ref, canary=canary, shadow=shadow, updated_ts=now, reason=reason)


def with_canary(
    plan: RolloutPlan, ref: str, percent: float, reason: str, now: float, same: Same = _equal
) -> RolloutPlan:
    """``ref`` takes ``percent`` of the entities (replacing any other canary)."""
    if same(plan.primary, ref):
        raise RolloutError(
            f"{ref} is already the primary; a canary must be another model", EXIT_USAGE
        )
    return plan.model_copy(
        update={
            "canary": Canary(model=ref, percent=percent),
            "updated_ts": now,
            "reason": reason,
        }
    )


def with_shadow(
    plan: RolloutPlan, ref: str | None, reason: str, now: float, same: Same = _equal
) -> RolloutPlan:
    """``ref`` scores alongside (None: no shadow)."""
    if ref is not None and same(plan.primary, ref):
        raise RolloutError(
            f"{ref} is already the primary; a shadow must be another model", EXIT_USAGE
        )
    return plan.model_copy(update={"shadow": ref, "updated_ts": now, "reason": reason})


def promoted(plan: RolloutPlan, reason: str, now: float, same: Same = _equal) -> RolloutPlan:
    """The canary becomes the primary for everyone."""
    if plan.canary is None:
        raise RolloutError("there is no canary to promote; start one with `rollout canary`")
    return with_primary(plan, plan.canary.model, reason, now, same)


def rolled_back(plan: RolloutPlan, reason: str, now: float) -> RolloutPlan:
    """The canary is removed: the primary takes all traffic again."""
    if plan.canary is None:
        raise RolloutError("there is no canary to roll back")
    return plan.model_copy(update={"canary": None, "updated_ts": now, "reason": reason})


# -- the commands ---------------------------------------------------------------------------

_reason = click.option(
    "--reason", default=None, help="Why (kept in the plan; default: describes the change)."
)


@click.group()
def rollout() -> None:
    """The rollout plan on STREAMSCORE_CONTROL_TOPIC: which models score, and how much."""


@rollout.command()
def status() -> None:
    """Print the current plan as JSON (the implied plan when none was written yet)."""
    settings = settings_or_exit()
    try:
        plan = _read(settings)
        if plan is None:
            click.echo(
                f"streamscore: no rollout plan on {settings.control_topic} yet; showing the "
                "plan implied by STREAMSCORE_MODEL",
                err=True,
            )
            plan = implied_plan(settings.model)
    except RolloutError as exc:
        fail(str(exc), exc.code)
    _show(plan)


@rollout.command()
@click.argument("ref", metavar="REF")
@_reason
def primary(ref: str, reason: str | None) -> None:
    """Switch the primary to REF at once (blue-green)."""
    settings = settings_or_exit()
    pinned = _pin_or_exit(settings, ref)
    _change(
        settings,
        lambda plan, now, same: with_primary(
            plan, pinned, reason or f"primary {pinned}", now, same
        ),
        replaces_primary=True,
    )


@rollout.command()
@click.argument("ref", metavar="REF", required=False)
@click.option("--off", is_flag=True, help="Remove the shadow.")
@_reason
def shadow(ref: str | None, off: bool, reason: str | None) -> None:
    """Score with REF alongside the primary and canary (its scores go to the shadow topic)."""
    if off == (ref is not None):
        fail("give either REF or --off", EXIT_USAGE)
    settings = settings_or_exit()
    pinned = None if ref is None else _pin_or_exit(settings, ref)
    text = reason or ("shadow off" if pinned is None else f"shadow {pinned}")
    _change(settings, lambda plan, now, same: with_shadow(plan, pinned, text, now, same))


@rollout.command()
@click.argument("ref", metavar="REF")
@click.option(
    "--percent", required=True, type=float, help="Share of entities for REF: 0 < P <= 100."
)
@_reason
def canary(ref: str, percent: float, reason: str | None) -> None:
    """Send PERCENT of the entities (by a stable hash of entity_id) to REF."""
    if not (math.isfinite(percent) and 0 < percent <= 100):
        fail(f"--percent must be above 0 and at most 100, got {percent:g}", EXIT_USAGE)
    settings = settings_or_exit()
    pinned = _pin_or_exit(settings, ref)
    text = reason or f"canary {pinned} at {percent:g}%"
    _change(settings, lambda plan, now, same: with_canary(plan, pinned, percent, text, now, same))


@rollout.command()
@_reason
def promote(reason: str | None) -> None:
    """Make the canary the primary for all traffic."""
    settings = settings_or_exit()

    def step(plan: RolloutPlan, now: float, same: Same) -> RolloutPlan:
        default = f"promote canary {plan.canary.model}" if plan.canary else "promote"
        return promoted(plan, reason or default, now, same)

    _change(settings, step)


@rollout.command()
@_reason
def rollback(reason: str | None) -> None:
    """Remove the canary: the primary takes all traffic again."""
    settings = settings_or_exit()

    def step(plan: RolloutPlan, now: float, _same: Same) -> RolloutPlan:
        default = f"roll back canary {plan.canary.model}" if plan.canary else "roll back"
        return rolled_back(plan, reason or default, now)

    _change(settings, step)


# -- plumbing ---------------------------------------------------------------------------------


def _pin_or_exit(settings: Settings, ref: str) -> str:
    """``ref`` resolved now, as ``NAME:VERSION``; exit 2 with the reason if it does not resolve."""
    from models.registry import parse_ref, resolve_ref

    text = ref.strip()
    if "/" in text or "\\" in text or text.startswith("."):
        fail(
            f"{ref} is a path, which a rollout plan cannot name (workers on other machines read "
            "it): add it with `streamscore models add DIR` and use its NAME:VERSION; "
            "nothing was written",
            EXIT_USAGE,
        )
    try:
        parse_ref(text)
    except ModelError:
        fail(
            f"{ref!r} is not a model reference: use NAME:VERSION or NAME (see `streamscore "
            "models list`); nothing was written",
            EXIT_USAGE,
        )
    try:
        return resolve_ref(text, settings.registry_dir)[0]
    except ModelError as exc:
        fail(
            f"{exc}; a plan names packaged or registry models (add one with "
            "`streamscore models add DIR`); nothing was written",
            EXIT_USAGE,
        )


def _same(settings: Settings) -> Same:
    """Compare references by what they resolve to now (unresolvable: by their text)."""
    from models.registry import resolve_ref

    def pinned(ref: str) -> str:
        try:
            return resolve_ref(ref, settings.registry_dir)[0]
        except ModelError:
            return ref

    return lambda a, b: a == b or pinned(a) == pinned(b)


def _read(settings: Settings) -> RolloutPlan | None:
    from streams.rollout.control import read_plan

    try:
        return read_plan(settings)
    except PlanError as exc:
        raise RolloutError(
            f"the latest plan on {settings.control_topic} is unreadable ({exc}); "
            "replace it with `streamscore rollout primary REF`"
        ) from exc
    except BrokerError as exc:
        raise RolloutError(str(exc)) from exc


def _change(
    settings: Settings,
    step: Callable[[RolloutPlan, float, Same], RolloutPlan],
    replaces_primary: bool = False,
) -> None:
    """Read the plan, apply ``step``, write the result and print it.

    A step that sets the primary can also replace an unreadable plan, and does
    not need the implied primary to resolve.
    """
    from streams.rollout.control import write_plan

    try:
        try:
            current = _read(settings)
        except RolloutError as exc:
            if not (replaces_primary and isinstance(exc.__cause__, PlanError)):
                raise
            click.echo(
                f"streamscore: the latest plan on {settings.control_topic} is unreadable "
                f"({exc.__cause__}); replacing it",
                err=True,
            )
            current = None
        if current is None:
            current = _first_plan(settings, replaces_primary)
        plan = step(current, time.time(), _same(settings))
        write_plan(settings, plan)
    except RolloutError as exc:
        fail(str(exc), exc.code)
    except BrokerError as exc:
        fail(str(exc))
    _show(plan)


def _first_plan(settings: Settings, replaces_primary: bool) -> RolloutPlan:
    """The implied plan, its primary pinned: what the first written plan starts from."""
    from models.registry import resolve_ref

    if replaces_primary:
        # Its primary is about to be replaced: STREAMSCORE_MODEL does not matter (it may be a path).
        return implied_plan(None)
    implied = implied_plan(settings.model)
    try:
        primary = resolve_ref(implied.primary, settings.registry_dir)[0]
    except ModelError as exc:
        raise RolloutError(
            f"the current primary {implied.primary} (STREAMSCORE_MODEL) does not resolve "
            f"({exc}); set the primary first with `streamscore rollout primary REF`",
            EXIT_USAGE,
        ) from exc
    return implied.model_copy(update={"primary": primary})


def _show(plan: RolloutPlan) -> None:
    click.echo(plan.to_bytes().decode())
