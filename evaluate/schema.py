"""The ``metrics.json`` schema: the fixed keys every evaluation writes, checked before writing.

::

    {"methods":  {NAME: {"coarse": {mAP@1, mAP@5, mAP@10, Prec@1, Prec@5, Prec@10},
                         "fine":   {same keys},
                         "classification": {accuracy, macro_f1},
                         "clustering": {nmi, purity}}},
     "ablation": {"text" | "text+image" | ... | "text+image+table+video+audio":
                      {"coarse": {...}, "fine": {...}}},
     "index":    {"type": str, "ann_recall@10": float},
     ...optional extra top-level keys (e.g. "cross_modal"); the evaluation run writes among others
     "embedding_dim": int (the default ``scale`` embedding's width), "dims": {NAME: int},
     "baselines": {how each fair baseline was built}, "models": [names of the trained models],
     "paired":   {NAME: {"coarse" | "fine" | "classification": {"diff", "lo", "hi"}}}
                 (scale minus NAME and its paired bootstrap interval, floats in [-1, 1]; checked),
     "paired_bootstrap": {resamples, level, products, ...},
     "ablation_paired": {SUBSET: {"coarse" | "fine": {"diff", "lo", "hi"}}}
                 (each ablation subset minus the one before it, paired the same way; checked)}

All values are floats in [0, 1] except ``index.type``; a figure averaged over seeds is
``{"mean": float in [0, 1], "std": float >= 0}`` instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from scalemm.atomic import write_text_atomic
from scalemm.evaluate.metrics import CLASSIFICATION_KEYS, CLUSTERING_KEYS, RETRIEVAL_KEYS
from scalemm.modalities import ABLATION_NAMES

METHOD_SECTIONS: dict[str, tuple[str, ...]] = {
    "coarse": RETRIEVAL_KEYS, "fine": RETRIEVAL_KEYS,
    "classification": CLASSIFICATION_KEYS, "clustering": CLUSTERING_KEYS,
}
ABLATION_SECTIONS: dict[str, tuple[str, ...]] = {"coarse": RETRIEVAL_KEYS, "fine": RETRIEVAL_KEYS}
INDEX_KEYS: tuple[str, ...] = ("type", "ann_recall@10")
REQUIRED_TOP: tuple[str, ...] = ("methods", "ablation", "index")


def as_number(v: Any) -> Any:
    """A figure as a number: the mean of a ``{"mean", "std"}`` figure (averaged over seeds)."""
    return v["mean"] if isinstance(v, Mapping) and "mean" in v else v


def _check_unit(v: Any, where: str, problems: list[str]) -> None:
    if isinstance(v, Mapping) and set(v) >= {"mean", "std"}:
        std = v["std"]
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not std >= 0:
            problems.append(f"{where}.std = {std!r} is not a number >= 0")
        v = v["mean"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or not 0.0 <= v <= 1.0:
        problems.append(f"{where} = {v!r} is not a number in [0, 1]")


def _check_sections(d: Any, sections: Mapping[str, Sequence[str]], where: str,
                    problems: list[str]) -> None:
    if not isinstance(d, Mapping):
        problems.append(f"{where} is not an object")
        return
    if set(d) != set(sections):
        problems.append(f"{where} has keys {sorted(d)}, expected {sorted(sections)}")
    for sec, keys in sections.items():
        sub = d.get(sec)
        if not isinstance(sub, Mapping):
            continue
        if set(sub) != set(keys):
            problems.append(f"{where}.{sec} has keys {sorted(sub)}, expected {sorted(keys)}")
        for k in keys:
            if k in sub:
                _check_unit(sub[k], f"{where}.{sec}.{k}", problems)


def validate_metrics(metrics: Mapping[str, Any]) -> list[str]:
    """Every way ``metrics`` departs from the metrics.json schema (empty list: valid)."""
    problems: list[str] = []
    for key in REQUIRED_TOP:
        if key not in metrics:
            problems.append(f"missing top-level key '{key}'")
    methods = metrics.get("methods", {})
    if not isinstance(methods, Mapping):
        problems.append("methods is not an object")
    else:
        for name, m in methods.items():
            _check_sections(m, METHOD_SECTIONS, f"methods.{name}", problems)
    ablation = metrics.get("ablation", {})
    if not isinstance(ablation, Mapping):
        problems.append("ablation is not an object")
    else:
        if "ablation" in metrics and set(ablation) != set(ABLATION_NAMES):
            problems.append(f"ablation has keys {sorted(ablation)}, expected {list(ABLATION_NAMES)}")
        for name, m in ablation.items():
            _check_sections(m, ABLATION_SECTIONS, f"ablation.{name}", problems)
    index = metrics.get("index", {})
    if not isinstance(index, Mapping):
        problems.append("index is not an object")
    elif "index" in metrics:
        if set(index) != set(INDEX_KEYS):
            problems.append(f"index has keys {sorted(index)}, expected {list(INDEX_KEYS)}")
        if not isinstance(index.get("type"), str):
            problems.append("index.type is not a string")
        if "ann_recall@10" in index:
            _check_unit(index["ann_recall@10"], "index.ann_recall@10", problems)
    for key in ("paired", "ablation_paired"):
        if metrics.get(key) is not None:
            _check_paired(metrics[key], problems, key)
    return problems


def _check_paired(paired: Any, problems: list[str], key: str = "paired") -> None:
    """``<key>.<name>.<task>`` = ``{"diff", "lo", "hi"}``, numbers in [-1, 1] (NaN: not measurable)."""
    if not isinstance(paired, Mapping):
        problems.append(f"{key} is not an object")
        return
    for name, tasks in paired.items():
        if not isinstance(tasks, Mapping):
            problems.append(f"{key}.{name} is not an object")
            continue
        for task, cell in tasks.items():
            if not isinstance(cell, Mapping) or set(cell) != {"diff", "lo", "hi"}:
                problems.append(f"{key}.{name}.{task} is not {{diff, lo, hi}}")
                continue
            for k, v in cell.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                        math.isnan(v) or -1.0 <= v <= 1.0):
                    problems.append(f"{key}.{name}.{task}.{k} = {v!r} is not a number in [-1, 1]")


def assemble_metrics(methods: Mapping[str, Any], ablation: Mapping[str, Any],
                     index: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The metrics.json object: ``methods`` (the inner dict or ``{"methods": ...}``),
    ``ablation``, ``index`` and any extra top-level entries (e.g. ``cross_modal=...``)."""
    inner = methods["methods"] if set(methods) == {"methods"} else methods
    out: dict[str, Any] = {"methods": dict(inner), "ablation": dict(ablation), "index": dict(index)}
    for k, v in extra.items():
        if k in out:
            raise ValueError(f"extra key '{k}' would overwrite a schema key")
        out[k] = v
    return out


def to_plain(obj: Any) -> Any:
    """JSON-safe copy (numpy scalars to Python numbers)."""
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def write_metrics_json(metrics: Mapping[str, Any], path: str | Path) -> Path:
    """Validate against the schema, then write (sorted keys, atomically)."""
    plain = to_plain(metrics)
    problems = validate_metrics(plain)
    if problems:
        raise ValueError("metrics do not fit the metrics.json schema: " + "; ".join(problems))
    return write_text_atomic(path, json.dumps(plain, indent=2, sort_keys=True) + "\n")
