"""A real model artifact whose every score is NaN, on any CPU (for the failure tests)."""

from __future__ import annotations

from pathlib import Path

import torch

from models.registry import resolve
from pipelines.fraud.artifact import load_artifact, save_artifact
from pipelines.fraud.model import FraudMLP


def nan_artifact(directory: Path, name: str) -> Path:
    """Finite weights whose output is inf - inf for every input.

    The first hidden layer is 3e38 whatever the input; the second multiplies it
    by 10, which overflows to infinity in both units; the output subtracts one
    infinity from the other. Only infinite terms meet in that last sum, so it
    is NaN whether the CPU rounds each product or fuses it into the addition
    (an FMA of a finite 3e39 with infinity would give infinity, not NaN).
    """
    spec = load_artifact(resolve(None)).preprocessor.spec
    module = FraudMLP(spec.width, hidden=(2, 2))
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.zero_()
        module.net[0].bias[:] = 3e38
        module.net[2].weight[:] = 10.0
        module.net[4].weight[0] = torch.tensor([10.0, -10.0])
    return save_artifact(directory, name=name, version="1", model=module, spec=spec, metrics={})
