"""The README documents every setting (and nothing that does not exist)."""

from __future__ import annotations

import re
from pathlib import Path

from streams.settings import ENV_PREFIX, Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_configuration_table_matches_the_settings() -> None:
    text = README.read_text()
    documented = set(re.findall(r"^\| `(STREAMSCORE_[A-Z_]+)` \|", text, flags=re.M))
    actual = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert documented == actual
