"""Reading a stage's settings from YAML: one loader and one error for every stage.

A stage keeps its settings in a dataclass; :func:`read_yaml_mapping` reads the file and
:func:`check_keys` refuses unknown keys naming the file, the key and the closest valid one,
so a typo never silently falls back to a default.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable

import yaml

from scalemm.errors import ConfigError

__all__ = ["ConfigError", "check_keys", "read_yaml_mapping"]


def read_yaml_mapping(path: str | Path, section: str | None = None) -> dict[str, Any]:
    """The mapping in a YAML file (``section``: use ``data[section]`` when the file has it)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass an existing YAML file (configs/ holds examples)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML ({str(e).splitlines()[0]}); fix it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of settings")
    if section is not None and isinstance(data.get(section), dict):
        data = data[section]
    return dict(data)


def check_keys(data: dict[str, Any], valid: Iterable[str], source: str) -> None:
    """Refuse keys that are not in ``valid``, naming the first and the closest valid one."""
    valid = list(valid)
    unknown = [k for k in data if k not in valid]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{source}: unknown setting '{k}'{hint}; valid settings: {', '.join(valid)}")
