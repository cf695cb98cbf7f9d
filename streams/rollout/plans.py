"""Following the rollout plan: read it at start, watch the control topic, swap models safely.

A worker reads the plan before it takes traffic (no plan: ``STREAMSCORE_MODEL``
is the primary). A thread then follows the control topic and hands every new
plan to the event loop, which applies the latest one:

1. resolve each reference in the registry and load, then warm up, the models
   the worker does not hold yet, off the hot path (a thread for the load, the
   model's own thread for the warm-up), while the current models keep scoring;
2. build a :class:`~streams.scoring.router.Deployment` and swap it in with one
   assignment: the next batch uses it, the running one finishes on the old one;
3. models no longer in use are closed once any batch that could still be
   using them is over.

A plan the worker cannot apply (a reference that does not resolve here, a
model that does not load) is refused: the worker keeps its current plan, logs
why, counts it (``streamscore_plans_rejected_total``) and shows it in
``GET /models``, and applies the next plan that works.

A bad canary is rolled back by the worker that sees it: it writes the plan
without the canary, with the reason, to the control topic (every worker
follows) and counts it in ``streamscore_rollbacks_total{reason}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from models.registry import resolve
from schemas.rollout import PLAN_KEY, PlanError, RolloutPlan
from streams.metrics import Metrics
from streams.rollout.canary import Breach, CanaryMonitor, Thresholds
from streams.rollout.control import control_consumer, write_plan
from streams.scoring.inference import Inference
from streams.scoring.ladder import Breaker, Ladder
from streams.scoring.router import Deployment
from streams.settings import Settings
from streams.threads import DaemonThread

log = logging.getLogger(__name__)

#: Seconds between checks of the canary watch (each check sorts the window's score samples).
CHECK_INTERVAL = 1.0


class Models:
    """Loaded and warmed models by ``NAME:VERSION``, shared by successive deployments."""

    def __init__(
        self,
        settings: Settings,
        device: torch.device,
        metrics: Metrics,
        loader: Callable[[Path, torch.device], Inference],
        default: str | None = None,
    ) -> None:
        self.settings = settings
        self.device = device
        self.metrics = metrics
        #: Loads one artifact for the served pipeline, in its format.
        self.loader = loader
        self.default = default  # what no reference means (None: the packaged default model)
        self._loaded: dict[Path, Inference] = {}

    async def get(self, reference: str | None) -> Inference:
        """The model ``reference`` names (None: the default model), loaded and warm."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        ref = reference if reference is not None else self.default
        path = await loop.run_in_executor(
            None, lambda: Path(resolve(ref, settings.registry_dir)).resolve()
        )
        if path in self._loaded:
            return self._loaded[path]
        started = time.perf_counter()
        inference = await loop.run_in_executor(None, self.loader, path, self.device)
        loaded = time.perf_counter()
        if settings.torch_threads:
            inference.threads = settings.torch_threads
        await inference.warm_up((1, settings.max_batch_size))
        model = inference.model
        metrics = self.metrics
        metrics.model_load.labels(model.name, model.version).set(loaded - started)
        metrics.model_warmup.labels(model.name, model.version).set(time.perf_counter() - loaded)
        metrics.model_timeouts.labels(model.name, model.version)
        metrics.model_compute.labels(model.name, model.version, str(model.device))
        log.info(
            "model %s loaded from %s on %s (%s)", model.ref, path, self.device, model.describe()
        )
        self._loaded[path] = inference
        return inference

    def keep_only(self, used: list[Inference], grace: float) -> None:
        """Close, after ``grace`` seconds, the models ``used`` does not contain."""
        keep = {id(inference) for inference in used}
        retired = [(p, i) for p, i in self._loaded.items() if id(i) not in keep]
        for path, inference in retired:
            del self._loaded[path]
            model = inference.model
            self.metrics.model_info.remove(model.name, model.version, str(model.device))
            asyncio.get_running_loop().call_later(grace, inference.close)
            log.info("model %s retired", model.ref)

    def close(self) -> None:
        for inference in self._loaded.values():
            inference.close()
        self._loaded.clear()


class PlanFollower:
    """Applies rollout plans to the scoring pipeline; writes automatic rollbacks."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        models: Models,
        install: Callable[[Deployment], None],
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models = models
        self._install = install
        self.current: Deployment | None = None
        self.applied_ts: float | None = None
        self.rejected: dict[str, Any] | None = None  # the last plan refused, and why
        self._latest: RolloutPlan | None = None  # newest plan seen on the topic
        self._applying: asyncio.Task[None] | None = None
        self._watcher: PlanWatcher | None = None
        self._rolling_back: set[float] = set()  # plans (by updated_ts) already rolled back
        self._last_check = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def thresholds(self) -> Thresholds:
        s = self.settings
        return Thresholds(
            window_s=s.canary_window_s,
            min_events=s.canary_min_events,
            max_error_rate=s.canary_max_error_rate,
            max_latency_ratio=s.canary_max_latency_ratio,
            max_score_shift=s.canary_max_score_shift,
        )

    async def start(self, plan: RolloutPlan | None, plan_error: str | None) -> Deployment:
        """The first deployment: the plan read at start, or the settings when it fails."""
        self._loop = asyncio.get_running_loop()
        if plan is not None:
            try:
                deployment = await self._build(plan)
            except Exception as exc:
                self._reject(plan, f"{type(exc).__name__}: {exc}")
            else:
                self._switch(deployment)
                return deployment
        elif plan_error is not None:
            self._reject(None, plan_error)
        deployment = await self._build(None)
        self._switch(deployment)
        return deployment

    def follow(self, start_offset: int = OFFSET_BEGINNING) -> None:
        """Watch the control topic from ``start_offset`` (after the plan read at start)."""
        assert self._loop is not None
        self._watcher = PlanWatcher(self.settings, self._loop, self.offer, start_offset)
        self._watcher.start()

    def offer(self, plan: RolloutPlan | None, error: str | None) -> None:
        """A record from the control topic (on the loop): apply it unless it is the current one."""
        if plan is None:
            self._reject(None, error or "unreadable plan record")
            return
        self._latest = plan
        if self._applying is None or self._applying.done():
            self._applying = asyncio.get_running_loop().create_task(self._apply_latest())

    async def _apply_latest(self) -> None:
        while self._latest is not None:
            plan, self._latest = self._latest, None
            if self.current is not None and self.current.plan == plan:
                continue
            try:
                deployment = await self._build(plan)
            except Exception as exc:
                self._reject(plan, f"{type(exc).__name__}: {exc}")
                continue
            self._switch(deployment)

    async def _build(self, plan: RolloutPlan | None) -> Deployment:
        """Load (or reuse) every model of ``plan``; raise if one cannot be had."""
        settings = self.settings
        models = self.models
        primary = await models.get(plan.primary if plan is not None else None)
        current = self.current
        if current is not None and current.ladder.primary is primary:
            ladder = current.ladder  # same primary: keep its breaker's state
        else:
            fallback = None
            if settings.fallback_model is not None:
                fallback = await models.get(settings.fallback_model)
            ladder = Ladder(
                primary,
                fallback,
                default_score=settings.default_score,
                timeout=settings.model_timeout_ms / 1000.0,
                deadline=settings.deadline_ms / 1000.0 if settings.deadline_ms else None,
                breaker=Breaker(settings.breaker_failures, settings.breaker_cooldown_ms / 1000.0),
            )
        canary = shadow = escalation = None
        percent = 0.0
        monitor = None
        if plan is not None and plan.canary is not None:
            canary = await models.get(plan.canary.model)
            percent = plan.canary.percent
            same = (
                current is not None
                and current.canary is canary
                and current.ladder.primary is primary
                and current.monitor is not None
            )
            monitor = current.monitor if same and current is not None else None
            if monitor is None:
                monitor = CanaryMonitor(self.thresholds)
        if plan is not None and plan.shadow is not None:
            shadow = await models.get(plan.shadow)
        if settings.escalation_model is not None:
            escalation = await models.get(settings.escalation_model)
        rules = tuple([(rule, await models.get(rule.model)) for rule in settings.routing_rules])
        return Deployment(
            plan=plan,
            ladder=ladder,
            canary=canary,
            canary_percent=percent,
            shadow=shadow,
            escalation=escalation,
            band=(settings.escalation_band_low, settings.escalation_band_high),
            rules=rules,
            monitor=monitor,
        )

    def _switch(self, deployment: Deployment) -> None:
        self._install(deployment)
        self.current = deployment
        self.applied_ts = time.time()
        self.metrics.plans_applied.inc()
        used = [inference for _, inference in deployment.models()]
        for inference in used:
            model = inference.model
            self.metrics.model_info.labels(model.name, model.version, str(model.device)).set(1)
        # A batch still on the old models ends within the model timeout (the ladder stops
        # waiting then); fallback and default scores need no model.
        self.models.keep_only(used, grace=2 * self.settings.model_timeout_ms / 1000.0 + 5.0)
        plan = deployment.plan
        if plan is None:
            log.info("no rollout plan yet: primary %s", deployment.primary.model.ref)
        else:
            log.info("applying rollout plan %s", plan.model_dump_json())

    def _reject(self, plan: RolloutPlan | None, why: str) -> None:
        self.metrics.plans_rejected.inc()
        log.error("cannot apply the rollout plan (%s); keeping the current plan", why)
        self.rejected = {
            "plan": plan.model_dump(mode="json") if plan is not None else None,
            "error": why,
            "at": time.time(),
        }

    # -- the canary watch ------------------------------------------------------------------
    def check_canary(self) -> None:
        """Called after each batch: at most once a second, judge the canary."""
        deployment = self.current
        if deployment is None or deployment.monitor is None or not self.settings.auto_rollback:
            return
        now = time.monotonic()
        if now - self._last_check < CHECK_INTERVAL:
            return
        self._last_check = now
        plan = deployment.plan
        if plan is None or plan.canary is None or plan.updated_ts in self._rolling_back:
            return
        monitor = deployment.monitor
        assert isinstance(monitor, CanaryMonitor)  # the only watch plans build
        breach = monitor.breach()
        if breach is not None:
            self._rolling_back.add(plan.updated_ts)
            asyncio.get_running_loop().create_task(self._roll_back(plan, breach))

    async def _roll_back(self, plan: RolloutPlan, breach: Breach) -> None:
        assert plan.canary is not None
        if self.current is None or self.current.plan != plan:  # the plan changed meanwhile
            return
        reason = f"automatic rollback of canary {plan.canary.model}: {breach.detail}"
        rolled = plan.model_copy(
            update={"canary": None, "updated_ts": time.time(), "reason": reason}
        )
        log.error("%s", reason)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, write_plan, self.settings, rolled, 15.0)
        except Exception as exc:
            log.error("could not write the rollback plan (%s); will try again", exc)
            self._rolling_back.discard(plan.updated_ts)
            return
        self.metrics.rollbacks.labels(breach.reason).inc()
        self.offer(rolled, None)  # apply at once; the watcher will see it again and skip it

    # -- GET /models -------------------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        deployment = self.current
        if deployment is None:
            return {"plan": None, "models": [], "rejected": self.rejected}
        plan = deployment.plan
        return {
            "plan": plan.model_dump(mode="json") if plan is not None else None,
            "plan_source": "control topic" if plan is not None else "STREAMSCORE_MODEL",
            "applied_ts": self.applied_ts,
            "models": [
                {
                    "name": inference.model.name,
                    "version": inference.model.version,
                    "role": role,
                    "device": str(inference.model.device),
                }
                for role, inference in deployment.models()
            ],
            "canary_percent": deployment.canary_percent if deployment.canary else None,
            "rejected": self.rejected,
        }

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        self.models.close()


class PlanWatcher:
    """A thread reading the control topic and passing each plan record to the loop."""

    def __init__(
        self,
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[RolloutPlan | None, str | None], None],
        start_offset: int,
    ) -> None:
        self.settings = settings
        self._loop = loop
        self._deliver = deliver
        self._start_offset = start_offset
        self._running = True
        self._thread = DaemonThread("streamscore-plan-watch")

    def start(self) -> None:
        self._thread.submit(self._run)

    def stop(self) -> None:
        self._running = False
        self._thread.close()

    def _run(self) -> None:
        settings = self.settings
        # At most 500 ms per fetch, so a plan is seen well within the 5 s the contract allows.
        wait = min(settings.fetch_max_wait_ms or 100, 500)
        consumer = control_consumer(settings, "plan-watch", **{"fetch.wait.max.ms": wait})
        try:
            consumer.assign([TopicPartition(settings.control_topic, 0, self._start_offset)])
            while self._running:
                for message in consumer.consume(100, 0.25):
                    error = message.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            log.warning("reading the control topic: %s", error.str())
                        continue
                    if message.key() != PLAN_KEY:
                        continue
                    try:
                        plan: RolloutPlan | None = RolloutPlan.from_bytes(message.value())
                        why = None
                    except PlanError as exc:
                        plan, why = None, str(exc)
                    self._loop.call_soon_threadsafe(self._deliver, plan, why)
        finally:
            consumer.close()
