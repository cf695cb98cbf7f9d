"""HTTP endpoints of a worker: liveness, readiness, the models in use and Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.kafka.bulk import BulkConsumer
from streams.runtime import Runtime


class WorkerApp(Protocol):
    """What the pages need of the Faust app (``streams.app.StreamscoreApp``)."""

    runtime: Runtime

    @property
    def consumer(self) -> Any: ...
    def page(self, path: str) -> Callable[[Any], Any]: ...
    def tables_ready(self) -> bool: ...


def register_pages(app: WorkerApp) -> None:
    """Add the contract's pages to the worker's app (web knows the app only by this shape)."""

    @app.page("/health/live")
    async def live(web: Any, request: Any) -> Any:
        """200 while the process serves requests."""
        return web.json({"status": "alive"})

    @app.page("/health/ready")
    async def ready(web: Any, request: Any) -> Any:
        """200 once the model is warm and tables are recovered; 503 with the reasons otherwise."""
        problems = app.runtime.problems(tables_ready=app.tables_ready())
        app.runtime.metrics.ready.set(0 if problems else 1)
        if problems:
            return web.json({"status": "not ready", "reasons": problems}, status=503)
        return web.json({"status": "ready"})

    @app.page("/models")
    async def models(web: Any, request: Any) -> Any:
        """The rollout plan this worker applies and every model it has loaded, by role."""
        plans = app.runtime.plans
        if plans is None:
            return web.json({"plan": None, "models": [], "rejected": None})
        return web.json(plans.view())

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        runtime = app.runtime
        consumer = cast(BulkConsumer, app.consumer)
        metrics = runtime.metrics
        metrics.paused_partitions.set(len(consumer.paused_for_backpressure()))
        metrics.ready.set(0 if runtime.problems(tables_ready=app.tables_ready()) else 1)
        runtime.refresh_gauges()
        metrics.consumer_lag.clear()
        for tp, lag in consumer.lag().items():
            metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
        body = generate_latest(metrics.registry)
        # The exposition content type carries a charset, which aiohttp refuses as content_type.
        return web.bytes(body, headers={"Content-Type": CONTENT_TYPE_LATEST})
