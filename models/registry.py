"""Finding a model artifact from what an operator typed (a path, ``NAME`` or ``NAME:VERSION``).

Two places hold artifacts as ``<NAME>/<VERSION>/manifest.json``: the ones
packaged with the product and its pipelines (:func:`models.artifact.packaged_roots`) and
an optional registry directory. A reference is looked up in the packaged ones
first, then in the registry.

Versions order like this: versions made only of digits compare as integers
("10" > "9") and rank above every other version; other versions compare as
strings ("2025-06-01" > "2025-05-31"). ``NAME`` alone means its highest version.

:func:`register_artifact` is the only way into the registry: it validates an
artifact completely in its pipeline's format (manifest, checksum, weights, a smoke batch)
before anything is written, then moves a finished copy into place with one
``os.rename``, so workers reading the registry never see half an artifact.
A ``NAME:VERSION`` is immutable once added, and packaged versions cannot be
shadowed (they are found first anyway).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.artifact import DEFAULT_MODEL, MANIFEST, NAME_PATTERN, VERSION_PATTERN, packaged_roots
from models.errors import ArtifactError
from models.formats import ArtifactManifest

__all__ = [
    "Registered",
    "list_models",
    "parse_ref",
    "register_artifact",
    "resolve",
    "resolve_ref",
    "version_key",
]

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
    roots = packaged_roots()
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
    return resolve_ref(ref, registry_dir)[1]


def resolve_ref(ref: str, registry_dir: Path | None = None) -> tuple[str, Path]:
    """A reference (never a path) as the ``NAME:VERSION`` it means now, and its directory.

    A rollout plan stores the pinned ``NAME:VERSION``, so every worker loads the
    same version even if a higher one is added later.
    """
    name, version = parse_ref(ref)
    if version is None:
        found = {v for root in _roots(registry_dir) for v in _versions(root, name)}
        if found:
            version = max(found, key=version_key)
    if version is not None:
        for root in _roots(registry_dir):
            candidate = root / name / version
            if (candidate / MANIFEST).is_file():
                return f"{name}:{version}", candidate
    available = ", ".join(list_models(registry_dir)) or "none"
    where = "packaged models" + ("" if registry_dir is None else f" or registry {registry_dir}")
    raise ArtifactError(f"model {ref.strip()!r} not found in the {where}; available: {available}")


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


@dataclass(frozen=True, slots=True)
class Registered:
    """The outcome of :func:`register_artifact`."""

    ref: str  # NAME:VERSION
    path: Path  # its directory in the registry
    created: bool  # False: the same content was already there (nothing written)


#: Reads an artifact's manifest (validated; an ArtifactError saying why not).
ManifestReader = Callable[[Path], ArtifactManifest]
#: Loads an artifact and runs every check a model must pass; gives the manifest it loaded.
Verifier = Callable[[Path], ArtifactManifest]


def register_artifact(
    source_dir: Path, registry_dir: Path, read: ManifestReader, verify: Verifier
) -> Registered:
    """Validate the artifact in ``source_dir`` and add it to ``registry_dir``, saying whether
    anything was written.

    ``read`` and ``verify`` are the pipeline's model format
    (:mod:`streams.pipeline.models`). Every refusal is an :class:`ArtifactError` with
    one line, raised before the registry changes: an incomplete or invalid manifest, a
    checksum mismatch, weights that do not load without unpickling, inputs other than
    the pipeline's features, a smoke batch without finite scores in [0, 1], a packaged
    ``NAME:VERSION``, or an existing version with other content.
    """
    source = Path(source_dir)
    if not source.is_dir():
        raise ArtifactError(f"{source} is not a directory holding a model artifact")
    manifest, reader = read(source), read
    ref = manifest.ref
    if any((root / manifest.name / manifest.version / MANIFEST).is_file()
           for root in packaged_roots()):  # fmt: skip
        raise ArtifactError(
            f"{ref} is a packaged model and cannot be replaced; give the artifact another version"
        )
    if verify(source) != manifest:
        raise ArtifactError(f"{source} changed while it was being checked; nothing was added")
    registry = Path(registry_dir)
    target = registry / manifest.name / manifest.version
    if (target / MANIFEST).is_file():
        return _existing(ref, target, manifest, reader)
    registry.mkdir(parents=True, exist_ok=True)
    new_name_dir = not target.parent.exists()
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=registry))
    try:
        _stage(source, staging, manifest, reader)
        target.parent.mkdir(exist_ok=True)
        try:
            os.rename(staging, target)
        except OSError:
            # Someone else added this version meanwhile: same rule as above.
            if (target / MANIFEST).is_file():
                return _existing(ref, target, manifest, reader)
            raise
        _fsync_dir(target.parent)
        return Registered(ref, target, created=True)
    except BaseException:
        if new_name_dir:
            _remove_if_empty(target.parent)
        raise
    finally:
        # Gone after a successful rename; anything left is a failed attempt.
        shutil.rmtree(staging, ignore_errors=True)


def _existing(
    ref: str,
    target: Path,
    manifest: ArtifactManifest,
    reader: ManifestReader,
) -> Registered:
    """An add of a version that exists: a no-op if the content is the same, else refused."""
    try:
        present: ArtifactManifest | None = reader(target)
        assert present is not None
        same_weights = _sha256(target / present.weights) == manifest.sha256
    except (ArtifactError, OSError):
        present, same_weights = None, False
    if present != manifest or not same_weights:
        raise ArtifactError(
            f"{ref} is already in the registry with different content; versions are "
            "immutable: give the artifact a new version"
        )
    return Registered(ref, target, created=False)


def _stage(
    source: Path,
    staging: Path,
    manifest: ArtifactManifest,
    reader: ManifestReader,
) -> None:
    """Copy the manifest and the weights, durably, and check the copy is what was validated."""
    for name in (MANIFEST, manifest.weights):
        with (source / name).open("rb") as src, (staging / name).open("xb") as dst:
            shutil.copyfileobj(src, dst)
            dst.flush()
            os.fsync(dst.fileno())
        (staging / name).chmod(0o644)
    # The source could have changed since it was validated: the copy must match the manifest.
    if reader(staging) != manifest or _sha256(staging / manifest.weights) != manifest.sha256:
        raise ArtifactError(
            f"{source} changed while it was being added; nothing was added: try again"
        )
    staging.chmod(0o755)  # mkdtemp made it private; workers may run as another user
    _fsync_dir(staging)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    """Make a directory's entries durable (a rename is only durable once its parent is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (another version arrived) or already gone
        path.rmdir()
