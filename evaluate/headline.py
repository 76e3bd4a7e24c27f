"""The headline table: methods x (coarse mAP@1, fine mAP@1, accuracy, NMI), as text."""

from __future__ import annotations

from typing import Any, Mapping

HEADLINE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("coarse mAP@1", "coarse", "mAP@1"),
    ("fine mAP@1", "fine", "mAP@1"),
    ("accuracy", "classification", "accuracy"),
    ("NMI", "clustering", "nmi"),
)


def format_headline(metrics: Mapping[str, Any]) -> str:
    """A compact fixed-width table of every method's headline numbers, in percent.

    ``metrics`` is the metrics.json object (or just its ``"methods"`` mapping). Missing
    values print as ``-``.
    """
    methods = metrics.get("methods", metrics) if isinstance(metrics, Mapping) else {}
    header = ["method", *(c[0] for c in HEADLINE_COLUMNS)]
    rows: list[list[str]] = []
    for name, m in methods.items():
        row = [str(name)]
        for _, sec, key in HEADLINE_COLUMNS:
            v = m.get(sec, {}).get(key) if isinstance(m, Mapping) else None
            row.append(f"{100 * v:.2f}" if isinstance(v, (int, float)) else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:]))])

    lines = [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]
    idx = metrics.get("index") if isinstance(metrics, Mapping) else None
    if isinstance(idx, Mapping) and "ann_recall@10" in idx:
        lines.append(f"index: {idx.get('type')}, recall@10 vs exact "
                     f"{100 * float(idx['ann_recall@10']):.2f}")
    return "\n".join(lines)
