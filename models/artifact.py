"""What every model artifact shares, whatever its format: names, versions, the manifest's
file name, where packaged artifacts live, and reading weights only once they are verified."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from models.errors import ArtifactError

__all__ = [
    "DEFAULT_MODEL",
    "MANIFEST",
    "NAME_PATTERN",
    "VERSION_PATTERN",
    "manifest_json",
    "packaged_roots",
    "verified_bytes",
]

#: The packaged model a reference-less lookup means (the contract's packaged default).
DEFAULT_MODEL = "fraud-mlp:1"
MANIFEST = "manifest.json"
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
#: Versions are directory names in a registry, so they cannot contain separators or start with ".".
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

#: A manifest larger than this is refused before it is parsed.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def packaged_roots() -> list[Path]:
    """Every folder of packaged artifacts: each packaged pipeline's ``artifacts/``."""
    return sorted(p for p in _PIPELINES.glob("*/artifacts") if p.is_dir())


def verified_bytes(weights: Path, sha256: str) -> bytes:
    """The bytes of ``weights``, read once, if their SHA-256 is the manifest's; parse these."""
    try:
        data = weights.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{weights}: cannot read the weights ({exc.strerror})") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ArtifactError(
            f"{weights}: sha256 is {digest}, the manifest says {sha256}; "
            "the file is corrupt or was replaced: re-copy or re-train the model"
        )
    return data


def manifest_json(directory: str | os.PathLike[str]) -> Any:
    """The parsed ``manifest.json`` of ``directory`` (not yet validated by any format)."""
    path = Path(directory) / MANIFEST
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes, not a manifest")
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; {directory} is not a model artifact") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable or not JSON ({exc})") from exc
