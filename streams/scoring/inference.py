"""Run a model off the event loop, isolating poison events.

Each model gets its own thread (torch releases the GIL while it computes),
so the event loop keeps consuming, decoding and emitting. If a batch raises,
it is split in halves and each half retried, down to the single events that
fail: only those become dead letters (``dlq.stage=model``) and their
neighbours are scored. A NaN, infinite or out-of-range score is a failure of
that one event.

The thread is a daemon: a model call that hangs (the ladder gives up on it
after ``STREAMSCORE_MODEL_TIMEOUT_MS``) must not keep the process from
exiting. Once a call is given up, later calls go to a fresh thread
(:meth:`Inference.abandon`): the next batch never queues behind a call that
may never return.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from models.inputs import ModelInput
from streams.errors import ConfigError, InferenceError, NonFiniteScore
from streams.threads import DaemonThread

log = logging.getLogger(__name__)

#: Threads still running a call given up on, at most, per model: past it, a model that
#: hangs on every call gets its calls queued again rather than a thread each.
MAX_ABANDONED_THREADS = 4


def resolve_device(setting: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a config error."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"STREAMSCORE_DEVICE={setting} but no CUDA device is available")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"STREAMSCORE_DEVICE={setting} but only {torch.cuda.device_count()} CUDA "
                "device(s) exist"
            )
    return device


def default_torch_threads() -> int:
    """Leave one core to the event loop (decode, features, emit) when there are several."""
    return max(1, (os.cpu_count() or 2) - 1)


class ScoringModel(Protocol):
    """A loaded model of any format (:class:`models.programs.LoadedProgram`, or what a
    pipeline's own :class:`~models.formats.ModelFormat` loads)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def ref(self) -> str: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def buckets(self) -> tuple[int, ...]: ...
    def describe(self) -> str: ...
    def blank(self, size: int) -> Any: ...
    def predict(self, inputs: Any) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True, slots=True)
class Scored:
    """Scores of a batch, in order; ``failures`` maps positions to why they have none."""

    scores: npt.NDArray[np.float32]
    failures: dict[int, Exception]
    seconds: float  # model time, including preprocessing and retries


class Inference:
    """One loaded model on one device, called from the event loop."""

    def __init__(self, model: ScoringModel, *, threads: int | None = None) -> None:
        self.model = model
        self.threads = threads or default_torch_threads()
        self._thread = self._new_thread()
        self._abandoned: list[DaemonThread] = []  # each still running a call given up on

    @property
    def device(self) -> torch.device:
        return self.model.device

    async def warm_up(self, sizes: tuple[int, ...]) -> None:
        """Run dummy batches so the first real one pays no allocation or lazy-init cost.

        A model padded to fixed batch sizes runs each of them instead: a compiled one
        compiles every shape it will see here, never on the hot path.
        """
        sizes = self.model.buckets or sizes
        await self._thread.submit(lambda: self._warm(sizes))

    def _warm(self, sizes: tuple[int, ...]) -> None:
        torch.set_num_threads(self.threads)
        for size in sizes:
            self._score_isolating(self.model.blank(size))

    def score(self, raw: ModelInput) -> asyncio.Future[Scored]:
        """Score on the model thread; the future resolves on the calling loop."""
        return self._thread.submit(lambda: self._timed(raw))

    async def score_within(self, raw: ModelInput, timeout: float) -> Scored:
        """:meth:`score`, given up on after ``timeout`` seconds (``TimeoutError``); a call
        given up on is left to its thread, and later calls go to a fresh one."""
        try:
            return await asyncio.wait_for(self.score(raw), timeout)
        except TimeoutError:
            self.abandon()  # the next call must not queue behind this one
            raise

    def _new_thread(self) -> DaemonThread:
        return DaemonThread(f"streamscore-model-{self.model.name}")

    def abandon(self) -> None:
        """A call outlived the model timeout: send later calls to a fresh thread.

        The call given up on keeps its thread until it returns (the thread then
        ends), so the next batch does not wait behind it; torch's thread count is
        set again on the new thread first. While :data:`MAX_ABANDONED_THREADS`
        are still stuck, nothing changes: the calls then queue.
        """
        self._abandoned = [thread for thread in self._abandoned if thread.alive]
        if len(self._abandoned) >= MAX_ABANDONED_THREADS:
            return
        stuck = self._thread
        stuck.close()
        self._abandoned.append(stuck)
        self._thread = self._new_thread()
        threads = self.threads
        self._thread.submit(lambda: torch.set_num_threads(threads))
        log.warning(
            "model %s: a call was given up on; later calls go to a new thread (%d still stuck)",
            self.model.ref, len(self._abandoned),
        )  # fmt: skip

    def _timed(self, raw: ModelInput) -> Scored:
        started = time.perf_counter()
        scores, failures = self._score_isolating(raw)
        return Scored(scores, failures, time.perf_counter() - started)

    def _score_isolating(
        self, raw: ModelInput
    ) -> tuple[npt.NDArray[np.float32], dict[int, Exception]]:
        n = len(raw)
        try:
            scores = self._predict(raw)
        except Exception as exc:
            if n == 1:
                return np.full(1, np.nan, dtype=np.float32), {0: exc}
            half = n // 2
            left, left_failures = self._score_isolating(raw.take(0, half))
            right, right_failures = self._score_isolating(raw.take(half, n))
            failures = dict(left_failures)
            failures.update({half + i: e for i, e in right_failures.items()})
            return np.concatenate([left, right]), failures
        bad = ~(np.isfinite(scores) & (scores >= 0.0) & (scores <= 1.0))
        failures = {}
        if bad.any():
            for index in np.flatnonzero(bad).tolist():
                failures[index] = NonFiniteScore(f"model returned {scores[index]!r}")
        return scores, failures

    def _predict(self, raw: ModelInput) -> npt.NDArray[np.float32]:
        with torch.inference_mode():
            scores = self.model.predict(raw)
        if scores.shape != (len(raw),):
            raise InferenceError(f"model returned shape {scores.shape} for {len(raw)} events")
        return scores

    def close(self) -> None:
        self._thread.close()
