"""The job-level manifest of a feature directory (``FEATS/manifest.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scalemm.atomic import write_json_atomic
from scalemm.errors import StoreError

MANIFEST = "manifest.json"


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    p = Path(root) / MANIFEST
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise StoreError(f"{p} is not valid JSON ({e}); delete the feature directory and re-extract") from e


def write_manifest(root: str | Path, manifest: dict[str, Any]) -> Path:
    return write_json_atomic(Path(root) / MANIFEST, manifest)
