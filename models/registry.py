"""Finding a model artifact from what an operator typed (a path, ``NAME`` or ``NAME:VERSION``).

Two places hold artifacts as ``<NAME>/<VERSION>/manifest.json``: the ones
packaged with the product (:func:`models.artifact.packaged_artifacts_dir`) and
an optional registry directory. A reference is looked up in the packaged ones
first, then in the registry.

Versions order like this: versions made only of digits compare as integers
("10" > "9") and rank above every other version; other versions compare as
strings ("2025-06-01" > "2025-05-31"). ``NAME`` alone means its highest version.
"""

from __future__ import annotations

import re
from pathlib import Path

from models.artifact import (
    DEFAULT_MODEL,
    MANIFEST,
    NAME_PATTERN,
    VERSION_PATTERN,
    packaged_artifacts_dir,
)
from models.errors import ArtifactError

__all__ = ["list_models", "parse_ref", "resolve", "version_key"]

_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)


def parse_ref(ref: str) -> tuple[str, str | None]:
    """Split ``NAME`` or ``NAME:VERSION``; refuse anything else with a readable reason."""
    name, sep, version = ref.strip().partition(":")
    if not _NAME.match(name) or len(name) > 64:
        raise ArtifactError(
            f"{ref!r} is not a model reference: NAME must be lower-case letters, digits and "
            "'-' (e.g. fraud-mlp or fraud-mlp:1), or give the path of an artifact directory"
        )
    if not sep:
        return name, None
    if not _VERSION.match(version):
        raise ArtifactError(
            f"{ref!r} is not a model reference: VERSION must be letters, digits, '.', '_' or '-', "
            "not starting with '.' or '-'"
        )
    return name, version


def version_key(version: str) -> tuple[int, int, str]:
    """Sort key of a version (see the module docstring for the rule)."""
    if version.isascii() and version.isdigit():
        return (1, int(version), version)
    return (0, 0, version)


def _roots(registry_dir: Path | None) -> list[Path]:
    roots = [packaged_artifacts_dir()]
    if registry_dir is not None:
        roots.append(Path(registry_dir))
    return roots


def _versions(root: Path, name: str) -> list[str]:
    base = root / name
    if not base.is_dir():
        return []
    return [
        child.name
        for child in base.iterdir()
        if _VERSION.match(child.name) and (child / MANIFEST).is_file()
    ]


def resolve(ref: str | None, registry_dir: Path | None = None) -> Path:
    """The artifact directory that ``ref`` means (``None``: the packaged default model)."""
    if ref is None:
        ref = DEFAULT_MODEL
    else:
        ref = ref.strip()
        as_path = Path(ref).expanduser()
        if as_path.is_dir() and (as_path / MANIFEST).is_file():
            return as_path
        if ":" not in ref and ("/" in ref or "\\" in ref or ref.startswith(".")):
            what = "has no manifest.json" if as_path.is_dir() else "does not exist"
            raise ArtifactError(f"model directory {ref} {what}")
    name, version = parse_ref(ref)
    if version is None:
        found = {v for root in _roots(registry_dir) for v in _versions(root, name)}
        if found:
            version = max(found, key=version_key)
    if version is not None:
        for root in _roots(registry_dir):
            candidate = root / name / version
            if (candidate / MANIFEST).is_file():
                return candidate
    available = ", ".join(list_models(registry_dir)) or "none"
    where = "packaged models" + ("" if registry_dir is None else f" or registry {registry_dir}")
    raise ArtifactError(f"model {ref!r} not found in the {where}; available: {available}")


def list_models(registry_dir: Path | None = None) -> list[str]:
    """Every ``NAME:VERSION`` available, packaged and registry, by name then version."""
    refs: set[tuple[str, str]] = set()
    for root in _roots(registry_dir):
        if not root.is_dir():
            continue
        for child in root.iterdir():
            if _NAME.match(child.name):
                refs.update((child.name, v) for v in _versions(root, child.name))
    ordered = sorted(refs, key=lambda ref: (ref[0], version_key(ref[1])))
    return [f"{name}:{version}" for name, version in ordered]
