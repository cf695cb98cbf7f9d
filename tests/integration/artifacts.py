"""Model artifacts for the command tests, made from the packaged ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from models.artifact import MANIFEST
from pipelines.fraud.artifact import packaged_artifacts_dir


def renamed(target: Path, name: str, version: str, source: str = "fraud-deep/1") -> Path:
    """A copy of a packaged artifact under another ``NAME:VERSION`` (same weights)."""
    shutil.copytree(packaged_artifacts_dir() / source, target)
    manifest = json.loads((target / MANIFEST).read_text())
    manifest.update(name=name, version=version)
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return target
