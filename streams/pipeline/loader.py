"""Finding the pipeline a command runs: a packaged name, or ``MODULE:ATTRIBUTE``.

Packaged pipelines are the packages under ``pipelines/`` (each exposes
``pipeline``). A user's is imported from the working directory or
``PYTHONPATH``. Every failure is a :class:`PipelineError` with the reason, so
the command exits 2 before it joins a group or writes anything.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from streams.pipeline.declare import Pipeline
from streams.pipeline.errors import PipelineError

__all__ = [
    "DEFAULT_PIPELINE",
    "load_pipeline",
    "packaged_artifacts",
    "packaged_pipelines",
]

#: The pipeline every command runs unless told otherwise.
DEFAULT_PIPELINE = "fraud"
_ROOT = Path(__file__).resolve().parents[2] / "pipelines"


def packaged_pipelines() -> list[str]:
    """The names of the packaged pipelines."""
    return sorted(p.name for p in _ROOT.iterdir() if (p / "__init__.py").is_file())


def packaged_artifacts(ref: str) -> Path | None:
    """Where a packaged pipeline's models live (None for a pipeline that is not packaged)."""
    ref = ref.strip()
    if ":" in ref or ref not in packaged_pipelines():
        return None
    return _ROOT / ref / "artifacts"


def load_pipeline(ref: str) -> Pipeline:
    """The pipeline ``ref`` names; a :class:`PipelineError` saying why when it cannot."""
    ref = ref.strip()
    if ":" not in ref:
        if ref not in packaged_pipelines():
            raise PipelineError(
                f"unknown pipeline {ref!r}: a packaged one ({', '.join(packaged_pipelines())}) "
                "or MODULE:ATTRIBUTE"
            )
        module_name, attribute = f"pipelines.{ref}", "pipeline"
    else:
        module_name, _, attribute = ref.partition(":")
        if not module_name or not attribute:
            raise PipelineError(f"pipeline {ref!r}: write MODULE:ATTRIBUTE, e.g. mypipe:pipeline")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # as `python -m` would: the user's module next to them
    try:
        module = importlib.import_module(module_name)
    except PipelineError as exc:
        raise PipelineError(f"pipeline {ref!r}: {exc}") from exc
    except ModuleNotFoundError as exc:
        raise PipelineError(
            f"pipeline {ref!r}: cannot import {module_name!r} ({exc}); it is searched in the "
            "working directory and PYTHONPATH"
        ) from exc
    except Exception as exc:
        raise PipelineError(
            f"pipeline {ref!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    found = getattr(module, attribute, None)
    if found is None:
        raise PipelineError(f"pipeline {ref!r}: {module_name!r} has no attribute {attribute!r}")
    if not isinstance(found, Pipeline):
        raise PipelineError(
            f"pipeline {ref!r}: {module_name}.{attribute} is a {type(found).__name__}, "
            "not a streams.pipeline.Pipeline"
        )
    return found
