"""How a loaded model runs on its device: precision, fixed batch sizes, CUDA streams.

On CPU, with the defaults, a batch goes straight through the module, as it always has.
The options exist for accelerators, where per-call overheads dominate a small model:

- **CUDA stream and pinned buffers.** Each model gets its own CUDA stream, so its
  copies and kernels never wait behind other work on the default stream, and
  page-locked host buffers (one pair per batch size, reused), so the copy to the
  device and the copy of the scores back are asynchronous DMA transfers.
- **Precision** (``STREAMSCORE_PRECISION``): ``fp16`` or ``bf16`` weights and
  inputs, scores in fp32. A reduced precision is compared with fp32 on a fixed
  reference batch when the model is loaded and refused past
  ``STREAMSCORE_PRECISION_TOLERANCE`` (largest score difference).
- **Compilation** (``STREAMSCORE_COMPILE``): ``torch.compile`` with the given mode
  (``reduce-overhead`` captures CUDA graphs). Batches are padded up to the next of
  a few fixed sizes (``STREAMSCORE_BATCH_BUCKETS``), so only that many shapes are
  ever compiled, all of them when the model is warmed up, off the hot path.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.errors import ModelError

Precision = Literal["fp32", "fp16", "bf16"]
CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune"]

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}

#: Rows of the reference batch a reduced precision is checked on.
REFERENCE_ROWS = 2048


@dataclass(frozen=True, slots=True)
class ExecutionOptions:
    """How to run a model; the defaults are plain fp32 eager execution, unpadded."""

    precision: Precision = "fp32"
    compile: CompileMode = "off"
    buckets: tuple[int, ...] = ()  # batch sizes to pad up to; () = none
    tolerance: float = 0.01  # largest score difference a reduced precision may show
    backend: str = "inductor"  # torch.compile's backend (tests use "eager")

    def __post_init__(self) -> None:
        if self.precision not in DTYPES:
            raise ValueError(f"precision must be one of {', '.join(DTYPES)}")
        check_buckets(self.buckets)


def check_buckets(buckets: Sequence[int]) -> None:
    """Batch buckets are positive sizes, each larger than the one before."""
    if any(size < 1 for size in buckets) or list(buckets) != sorted(set(buckets)):
        raise ValueError(f"batch buckets must be increasing positive sizes: {tuple(buckets)}")


def default_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two from 8 up to ``max_batch_size``, which is always the last one."""
    sizes = []
    size = 8
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch_size)
    return tuple(sizes)


def bucket_of(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``n`` rows (``n`` itself when there are none)."""
    for size in buckets:
        if size >= n:
            return size
    return n


class Executor:
    """Runs one module on one device with the given options, from one thread at a time."""

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        width: int,
        options: ExecutionOptions | None = None,
    ) -> None:
        self.options = options or ExecutionOptions()
        self.device = device
        self.width = width
        self.dtype = DTYPES[self.options.precision]
        self.reference = module  # fp32, eager: what a reduced precision is checked against
        self.module = (
            module if self.dtype is torch.float32 else copy.deepcopy(module).to(self.dtype)
        )
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self.module
        if self.options.compile != "off":
            self.forward = torch.compile(
                self.module,
                mode=None if self.options.compile == "default" else self.options.compile,
                backend=self.options.backend,
                dynamic=False,
            )
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None  # type: ignore[no-untyped-call]
        self._pinned: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # size -> in, out
        self.shapes_run: set[int] = set()  # batch sizes the module has been called with
        self.precision_error = 0.0  # largest score difference from fp32 (check_precision)

    @property
    def largest(self) -> int | None:
        return self.options.buckets[-1] if self.options.buckets else None

    def run(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Probabilities ``[n]`` (float32) for the preprocessed rows ``x`` ``[n, width]``."""
        largest = self.largest
        if largest is not None and len(x) > largest:  # above every bucket: in bucket pieces
            return np.concatenate(
                [self._run(x[start : start + largest]) for start in range(0, len(x), largest)]
            )
        return self._run(x)

    def check_precision(self) -> float:
        """Largest score difference from fp32 on the reference batch; refused past tolerance."""
        if self.dtype is torch.float32:
            return 0.0
        x = reference_batch(self.width)
        with torch.inference_mode():
            expected = torch.sigmoid(self.reference(torch.from_numpy(x).to(self.device)))
            expected_np = expected.float().cpu().numpy()
        got = self.run(x)
        worst = float(np.max(np.abs(got - expected_np)))
        if not np.isfinite(worst) or worst > self.options.tolerance:
            raise ModelError(
                f"{self.options.precision} scores differ from fp32 by up to {worst:.4g} on the "
                f"reference batch, more than STREAMSCORE_PRECISION_TOLERANCE="
                f"{self.options.tolerance:g}: use fp32 or raise the tolerance"
            )
        self.precision_error = worst
        return worst

    def _run(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        n = len(x)
        size = bucket_of(n, self.options.buckets)
        self.shapes_run.add(size)
        if self.cuda:
            return self._run_cuda(x, n, size)
        inputs = torch.from_numpy(x)
        if size > n:
            inputs = torch.cat([inputs, inputs.new_zeros((size - n, x.shape[1]))])
        with torch.inference_mode():
            scores = torch.sigmoid(self.forward(inputs.to(self.dtype)).float())
        return scores[:n].numpy()

    def _run_cuda(self, x: npt.NDArray[np.float32], n: int, size: int) -> npt.NDArray[np.float32]:
        host_in, host_out = self._buffers(size)
        host_in[:n].copy_(torch.from_numpy(x))
        if size > n:
            host_in[n:].zero_()  # padding rows: scored, never read
        assert self.stream is not None
        with torch.inference_mode(), torch.cuda.stream(self.stream):
            inputs = host_in.to(self.device, non_blocking=True).to(self.dtype)
            scores = torch.sigmoid(self.forward(inputs).float())
            host_out.copy_(scores, non_blocking=True)
        self.stream.synchronize()  # the buffers are reused by the next batch
        return host_out[:n].numpy().copy()

    def _buffers(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        found = self._pinned.get(size)
        if found is None:
            found = (
                torch.empty((size, self.width), dtype=torch.float32, pin_memory=True),
                torch.empty((size,), dtype=torch.float32, pin_memory=True),
            )
            self._pinned[size] = found
        return found


def reference_batch(width: int, rows: int = REFERENCE_ROWS) -> npt.NDArray[np.float32]:
    """A fixed batch spanning the model's input range: scaled values and one-hot flags."""
    generator = np.random.default_rng(20261123)
    x = generator.normal(0.0, 2.0, size=(rows, width)).clip(-5.0, 5.0)
    flags = generator.random((rows, width)) < 0.5
    x[:, width // 2 :] = flags[:, width // 2 :]  # the upper half as 0/1 indicators
    return x.astype(np.float32)
