"""How a model runs: precision checked against fp32, padding to fixed batch sizes, compile.

Everything here runs on CPU; the CUDA path (stream, pinned buffers) is checked
where a GPU is present and skipped elsewhere.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from models.errors import ModelError
from models.execution import (
    DTYPES,
    ExecutionOptions,
    Executor,
    bucket_of,
    default_buckets,
    reference_batch,
)
from pipelines.fraud.artifact import load_artifact
from pipelines.fraud.features import RawFeatures
from pipelines.fraud.model import FraudMLP
from pipelines.fraud.synthetic import SyntheticWorld
from pipelines.fraud.train import build_features
from streams.scoring.inference import Inference

WIDTH = 24


def module() -> FraudMLP:
    torch.manual_seed(7)
    return FraudMLP(WIDTH, (32, 16)).eval().requires_grad_(False)


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, WIDTH)).astype(np.float32)


def eager(m: FraudMLP, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.sigmoid(m(torch.from_numpy(x))).numpy()


def test_default_buckets_are_powers_of_two_up_to_the_largest_batch() -> None:
    assert default_buckets(256) == (8, 16, 32, 64, 128, 256)
    assert default_buckets(300) == (8, 16, 32, 64, 128, 256, 300)
    assert default_buckets(5) == (5,)
    assert bucket_of(1, (8, 32)) == 8
    assert bucket_of(9, (8, 32)) == 32
    assert bucket_of(40, (8, 32)) == 40  # above every bucket: the caller splits it
    assert bucket_of(13, ()) == 13


def test_options_refuse_unordered_buckets_and_unknown_precisions() -> None:
    with pytest.raises(ValueError, match="increasing"):
        ExecutionOptions(buckets=(32, 8))
    with pytest.raises(ValueError, match="precision"):
        ExecutionOptions(precision="fp8")  # type: ignore[arg-type]


def test_the_default_execution_is_the_eager_fp32_module() -> None:
    m = module()
    x = rows(100)
    executor = Executor(m, torch.device("cpu"), WIDTH)
    np.testing.assert_array_equal(executor.run(x), eager(m, x))
    assert executor.shapes_run == {100}
    assert executor.check_precision() == 0.0


def test_batches_are_padded_to_buckets_and_split_above_the_largest() -> None:
    m = module()
    executor = Executor(m, torch.device("cpu"), WIDTH, ExecutionOptions(buckets=(8, 32)))
    for n in (1, 5, 8, 9, 32, 50, 100):
        x = rows(n, seed=n)
        got = executor.run(x)
        assert got.shape == (n,)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, eager(m, x), rtol=0, atol=1e-6)  # padding changes nothing
    assert executor.shapes_run == {8, 32}  # 50 and 100 ran as pieces of 32


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_reduced_precision_stays_within_tolerance_of_fp32(precision: str) -> None:
    m = module()
    options = ExecutionOptions(precision=precision)  # type: ignore[arg-type]
    executor = Executor(m, torch.device("cpu"), WIDTH, options)
    worst = executor.check_precision()
    assert 0.0 < worst <= 0.01  # it differs (it is not fp32) but by little
    assert executor.precision_error == worst  # logged when a worker loads the model
    x = rows(300, seed=3)
    got = executor.run(x)
    assert got.dtype == np.float32
    assert np.max(np.abs(got - eager(m, x))) <= 0.01
    assert next(executor.module.parameters()).dtype == DTYPES[precision]
    assert next(m.parameters()).dtype == torch.float32  # the fp32 reference is untouched


def test_a_reduced_precision_past_the_tolerance_is_refused() -> None:
    options = ExecutionOptions(precision="bf16", tolerance=1e-9)
    executor = Executor(module(), torch.device("cpu"), WIDTH, options)
    with pytest.raises(ModelError, match="STREAMSCORE_PRECISION_TOLERANCE"):
        executor.check_precision()


def test_a_compiled_model_runs_only_the_bucket_shapes_and_scores_as_eager() -> None:
    m = module()
    options = ExecutionOptions(compile="default", buckets=(8, 16), backend="eager")
    executor = Executor(m, torch.device("cpu"), WIDTH, options)
    assert executor.forward is not executor.module  # wrapped by torch.compile
    for n in (3, 8, 11, 16, 40):
        x = rows(n, seed=n)
        np.testing.assert_allclose(executor.run(x), eager(m, x), rtol=0, atol=1e-6)
    assert executor.shapes_run == {8, 16}


def test_the_reference_batch_is_fixed() -> None:
    a, b = reference_batch(WIDTH), reference_batch(WIDTH)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2048, WIDTH)
    assert np.isfinite(a).all()


def test_an_artifact_loads_with_execution_options_and_warms_every_bucket(
    small_artifact: Path,
) -> None:
    plain = load_artifact(small_artifact)
    options = ExecutionOptions(precision="bf16", buckets=(4, 16, 64))
    reduced = load_artifact(small_artifact, "cpu", options)
    world = SyntheticWorld(seed=5, n_entities=100)
    raw: RawFeatures = build_features([e.event for e in world.events(500)], world.feature_table())
    worst = float(np.max(np.abs(reduced.predict(raw) - plain.predict(raw))))
    assert worst <= 0.01
    assert reduced.executor.shapes_run <= {4, 16, 64}

    inference = Inference(load_artifact(small_artifact, "cpu", options), threads=1)
    try:
        asyncio.run(inference.warm_up((1, 64)))
        assert inference.model.executor.shapes_run == {4, 16, 64}  # each compiled shape, once
    finally:
        inference.close()


def test_a_refused_precision_names_the_model(small_artifact: Path) -> None:
    ref = load_artifact(small_artifact).ref
    with pytest.raises(ModelError, match=f"^{ref}: fp16 scores differ"):
        load_artifact(small_artifact, "cpu", ExecutionOptions(precision="fp16", tolerance=1e-9))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_the_cuda_path_uses_its_own_stream_and_pinned_buffers(precision: str) -> None:
    m = module()
    device = torch.device("cuda")
    options = ExecutionOptions(precision=precision, buckets=(8, 64))  # type: ignore[arg-type]
    executor = Executor(m.to(device), device, WIDTH, options)
    assert executor.stream is not None
    assert executor.stream != torch.cuda.default_stream(device)
    executor.check_precision()
    x = rows(50)
    got = executor.run(x)
    np.testing.assert_allclose(got, eager(module(), x), rtol=0, atol=0.01)
    host_in, host_out = executor._buffers(64)
    assert host_in.is_pinned()
    assert host_out.is_pinned()
