"""Static checks of deploy/ and docker-compose.yml with real validators (no Docker, no cluster)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def tool(name: str, package: str) -> str:
    """Path of a required command-line tool; `make tools` installs it, so missing fails."""
    path = shutil.which(name)
    assert path is not None, (
        f"{name} is missing: `make test` installs it (apt-get install {package})"
    )
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool", "prometheus")
