"""The Markdown report: method tables, the modality ablation, the index line, extras, plots."""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from scalemm.evaluate.metrics import RETRIEVAL_KEYS
from scalemm.evaluate.schema import REQUIRED_TOP, to_plain


def _pct(v: Any) -> str:
    if isinstance(v, Mapping) and set(v) >= {"mean", "std"}:
        return f"{_pct(v['mean'])} ± {_pct(v['std'])}"
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(metrics: Mapping[str, Any], images: Mapping[str, str] | None = None,
                    gallery: str | None = None) -> str:
    """The Markdown report: method tables, the ablation, the index line, plots."""
    methods = metrics.get("methods", {})
    parts = ["# Evaluation report", "", "Values in percent."]
    for sec, title in (("coarse", "Coarse-grained retrieval (same category)"),
                       ("fine", "Fine-grained retrieval (same instance)")):
        parts += ["", f"## {title}", "", _table(
            ["method", *RETRIEVAL_KEYS],
            [[name, *(_pct(m[sec][k]) for k in RETRIEVAL_KEYS)] for name, m in methods.items()])]
    parts += ["", "## Classification (linear probe) and clustering (k-means)", "", _table(
        ["method", "accuracy", "macro-F1", "NMI", "purity"],
        [[name, _pct(m["classification"]["accuracy"]), _pct(m["classification"]["macro_f1"]),
          _pct(m["clustering"]["nmi"]), _pct(m["clustering"]["purity"])]
         for name, m in methods.items()])]
    ablation = metrics.get("ablation", {})
    cols = ["mAP@1", "mAP@5", "mAP@10"]
    parts += ["", "## Modality ablation", "", _table(
        ["modalities", *(f"coarse {c}" for c in cols), *(f"fine {c}" for c in cols)],
        [[name, *(_pct(a["coarse"][c]) for c in cols), *(_pct(a["fine"][c]) for c in cols)]
         for name, a in ablation.items()])]
    index = metrics.get("index", {})
    if index:
        parts += ["", "## Index", "",
                  f"Approximate index `{index.get('type')}`: recall@10 against exact search "
                  f"{_pct(index.get('ann_recall@10'))} %."]
    for key, val in metrics.items():
        if key in REQUIRED_TOP or key in ("per_seed", "runs"):
            continue
        parts += ["", f"## {key}", ""]
        if isinstance(val, Mapping) and val and all(isinstance(v, Mapping) for v in val.values()):
            cols_x = list(dict.fromkeys(c for v in val.values() for c in v))
            parts.append(_table([key, *cols_x], [[str(n), *(_pct(v.get(c, "")) for c in cols_x)]
                                                 for n, v in val.items()]))
        else:
            parts += ["```json", json.dumps(to_plain(val), indent=2, sort_keys=True), "```"]
    if images:
        parts += ["", "## Plots", ""]
        parts += [f"![{name}]({file})" for name, file in images.items()]
    if gallery:
        parts += ["", f"Retrieval examples: [{gallery}]({gallery})"]
    return "\n".join(parts) + "\n"
