"""The network: shapes, and the logistic-regression fallback."""

from __future__ import annotations

import pytest
import torch

from pipelines.fraud.model import FraudMLP


def test_no_hidden_layers_is_logistic_regression() -> None:
    model = FraudMLP(10, hidden=())
    assert sum(p.numel() for p in model.parameters()) == 10 + 1
    assert [type(m).__name__ for m in model.net] == ["Linear"]
    x = torch.randn(4, 10)
    layer = model.net[0]
    assert isinstance(layer, torch.nn.Linear)
    expected = x @ layer.weight.T.squeeze(-1) + layer.bias
    torch.testing.assert_close(model(x), expected)


def test_default_shapes() -> None:
    model = FraudMLP(7)
    assert model.hidden == (64, 32)
    assert sum(p.numel() for p in model.parameters()) == (7 * 64 + 64) + (64 * 32 + 32) + 33
    assert model(torch.randn(5, 7)).shape == (5,)
    assert model(torch.randn(0, 7)).shape == (0,)


@pytest.mark.parametrize(("n_inputs", "hidden"), [(0, (8,)), (4, (0,)), (4, (8,) * 9)])
def test_refuses_impossible_architectures(n_inputs: int, hidden: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="must be"):
        FraudMLP(n_inputs, hidden)
