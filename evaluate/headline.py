"""The headline table: methods x (coarse mAP@1, fine mAP@1, accuracy, NMI), as text."""

from __future__ import annotations

from typing import Any, Mapping

HEADLINE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("coarse mAP@1", "coarse", "mAP@1"),
    ("fine mAP@1", "fine", "mAP@1"),
    ("accuracy", "classification", "accuracy"),
    ("NMI", "clustering", "nmi"),
)


def format_value(v: Any) -> str:
    """A figure in percent: ``12.34`` or, averaged over seeds, ``12.34 ± 0.56``; ``-`` if missing."""
    if isinstance(v, Mapping) and "mean" in v:
        return f"{100 * v['mean']:.2f} ± {100 * v.get('std', 0.0):.2f}"
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _short_interval(c: Any) -> str:
    if not isinstance(c, Mapping) or not all(isinstance(c.get(k), (int, float)) for k in ("diff", "lo", "hi")):
        return "-"
    return f"{100 * c['diff']:+.1f} [{100 * c['lo']:+.1f}, {100 * c['hi']:+.1f}]"


def format_headline(metrics: Mapping[str, Any]) -> str:
    """A compact fixed-width table of every method's headline numbers, in percent (mean ± std
    over seeds where the figures carry both), with each method's width when ``metrics`` has
    ``dims``; then the default embedding's width and the paired intervals when it has them.

    ``metrics`` is the metrics.json object (or just its ``"methods"`` mapping). Missing
    values print as ``-``.
    """
    methods = metrics.get("methods", metrics) if isinstance(metrics, Mapping) else {}
    dims = metrics.get("dims") if isinstance(metrics, Mapping) and isinstance(metrics.get("dims"), Mapping) else None
    header = ["method", *(["dims"] if dims else []), *(c[0] for c in HEADLINE_COLUMNS)]
    rows: list[list[str]] = []
    for name, m in methods.items():
        row = [str(name), *([str(dims.get(name, "-"))] if dims else [])]
        for _, sec, key in HEADLINE_COLUMNS:
            v = m.get(sec, {}).get(key) if isinstance(m, Mapping) else None
            row.append(format_value(v))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:]))])

    lines = [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]
    if isinstance(metrics, Mapping) and "embedding_dim" in metrics:
        lines.append(f"scale embedding: {metrics['embedding_dim']} floats")
    paired = metrics.get("paired") if isinstance(metrics, Mapping) else None
    if isinstance(paired, Mapping) and paired:
        lines.append("scale minus baseline, points [paired bootstrap 95 % interval]: coarse mAP@1 / fine mAP@1 / "
                     "accuracy")
        for b, p in paired.items():
            lines.append(f"  {b}: " + " / ".join(_short_interval(p.get(t)) for t in ("coarse", "fine", "classification")))
    idx = metrics.get("index") if isinstance(metrics, Mapping) else None
    if isinstance(idx, Mapping) and "ann_recall@10" in idx:
        lines.append(f"index: {idx.get('type')}, recall@10 vs exact "
                     f"{100 * float(idx['ann_recall@10']):.2f}")
    split, seeds = metrics.get("split"), metrics.get("seeds")
    if isinstance(split, Mapping):
        lines.append(f"split by instance {split.get('sizes')}, seed {split.get('seed')}; figures on the "
                     f"{split.get('evaluated_on')} split, mean ± std over training seeds {seeds}")
    rob = metrics.get("robustness", {}).get("methods", {}).get("scale") if isinstance(metrics, Mapping) else None
    if isinstance(rob, Mapping):
        draws = metrics["robustness"].get("draws", 1)
        lines.append(f"scale with {100 * metrics['robustness']['drop_prob']:.0f}% of query modalities dropped"
                     f"{f' (mean of {draws} draws)' if draws > 1 else ''}: "
                     f"coarse mAP@1 {format_value(rob['coarse_mAP@1'])} "
                     f"({format_value(rob['coarse_fraction_of_full'])} % of full)")
    return "\n".join(lines)
